"""Swapping the skip of a trained model gradually (issue #15, fine-tuning and skip surgery):
zoo.swap_skip(model, new, warmup_steps=N) starts from exactly the trained model and reaches the
new mapping after N training steps; zoo.finish_skip_warmup gives the new mapping alone."""

import keras
import numpy as np
import pytest
from conftest import tiny_resnet, to_numpy

import zoo
from zoo.training import DropPathFreeze

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((8, 8, 8, 3)).astype("float32"), (np.arange(8) % 3).astype("int32")


def alphas(model):
    return [float(to_numpy(u.skip.alpha())) for u in model.residual_units]


@pytest.mark.parametrize("old,new,new_options", [("identity", "orthogonal", {}),
                                                 ("conv1x1", "sparse", {"k": 2})])
def test_warmup_starts_at_the_trained_model_and_ends_at_the_new_mapping(old, new, new_options, tmp_path):
    x, y = data()
    trained = tiny_resnet(skip=old, placement="original")
    for w in trained.trainable_weights:  # a learned skip (conv1x1) must be carried, not re-made
        w.assign(to_numpy(w) + 0.05)
    warm = zoo.swap_skip(trained, new, new_options, warmup_steps=3)
    np.testing.assert_array_equal(to_numpy(warm(x, training=False)), to_numpy(trained(x, training=False)))
    assert alphas(warm) == [0.0] * len(warm.residual_units)

    warm.compile(optimizer=keras.optimizers.SGD(0.01), loss=LOSS)
    warm.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)  # 2 steps
    assert alphas(warm) == pytest.approx([2 / 3] * len(warm.residual_units))
    with pytest.raises(ValueError, match="not complete"):
        zoo.finish_skip_warmup(warm)
    warm.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    assert alphas(warm) == [1.0] * len(warm.residual_units)

    done = zoo.finish_skip_warmup(warm)
    assert done.get_config()["skip"] == new and done.get_config()["skip_options"] == new_options
    np.testing.assert_allclose(to_numpy(done(x, training=False)), to_numpy(warm(x, training=False)), atol=1e-5)
    assert not any("/skip/count" in w.path for w in done.weights)

    warm.save(tmp_path / "warm.keras")  # mid-warm-up models save and load with their counters
    again = keras.saving.load_model(tmp_path / "warm.keras")
    assert alphas(again) == alphas(warm)
    np.testing.assert_array_equal(to_numpy(again(x, training=False)), to_numpy(warm(x, training=False)))


def test_warmup_inside_drop_path_freeze():
    x, y = data()
    warm = zoo.swap_skip(tiny_resnet(drop_path_rate=0.2), "orthogonal", warmup_steps=4)
    trainer = DropPathFreeze(warm, granularity="batch", seed=3)
    trainer.compile(optimizer=keras.optimizers.SGD(0.01), loss=LOSS)
    history = trainer.fit(x, y, batch_size=4, epochs=3, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert all(0.0 < a <= 1.0 for a in alphas(warm))  # counted, except in steps that froze the unit


def test_bad_warmups_are_refused_clearly():
    model = tiny_resnet()
    with pytest.raises(ValueError, match="warmup_steps"):
        zoo.swap_skip(model, "orthogonal", warmup_steps=-1)
    with pytest.raises(ValueError, match="not a warm-up"):
        zoo.finish_skip_warmup(model)
    warm = zoo.swap_skip(model, "orthogonal", warmup_steps=2)
    with pytest.raises(ValueError, match="finish_skip_warmup"):
        zoo.swap_skip(warm, "sparse", warmup_steps=2)
    with pytest.raises(ValueError, match="blend.*ResidualRNNCell"):
        zoo.ResidualRNN(units=4, input_shape=(5, 1), num_classes=2, skip="blend",
                        skip_options={"start": "identity", "end": "orthogonal"})


def test_recipe_config_warms_up_a_swapped_skip():
    import types

    from recipes.train import load_config, make_model

    data = types.SimpleNamespace(input_shape=(28, 28, 1), num_classes=10)
    config = load_config(None, ["weights=resnet20_cifar.fmnist_identity", "model_args.skip=orthogonal",
                                "skip_warmup_steps=50"])
    model = make_model(config, data)
    blend = model.residual_units[0].skip
    assert (blend.start, blend.end, blend.steps) == ("identity", "orthogonal", 50)
    shipped = zoo.get_model("resnet20_cifar.fmnist_identity")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 28, 28, 1)).astype("float32")
    np.testing.assert_array_equal(to_numpy(model(x, training=False)), to_numpy(shipped(x, training=False)))
    with pytest.raises(ValueError, match="skip_warmup_steps needs weights"):
        make_model(load_config(None, ["model_args.skip=orthogonal", "skip_warmup_steps=5"]), data)


