"""get_config/from_config, .keras and .weights.h5 round trips, and weights across backends."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import SKIP_CASES, SKIP_IDS, tiny_resnet, to_numpy

import zoo

BACKENDS = ("jax", "tensorflow", "torch")


def inputs():
    return np.random.default_rng(42).standard_normal((4, 8, 8, 3)).astype("float32")


def trained_a_little(model):
    """Move every weight (BN statistics included) off its initial value."""
    rng = np.random.default_rng(1)
    for w in model.weights:
        if "seed_generator" in w.path:
            continue
        value = to_numpy(w)
        w.assign(value + 0.05 * rng.standard_normal(value.shape).astype("float32") * (1 if w.trainable else 0.5))
    return model


@pytest.mark.parametrize("case", SKIP_CASES, ids=SKIP_IDS)
def test_keras_file_round_trip_is_bit_identical(case, tmp_path):
    _, skip, options = case
    model = trained_a_little(tiny_resnet(skip=skip, skip_options=options, placement="full_preact"))
    x = inputs()
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, zoo.ResNet)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(to_numpy(loaded(x, training=False)), to_numpy(model(x, training=False)))


@pytest.mark.parametrize("case", SKIP_CASES, ids=SKIP_IDS)
def test_config_round_trip_rebuilds_the_same_model(case):
    _, skip, options = case
    keras.utils.set_random_seed(3)
    model = tiny_resnet(skip=skip, skip_options=options)
    keras.utils.set_random_seed(3)
    rebuilt = zoo.ResNet.from_config(json.loads(json.dumps(model.get_config())))
    x = inputs()
    assert [w.path for w in rebuilt.weights] == [w.path for w in model.weights]
    np.testing.assert_array_equal(to_numpy(rebuilt(x)), to_numpy(model(x)))


def test_weights_file_round_trip(tmp_path):
    model = trained_a_little(tiny_resnet(skip="sparse", skip_options={"k": 2}))
    path = tmp_path / "model.weights.h5"
    model.save_weights(path)
    fresh = tiny_resnet(skip="sparse", skip_options={"k": 2})
    fresh.load_weights(path)
    x = inputs()
    np.testing.assert_array_equal(to_numpy(fresh(x)), to_numpy(model(x)))


def test_weights_saved_here_load_on_the_other_backends(tmp_path, backend):
    x = inputs()
    np.save(tmp_path / "inputs.npy", x)
    manifest = []
    for case_id, skip, options in SKIP_CASES:
        model = trained_a_little(tiny_resnet(skip=skip, skip_options=options, placement="original"))
        model.save_weights(tmp_path / f"{case_id}.weights.h5")
        np.save(tmp_path / f"{case_id}.npy", to_numpy(model(x, training=False)))
        manifest.append({"id": case_id, "config": model.get_config(), "weights": f"{case_id}.weights.h5", "outputs": f"{case_id}.npy"})
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    script = Path(__file__).with_name("cross_backend.py")
    for other in BACKENDS:
        if other == backend:
            continue
        env = {**os.environ, "KERAS_BACKEND": other}
        run = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        line = [l for l in run.stdout.splitlines() if l.startswith("RESULT ")][-1]
        report = json.loads(line[len("RESULT "):])
        assert report["backend"] == other
        assert set(report["diffs"]) == set(SKIP_IDS)
        for case_id, diff in report["diffs"].items():
            assert diff <= 1e-5, f"{backend} -> {other}, {case_id}: max abs diff {diff}"
