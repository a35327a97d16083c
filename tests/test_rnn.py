"""SPEC section 4 (residual RNNs): the cell over time, stacked LSTM/GRU units over depth,
every mapping, presets, the unit order, the adding-problem generator. Build, contract,
serialization, DropPathFreeze and weights across backends: the shared runners
(tests/runners.py, tests/test_model_runners.py)."""

import keras
import numpy as np
import pytest
from conftest import SKIP_CASES, SKIP_IDS, to_numpy
from runners import run_model_test, train_each_one_step, variants_of

import zoo
from zoo.data.synthetic import adding_problem


def sequences(n=8, steps=5, features=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, steps, features)).astype("float32")


def tiny_rnn(**overrides):
    return zoo.ResidualRNN(**{"units": 4, "input_shape": (5, 3), "num_classes": 3, **overrides})


def tiny_stacked(**overrides):
    return zoo.ResidualStackedRNN(**{"units": 4, "depth": 2, "input_shape": (5, 3), "num_classes": 3, **overrides})


CLASSIFY = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.mark.parametrize("form", ["over_time", "over_depth"])
def test_every_mapping_builds_and_trains_a_step(form):
    build = tiny_rnn if form == "over_time" else tiny_stacked
    models = [build(skip=skip, skip_options=options, drop_path_rate=0.3, name=f"{form}_{case_id}")
              for case_id, skip, options in SKIP_CASES]
    moved, losses = train_each_one_step(models, sequences(), np.arange(8) % 3, CLASSIFY)
    assert np.all(np.isfinite(losses))
    assert all(moved), [c for c, m in zip(SKIP_IDS, moved) if not m]


def test_cell_computes_the_residual_recurrence():
    cell = zoo.ResidualRNNCell(4, skip="orthogonal")
    rnn = keras.layers.RNN(cell, return_sequences=True)
    x = sequences(2, 3, 3)
    out = to_numpy(rnn(x))
    w, u, b = (to_numpy(v) for v in (cell.kernel, cell.recurrent_kernel, cell.bias))
    q = to_numpy(cell.skip.matrix())
    h = np.zeros((2, 4))
    for t in range(3):
        h = h @ q.T + np.tanh(x[:, t] @ w + h @ u + b)
        np.testing.assert_allclose(out[:, t], h, atol=1e-5)


def test_cell_with_random_mappings_trains_compiled_inside_keras_rnn():
    # DropPath and the dropout shortcut draw once per sequence, outside the time loop (a draw
    # inside a JAX scan would leak tracers): the compiled path on every backend.
    inputs = keras.Input((5, 3))
    h = keras.layers.RNN(zoo.ResidualRNNCell(4, skip="dropout", drop_path_rate=0.5, index=1))(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    model.compile(optimizer="adam", loss=CLASSIFY)
    losses = [float(model.train_on_batch(sequences(), np.arange(8) % 3)) for _ in range(3)]
    assert np.all(np.isfinite(losses))
    restored = keras.layers.RNN.from_config(keras.layers.RNN(zoo.ResidualRNNCell(4, skip="sparse")).get_config())
    assert isinstance(restored.cell, zoo.ResidualRNNCell) and restored.cell.skip_name == "sparse"


def test_over_time_model_halves_its_loss_on_64_adding_problems():
    x, y = adding_problem(64, 10, seed=0)
    model = zoo.get_model("resrnn_adding", units=16)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    history = model.fit(x, y, batch_size=64, epochs=15, verbose=0).history["loss"]
    assert min(history) < history[0] / 2, history


def test_over_depth_model_halves_its_loss_on_64_fixed_samples():
    x, y = sequences(64, seed=1), np.random.default_rng(1).integers(0, 3, 64)
    model = tiny_stacked(units=16, cell="gru")
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=CLASSIFY)
    history = model.fit(x, y, batch_size=64, epochs=25, verbose=0).history["loss"]
    assert min(history) < history[0] / 2, history


