"""Multi-device training (zoo.training.configure_distribution): DataParallel through
keras.distribution on jax, equal to one device; a clear jax-only error elsewhere."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import pytest

from zoo.training import configure_distribution

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh jax process with two virtual CPU devices (the device count is fixed when jax
# starts): the same tiny ResNet, weights and batches, trained on one device, then data parallel.
TWO_DEVICES = textwrap.dedent(
    """
    import json
    import keras, numpy as np, jax
    import zoo
    from zoo.training import configure_distribution

    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, 32).astype("int32")

    def train(mode):
        keras.utils.set_random_seed(0)
        dist = configure_distribution(mode, batch_size=8)
        model = zoo.ResNet(stage_depths=(1, 1), stage_widths=(4, 8), input_shape=(8, 8, 3), num_classes=3,
                           skip="orthogonal")
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        devices = len(model.trainable_variables[0].value.sharding.device_set)
        weights = [np.asarray(keras.ops.convert_to_numpy(w)) for w in model.weights]
        keras.distribution.set_distribution(None)
        return history.history["loss"], weights, devices, dist

    loss_1, weights_1, devices_1, _ = train("none")
    loss_2, weights_2, devices_2, dist = train("data")
    try:
        configure_distribution("data", batch_size=7)
        uneven = None
    except ValueError as err:
        uneven = str(err)

    # The recipe, data parallel end to end (the same call as above, from --distribute data).
    import tempfile
    from recipes import train as recipe
    with tempfile.TemporaryDirectory() as out:
        recipe_rc = recipe.main(["train", "--distribute", "data", "--out", out, "--set",
                                 'model_args={"depth": 8}', "train_subset=64", "test_subset=32", "batch_size=16",
                                 "epochs=1"])
        recipe_devices = len(keras.distribution.distribution().device_mesh.devices.flatten())
    keras.distribution.set_distribution(None)
    print("RESULT " + json.dumps({
        "jax_devices": len(jax.devices()),
        "distribution": type(dist).__name__,
        "devices": [devices_1, devices_2],
        "loss": [loss_1, loss_2],
        "max_weight_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(weights_1, weights_2)),
        "max_weight": max(float(np.max(np.abs(a))) for a in weights_1),
        "uneven": uneven,
        "recipe": [recipe_rc, recipe_devices],
    }))
    """
)


def test_none_leaves_keras_default():
    assert configure_distribution("none") is None
    assert keras.distribution.distribution() is None


def test_unknown_mode_names_the_allowed_ones():
    with pytest.raises(ValueError, match="distribute='model'.*'none', 'data'"):
        configure_distribution("model")


@pytest.mark.skipif(keras.backend.backend() == "jax", reason="the jax-only error is for the other backends")
def test_data_parallel_says_it_is_jax_only():
    with pytest.raises(ValueError, match="jax backend only.*KERAS_BACKEND=jax"):
        configure_distribution("data", batch_size=8)
    assert keras.distribution.distribution() is None


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="keras.distribution is implemented for jax")
def test_data_parallel_on_two_devices_matches_one_device():
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", TWO_DEVICES], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["jax_devices"] == 2 and result["distribution"] == "DataParallel"
    assert result["devices"] == [1, 2]  # one device, then replicated on both
    # The same 8 updates; only the order of the cross-device sums differs (float32).
    (loss_1, loss_2) = result["loss"]
    assert loss_1 == pytest.approx(loss_2, rel=1e-5, abs=1e-6)
    assert result["max_weight_diff"] <= 1e-5 * max(1.0, result["max_weight"]), result
    assert result["uneven"] and "batch_size=7" in result["uneven"] and "multiple of 2" in result["uneven"]
    assert result["recipe"] == [0, 2]  # recipes.train --distribute data ran over both devices


@pytest.mark.skipif(keras.backend.backend() == "jax", reason="the jax-only error is for the other backends")
def test_recipe_distribute_data_says_it_is_jax_only(tmp_path):
    from recipes import train as recipe

    with pytest.raises(ValueError, match="jax backend only"):
        recipe.main(["train", "--distribute", "data", "--out", str(tmp_path), "--set", "epochs=1"])
