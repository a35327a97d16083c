"""Fully-connected ResNets (ResidualMLP): every mapping trains and saves, the unit, presets.
Build, contract, serialization, DropPathFreeze and weights across backends: the shared runners
(tests/runners.py, tests/test_model_runners.py)."""

import keras
import numpy as np
import pytest
from conftest import SKIP_CASES, SKIP_IDS, to_numpy
from runners import run_model_test, train_each_one_step, variants_of

import zoo


def tiny_mlp(**overrides):
    kwargs = dict(depth=2, width=6, input_shape=(4, 2), num_classes=3)
    kwargs.update(overrides)
    return zoo.ResidualMLP(**kwargs)


def batch():
    rng = np.random.default_rng(0)
    return rng.standard_normal((8, 4, 2)).astype("float32"), np.arange(8) % 3


def test_every_mapping_trains_a_step_and_round_trips_a_keras_file(tmp_path):
    # All mappings in one joint model: one train step and one .keras file for the 15 of them.
    models = [tiny_mlp(skip=skip, skip_options=options, norm="batch", name=f"mlp_{case_id}")
              for case_id, skip, options in SKIP_CASES]
    x, y = batch()
    moved, losses = train_each_one_step(models, x, y)
    assert np.all(np.isfinite(losses))
    assert all(moved), [c for c, m in zip(SKIP_IDS, moved) if not m]
    inputs = keras.Input(x.shape[1:])
    joint = keras.Model(inputs, [m(inputs) for m in models])
    joint.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    for case_id, model in zip(SKIP_IDS, models):
        restored = loaded.get_layer(model.name)
        assert isinstance(restored, zoo.ResidualMLP) and restored.get_config() == model.get_config(), case_id
        np.testing.assert_array_equal(to_numpy(restored(x, training=False)), to_numpy(model(x, training=False)),
                                      err_msg=case_id)


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


@pytest.mark.parametrize("case", variants_of(zoo.ResidualMLP), ids=lambda c: c.id)
def test_runner_on_mlp_variants(case):
    run_model_test(case)


def test_presets_and_their_units():
    model = zoo.get_model("resmlp_fmnist_d4", width=16)
    assert [u.name for u in model.residual_units] == ["unit1", "unit2", "unit3", "unit4"]
    assert model.head.units == 10 and model.input_shape == (None, 28, 28, 1)
    assert tuple(model.forward_features(np.zeros((2, 28, 28, 1), "float32")).shape) == (2, 16)
    assert {"resmlp_fmnist_d4", "resmlp_fmnist_d8", "resmlp_fmnist_d16"} <= set(zoo.list_models(family="mlp"))
    assert zoo.registry.get_model_entry("resmlp_fmnist_d16").defaults["depth"] == 16


def test_invalid_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="norm"):
        zoo.ResidualMLP(norm="group")
    with pytest.raises(ValueError, match="depth"):
        zoo.ResidualMLP(depth=0)
    with pytest.raises(zoo.UnknownNameError):
        zoo.ResidualMLP(skip="identiy")
