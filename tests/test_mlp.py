"""Fully-connected ResNets (ResidualMLP): every mapping trains, saves and exposes its units."""

import keras
import numpy as np
import pytest
from conftest import SKIP_CASES, SKIP_IDS, to_numpy

import zoo


def tiny_mlp(**overrides):
    kwargs = dict(depth=2, width=6, input_shape=(4, 2), num_classes=3)
    kwargs.update(overrides)
    return zoo.ResidualMLP(**kwargs)


def batch():
    rng = np.random.default_rng(0)
    return rng.standard_normal((8, 4, 2)).astype("float32"), np.arange(8) % 3


@pytest.mark.parametrize("case", SKIP_CASES, ids=SKIP_IDS)
def test_every_mapping_trains_a_step_and_round_trips_a_keras_file(case, tmp_path):
    _, skip, options = case
    model = tiny_mlp(skip=skip, skip_options=options, norm="batch")
    x, y = batch()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=True)
    before = [to_numpy(w) for w in model.trainable_weights]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert any(not np.array_equal(b, to_numpy(w)) for b, w in zip(before, model.trainable_weights))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded, zoo.ResidualMLP) and loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(to_numpy(loaded(x, training=False)), to_numpy(model(x, training=False)))


def test_compiled_training_step():
    model = tiny_mlp(skip="orthogonal", norm="layer")
    x, y = batch()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loss = model.fit(x, y, batch_size=8, epochs=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(loss))


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_unit_output_is_skip_plus_branch(norm):
    x = np.random.default_rng(1).standard_normal((5, 6)).astype("float32")
    unit = zoo.ResidualMLPUnit(6, hidden=10, norm=norm, skip="sparse", skip_options={"k": 2})
    y = to_numpy(unit(x))
    np.testing.assert_allclose(y, to_numpy(unit.skip(x)) + to_numpy(unit.branch(x)), atol=1e-5)


def test_model_contract_and_presets():
    model = zoo.get_model("resmlp_fmnist_d4", width=16)
    assert [u.name for u in model.residual_units] == ["unit1", "unit2", "unit3", "unit4"]
    assert model.head.units == 10 and model.input_shape == (None, 28, 28, 1)
    x = np.zeros((2, 28, 28, 1), "float32")
    features = model.forward_features(x)
    assert features.shape == (2, 16)
    np.testing.assert_allclose(to_numpy(model.forward_head(features)), to_numpy(model(x)), atol=1e-6)
    assert {"resmlp_fmnist_d4", "resmlp_fmnist_d8", "resmlp_fmnist_d16"} <= set(zoo.list_models(family="mlp"))
    assert zoo.registry.get_model_entry("resmlp_fmnist_d16").defaults["depth"] == 16


def test_invalid_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="norm"):
        zoo.ResidualMLP(norm="group")
    with pytest.raises(ValueError, match="depth"):
        zoo.ResidualMLP(depth=0)
    with pytest.raises(zoo.UnknownNameError):
        zoo.ResidualMLP(skip="identiy")