def test_residual_units_are_ordered_with_their_own_mappings_and_drop_path_schedule():
    stacked = tiny_stacked(depth=3, skip="orthogonal", drop_path_rate=0.2, cell="gru")
    units = stacked.residual_units
    assert [u.name for u in units] == ["unit0", "unit1", "unit2"]
    assert all(isinstance(u.rnn, keras.layers.GRU) for u in units)
    np.testing.assert_allclose([u.drop_path.rate for u in units], [0.0, 0.1, 0.2])
    assert not np.allclose(to_numpy(units[0].skip.matrix()), to_numpy(units[1].skip.matrix()))
    over_time = tiny_rnn(num_layers=2, drop_path_rate=0.2)
    cells = over_time.residual_units
    assert all(isinstance(c, zoo.ResidualRNNCell) for c in cells)
    assert [c.index for c in cells] == [0, 1] and [c.drop_path_rate for c in cells] == [0.0, 0.2]
    assert tiny_rnn(drop_path_rate=0.2).residual_units[0].drop_path_rate == 0.2  # a lone unit is the last


@pytest.mark.parametrize("case", variants_of(zoo.ResidualRNN) + variants_of(zoo.ResidualStackedRNN), ids=lambda c: c.id)
def test_runner_on_rnn_variants(case):
    run_model_test(case)
    assert tuple(case.build().forward_features(case.inputs()).shape) == (4, 4)  # pooled over time: (batch, units)


def test_presets_build_for_their_data():
    shapes = {"fmnist_rows": (28, 28), "mnist1d": (40, 1), "adding": (12, 2)}
    names = zoo.list_models(family="rnn")
    assert set(names) == set(zoo.models.RNN_PRESETS)
    for name in names:
        shape = next(s for key, s in shapes.items() if name.endswith(key))
        model = zoo.get_model(name, units=8)
        assert tuple(model(np.zeros((2, *shape), "float32")).shape) == (2, model.num_classes)


def test_adding_problem_is_seeded_and_well_formed():
    x, y = adding_problem(100, 20, seed=3)
    assert x.shape == (100, 20, 2) and y.shape == (100, 1) and x.dtype == np.float32
    assert np.all(x[..., 1].sum(axis=1) == 2)
    assert np.all(x[:, :10, 1].sum(axis=1) == 1)  # one marker in each half
    np.testing.assert_allclose(y[:, 0], (x[..., 0] * x[..., 1]).sum(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(adding_problem(100, 20, seed=3)[0], x)
    assert not np.array_equal(adding_problem(100, 20, seed=4)[0], x)


def test_invalid_arguments_and_inputs_raise_value_errors():
    with pytest.raises(ValueError, match=r"input_shape=\(28,\).*rank-2"):
        tiny_rnn(input_shape=(28,))
    with pytest.raises(ValueError, match=r"cell='rnn'"):
        tiny_stacked(cell="rnn")
    with pytest.raises(ValueError, match=r"pool='max'"):
        tiny_rnn(pool="max")
    with pytest.raises(ValueError, match=r"units=0"):
        zoo.ResidualRNNCell(0)
    with pytest.raises(ValueError, match=r"length=1"):
        adding_problem(4, 1)
    with pytest.raises(ValueError):
        tiny_stacked()(np.zeros((2, 5), "float32"))


def test_cell_dropout_shortcut_attenuates_as_he_et_al_describe():
    # Inference: M(h) = 0.5 h (the expected scale of the unscaled Bernoulli(0.5) mask).
    cell = zoo.ResidualRNNCell(4, skip="dropout")
    rnn = keras.layers.RNN(cell, return_sequences=True)
    x = sequences(2, 3, 3)
    out = to_numpy(rnn(x, training=False))
    w, u, b = (to_numpy(v) for v in (cell.kernel, cell.recurrent_kernel, cell.bias))
    h = np.zeros((2, 4))
    for t in range(3):
        h = 0.5 * h + np.tanh(x[:, t] @ w + h @ u + b)
        np.testing.assert_allclose(out[:, t], h, atol=1e-5)
    # Training: one unscaled 0/1 mask per sequence.
    mask = to_numpy(cell.skip(np.ones((2, 4), "float32"), training=True))
    assert set(np.unique(mask)) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="norm=True"):
        zoo.ResidualRNNCell(4, skip="conv1x1", skip_options={"norm": True})
