"""The generated time-invariant / time-variant sequence tasks (issue #15, Lechner et al.'s RNN
claim): same inputs, a rule that ignores or depends on time, balanced, seeded."""

import numpy as np
import pytest

import zoo
from zoo.data import sign_of_weighted_sum


def test_both_rules_label_the_same_inputs_and_only_time_differs():
    xi, yi = sign_of_weighted_sum(2000, 16, "time_invariant", seed=3)
    xv, yv = sign_of_weighted_sum(2000, 16, "time_variant", seed=3)
    np.testing.assert_array_equal(xi, xv)
    assert xi.shape == (2000, 16, 1) and xi.dtype == np.float32 and yi.dtype == np.int32
    np.testing.assert_array_equal(yi, (xi[..., 0].sum(axis=1) > 0).astype("int32"))
    w = np.cos(2 * np.pi * np.arange(16) / 16)
    np.testing.assert_array_equal(yv, (xv[..., 0].astype("float64") @ w > 0).astype("int32"))
    assert 0.45 < yi.mean() < 0.55 and 0.45 < yv.mean() < 0.55  # balanced
    assert 0.35 < (yi == yv).mean() < 0.65  # the two rules disagree on about half the sequences


def test_time_invariant_labels_survive_shuffling_the_steps_and_time_variant_do_not():
    x, yi = sign_of_weighted_sum(500, 16, "time_invariant", seed=0)
    _, yv = sign_of_weighted_sum(500, 16, "time_variant", seed=0)
    shuffled = x[:, np.random.default_rng(1).permutation(16)]
    np.testing.assert_array_equal((shuffled[..., 0].sum(axis=1) > 0).astype("int32"), yi)
    w = np.cos(2 * np.pi * np.arange(16) / 16)
    assert np.mean((shuffled[..., 0].astype("float64") @ w > 0).astype("int32") == yv) < 0.9


def test_seeded_and_checked():
    a, b = sign_of_weighted_sum(10, 8, "time_variant", seed=5), sign_of_weighted_sum(10, 8, "time_variant", seed=5)
    np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(ValueError, match="rule='weekly'.*'time_invariant', 'time_variant'"):
        sign_of_weighted_sum(10, 8, "weekly")
    with pytest.raises(ValueError, match="length"):
        sign_of_weighted_sum(10, 1, "time_variant")


def test_loadable_by_name_for_the_recipes_and_trainable_by_a_recurrent_model():
    data = zoo.data.load_dataset("time_variant", length=12, train=64, test=32, seed=1)
    assert data.input_shape == (12, 1) and data.num_classes == 2 and len(data.x_test) == 32
    model = zoo.get_model("resrnn_mnist1d", units=8, input_shape=data.input_shape, num_classes=2, skip="orthogonal")
    out = model(data.x_train[:4])
    assert tuple(out.shape) == (4, 2)