def test_a_blend_mixes_mapping_and_branch_scale_in_between():
    from zoo.layers.skip import BlendSkip

    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 3, 4)).astype("float32")
    f = rng.standard_normal((2, 3, 3, 4)).astype("float32")
    blend = BlendSkip(start="gate_shortcut", start_options={"bias_init": -1.0},
                      end="gate_exclusive", end_options={"bias_init": 1.0}, steps=4)
    blend.build(x.shape)
    blend.count.assign(1.0)  # a = 1/4
    mapped, branch = (to_numpy(t) for t in blend(x, f))
    m0, b0 = (to_numpy(t) for t in blend.start_skip(x, f))
    m1, b1 = (to_numpy(t) for t in blend.end_skip(x, f))
    np.testing.assert_allclose(mapped, 0.75 * m0 + 0.25 * m1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(branch, 0.75 * b0 + 0.25 * b1, rtol=1e-5, atol=1e-6)
    assert not np.allclose(branch, f)  # the exclusive gate's branch scale is blended in
    # a branch neither mapping scales comes out as it went in, at every a
    plain = BlendSkip(start="identity", end="orthogonal", steps=4)
    plain.build(x.shape)
    plain.count.assign(2.0)
    f_tensor = keras.ops.convert_to_tensor(f)
    np.testing.assert_array_equal(to_numpy(plain(x, f_tensor)[1]), f)


@pytest.mark.parametrize("start,start_options,end,end_options", [
    ("identity", {}, "orthogonal", {}),
    ("sparse", {"k": 2, "trainable_values": True}, "correlation", {"rho": 0.5}),
])
def test_a_blend_of_linear_mappings_is_one_matmul_by_the_blended_matrix(start, start_options, end, end_options):
    from zoo.layers.skip import BlendSkip

    x = np.random.default_rng(2).standard_normal((2, 3, 3, 4)).astype("float32")
    blend = BlendSkip(start=start, start_options=start_options, end=end, end_options=end_options, steps=4)
    blend.build(x.shape)
    start_out, end_out = to_numpy(blend.start_skip(x)), to_numpy(blend.end_skip(x))
    np.testing.assert_array_equal(to_numpy(blend(x)), start_out)  # a = 0: exactly the start mapping
    blend.count.assign(1.0)
    np.testing.assert_allclose(to_numpy(blend(x)), 0.75 * start_out + 0.25 * end_out, rtol=1e-5, atol=1e-6)
    f = keras.ops.convert_to_tensor(np.ones_like(x))
    assert blend(x, f)[1] is f  # the branch, unscaled by both, passes through
    blend.count.assign(4.0)
    np.testing.assert_allclose(to_numpy(blend(x)), end_out, rtol=1e-6, atol=1e-6)


def test_a_warm_up_from_conv1x1_sums_as_conv1x1_does(monkeypatch):
    """At a = 0 the blend's residual sum is conv1x1's own, bit for bit, on every backend. On torch
    both are one addmm with the branch as its addend (`fused.linear_sum`): a matmul followed by
    an add rounds differently from one addmm on some CPUs (1 ulp on an AMD EPYC)."""
    from zoo.layers import fused

    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 5, 5, 8)).astype("float32")
    branch = rng.standard_normal((4, 5, 5, 8)).astype("float32")
    conv = zoo.layers.make_skip("conv1x1", {})
    conv.build(x.shape)
    conv.kernel.assign(rng.standard_normal((8, 8)).astype("float32"))
    blend = zoo.layers.make_skip("blend", {"start": "conv1x1", "end": "sparse", "end_options": {"k": 2}, "steps": 3})
    blend.build(x.shape)
    blend.start_skip.kernel.assign(to_numpy(conv.kernel))
    sums = []
    monkeypatch.setattr(fused, "linear_sum", lambda *a, _sum=fused.linear_sum: sums.append(1) or _sum(*a))
    expected = to_numpy(conv.add(x, branch, training=False))
    calls = len(sums)
    np.testing.assert_array_equal(to_numpy(blend.add(x, branch, training=False)), expected)
    if keras.backend.backend() == "torch":
        assert calls == 1 and len(sums) == 2  # both sums are one addmm
