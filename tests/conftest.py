import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# jax: one persistent compilation cache for this test run, shared by the xdist workers and the
# subprocesses they start (they inherit the environment set here, in the controller, before it
# starts them). Tests build the same small models again and again; each compiles once. The folder
# is new for every run and removed at its end, so no run reads another's compilations.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="zoo-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # cache the quick compilations too
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import keras
import numpy as np
import pytest

import zoo


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


@pytest.fixture
def backend():
    return keras.backend.backend()


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def snapshot(model):
    """Every weight of `model`, copied (to check later that a failed load changed nothing)."""
    return [np.array(to_numpy(w)) for w in model.weights]


def assert_unchanged(model, before):
    for w, value in zip(model.weights, before):
        np.testing.assert_array_equal(to_numpy(w), value, err_msg=w.path)


def tiny_resnet(**overrides):
    """A two-stage ResNet on 8x8x3 images, small enough to build and train in a second."""
    kwargs = dict(
        stage_depths=(1, 1),
        stage_widths=(4, 8),
        input_shape=(8, 8, 3),
        num_classes=3,
    )
    kwargs.update(overrides)
    return zoo.ResNet(**kwargs)


# Every mapping with the options that select its variants: (id, skip, skip_options).
SKIP_CASES = [
    ("identity", "identity", {}),
    ("scale", "scale", {"lambda_": 0.5}),
    ("scale_branch", "scale", {"lambda_": 0.5, "scale_branch": True}),
    ("gate_exclusive", "gate_exclusive", {}),
    ("gate_shortcut", "gate_shortcut", {}),
    ("conv1x1", "conv1x1", {}),
    ("dropout", "dropout", {}),
    ("dropout_inverted", "dropout", {"inverted": True}),
    ("orthogonal_fixed", "orthogonal", {"mode": "fixed"}),
    ("orthogonal_learned", "orthogonal", {"mode": "learned"}),
    ("sparse", "sparse", {"k": 2}),
    ("sparse_trainable", "sparse", {"k": 2, "trainable_values": True}),
    ("correlation", "correlation", {"rho": 0.5}),
    ("correlation_block", "correlation", {"rho": -0.3, "block": 2}),
    ("none", "none", {}),
]
SKIP_IDS = [c[0] for c in SKIP_CASES]
