"""SPEC sections 1, 3, 4 (ResNet): units, placements, mappings, presets and the model contract."""

import functools

import keras
import numpy as np
import pytest
from conftest import SKIP_CASES, SKIP_IDS, tiny_resnet, to_numpy
from runners import run_model_test, shapes_only, trainable_count, variants_of

import zoo
from zoo.layers.residual import PLACEMENTS


@functools.lru_cache(maxsize=None)
def preset_count(name):
    """Trainable parameters of preset `name`, built once per process without initialising."""
    return trainable_count(shapes_only(name))


@pytest.mark.parametrize(
    "name,expected",
    [
        ("resnet110_cifar", 1.7e6),  # He et al. 2015 Table 6: 1.7M
        ("resnet164_cifar", 1.7e6),  # He et al. 2016 Table 2: 1.7M (pre-activation)
        ("resnet50", 25.6e6),  # 25.6M (timm: 25,557,032)
    ],
)
def test_parameter_counts_match_the_published_ones(name, expected):
    count = preset_count(name)
    assert abs(count - expected) / expected < 0.03, count


def test_resnet50_matches_timm_parameter_count_exactly():
    assert preset_count("resnet50") == 25_557_032


@pytest.mark.slow
def test_resnet1001_parameter_count_is_10_2m():
    model = shapes_only("resnet1001_cifar")
    assert len(model.residual_units) == 333
    assert abs(trainable_count(model) - 10.2e6) / 10.2e6 < 0.02


def fit_steps(model, x, y, steps=8, run_eagerly=True):
    """Adam steps on one fixed batch; returns the training losses. Eager by default: for a
    model this small the compile costs more than the steps (the compiled path has its own test)."""
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=run_eagerly,
    )
    return [float(model.train_on_batch(x, y)) for _ in range(steps)]


def fixed_batch(shape=(16, 8, 8, 3), classes=3):
    rng = np.random.default_rng(0)
    return rng.standard_normal(shape).astype("float32"), rng.integers(0, classes, shape[0]).astype("int32")


# Every mapping in the default placement, and every placement with mappings of each kind (a
# parameter-free one, a fixed matrix, a gate and a learned conv): the placement decides where
# the branch ends and the mapping only acts on the shortcut, so the full product (75 cases)
# repeats the same code paths. Every mapping also trains in full_preact, compiled, below.
PLACEMENT_CASES = [("original", case) for case in SKIP_CASES] + [
    (placement, case)
    for placement in PLACEMENTS
    if placement != "original"
    for case in SKIP_CASES
    if case[0] in ("identity", "sparse", "gate_exclusive", "conv1x1")
]


@pytest.mark.parametrize(
    "placement,case", PLACEMENT_CASES, ids=[f"{p}-{c[0]}" for p, c in PLACEMENT_CASES]
)
def test_every_placement_and_mapping_trains_on_a_small_resnet(placement, case):
    _, skip, options = case
    model = tiny_resnet(placement=placement, skip=skip, skip_options=options)
    x, y = fixed_batch()
    out = model(x, training=False)
    assert tuple(out.shape) == (16, 3)
    assert np.all(np.isfinite(to_numpy(out)))
    losses = fit_steps(model, x, y)
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < losses[0], losses


@pytest.mark.parametrize("case", SKIP_CASES, ids=SKIP_IDS)
def test_every_mapping_trains_in_a_compiled_step(case):
    _, skip, options = case
    model = tiny_resnet(placement="full_preact", skip=skip, skip_options=options, drop_path_rate=0.1)
    x, y = fixed_batch()
    losses = fit_steps(model, x, y, run_eagerly=False)
    assert np.mean(losses[-2:]) < losses[0], losses


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("downsample", ["projection", "pad"])
def test_bottleneck_units_train_with_every_placement(placement, downsample):
    model = tiny_resnet(block="bottleneck", placement=placement, downsample=downsample, skip="sparse")
    x, y = fixed_batch()
    losses = fit_steps(model, x, y)
    assert np.mean(losses[-2:]) < losses[0], losses


@pytest.mark.parametrize(
    "name,shape",
    [("resnet20_cifar", (28, 28, 1)), ("resnet20_cifar", (32, 32, 3)), ("resnet18", (28, 28, 1)), ("resnet18", (224, 224, 3))],
)
def test_input_shapes(name, shape):
    model = zoo.get_model(name, input_shape=shape, num_classes=7)
    out = model(np.zeros((2, *shape), "float32"))
    assert tuple(out.shape) == (2, 7)


def test_cifar_depths_build_the_right_number_of_units():
    for depth, units in [(20, 9), (32, 15), (44, 21), (56, 27), (110, 54), (164, 54)]:
        assert len(shapes_only(f"resnet{depth}_cifar").residual_units) == units


def test_imagenet_depths_build_the_right_number_of_units():
    for depth, units in [(18, 8), (34, 16), (101, 33), (152, 50), (200, 66)]:
        assert len(shapes_only(f"resnet{depth}").residual_units) == units


def test_pad_downsample_has_no_shortcut_parameters():
    proj = shapes_only("resnet20_cifar", downsample="projection")
    pad = shapes_only("resnet20_cifar", downsample="pad")
    # Two projections (16->32, 32->64): 1x1 convs + BN scale and shift.
    assert trainable_count(proj) - trainable_count(pad) == 16 * 32 + 32 * 64 + 2 * (32 + 64)
    assert not any("projection" in w.path for w in pad.weights)


def test_pad_shortcut_is_option_a():
    from zoo.layers.residual import pad_shortcut

    x = np.random.default_rng(0).standard_normal((1, 4, 4, 2)).astype("float32")
    y = to_numpy(pad_shortcut(x, 2, 6))
    np.testing.assert_array_equal(y[..., 2:4], x[:, ::2, ::2, :])
    np.testing.assert_array_equal(y[..., :2], 0)
    np.testing.assert_array_equal(y[..., 4:], 0)


def test_model_exposes_features_and_ordered_units():
    model = tiny_resnet(skip="orthogonal")
    units = model.residual_units
    assert [u.name for u in units] == ["stage1_unit1", "stage2_unit1"]
    assert all(isinstance(u, zoo.ResidualUnit) for u in units)
    assert [u.index for u in units] == [0, 1]
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype("float32")
    assert tuple(model.forward_features(x).shape) == (2, 4, 4, 8)  # features before pooling
    assert tuple(tiny_resnet(num_classes=0)(x).shape) == (2, 8)


@pytest.mark.parametrize("case", variants_of(zoo.ResNet), ids=lambda c: c.id)
def test_runner_on_resnet_variants(case):
    run_model_test(case)


def test_each_unit_gets_its_own_seeded_matrix():
    model = tiny_resnet(stage_depths=(2, 1), skip="orthogonal")
    q0, q1 = (to_numpy(u.skip.matrix()) for u in model.residual_units[:2])
    assert not np.allclose(q0, q1)
    again = tiny_resnet(stage_depths=(2, 1), skip="orthogonal")
    np.testing.assert_array_equal(q0, to_numpy(again.residual_units[0].skip.matrix()))


def test_drop_path_rate_follows_the_linear_schedule():
    model = tiny_resnet(stage_depths=(2, 3), drop_path_rate=0.2)
    rates = [u.drop_path.rate for u in model.residual_units]
    np.testing.assert_allclose(rates, [0.0, 0.05, 0.1, 0.15, 0.2])


def test_zero_init_last_makes_every_unit_its_skip_mapping():
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype("float32")
    for placement in PLACEMENTS:
        unit = zoo.ResidualUnit(4, placement=placement, skip="orthogonal", zero_init_last=True)
        y = to_numpy(unit(x, training=False))
        expected = to_numpy(unit.skip(x))
        if placement in ("original",):
            expected = np.maximum(expected, 0)
        if placement == "bn_after_add":
            expected = to_numpy(keras.ops.relu(unit.post_norm(expected, training=False)))
        np.testing.assert_allclose(y, expected, atol=1e-5, err_msg=placement)


def test_skip_none_is_a_plain_network():
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype("float32")
    unit = zoo.ResidualUnit(4, placement="relu_before_add", skip="none")
    y = to_numpy(unit(x))
    # The branch alone: conv-BN-ReLU-conv-BN-ReLU.
    h = x
    for i in range(2):
        h = to_numpy(keras.ops.relu(unit.norms[i](unit.convs[i](h), training=False)))
    np.testing.assert_allclose(y, h, atol=1e-5)


def test_invalid_model_arguments_raise_value_errors():
    with pytest.raises(ValueError, match=r"placement='preact'.*'full_preact'"):
        zoo.get_model("resnet20_cifar", placement="preact")
    with pytest.raises(ValueError, match=r"drop_path_rate=-0\.1"):
        zoo.get_model("resnet20_cifar", drop_path_rate=-0.1)
    with pytest.raises(ValueError, match=r"input_shape=\(32, 32\).*rank-3"):
        zoo.get_model("resnet20_cifar", input_shape=(32, 32))
    with pytest.raises(ValueError, match=r"downsample='stride'"):
        zoo.get_model("resnet20_cifar", downsample="stride")
    with pytest.raises(ValueError, match=r"depth=21.*6n \+ 2"):
        zoo.models.cifar_resnet(depth=21)
    with pytest.raises(ValueError, match=r"num_classes=-1"):
        zoo.get_model("resnet20_cifar", num_classes=-1)
    with pytest.raises(ValueError, match=r"depth=42.*\[18, 34, 50, 101, 152, 200\]"):
        zoo.models.imagenet_resnet(depth=42)


def test_wrong_input_rank_at_call_is_a_value_error():
    model = tiny_resnet()
    with pytest.raises(ValueError):
        model(np.zeros((2, 8, 8), "float32"))


@pytest.mark.parametrize("placement", ["full_preact", "relu_preact"])
def test_shared_preact_unit_starts_its_shortcut_from_the_preactivation(placement):
    # He et al. 2016 appendix: the first unit's activation comes before the split.
    x = (3.0 * np.random.default_rng(0).standard_normal((2, 4, 4, 4)) + 1.0).astype("float32")
    shared = zoo.ResidualUnit(4, placement=placement, shared_preact=True)
    y = to_numpy(shared(x))
    pre = to_numpy(keras.ops.relu(shared.norms[0](x) if placement == "full_preact" else x))
    np.testing.assert_allclose(y, pre + to_numpy(shared.branch(x)), atol=1e-5)
    plain = zoo.ResidualUnit(4, placement=placement)
    np.testing.assert_allclose(to_numpy(plain(x)), x + to_numpy(plain.branch(x)), atol=1e-5)
    assert zoo.ResidualUnit.from_config(shared.get_config()).shared_preact


@pytest.mark.parametrize("kernel_size,stride,padding", [(3, 1, "same"), (3, 2, "valid"), (1, 2, "valid"), (1, 1, "same")])
def test_zoo_conv_equals_keras_conv_forward_and_backward(kernel_size, stride, padding):
    """zoo's Conv2D (torch: channels-last views into torch's conv, no copies) computes Keras'
    Conv2D, its gradients too; the torch output is NHWC in ordinary contiguous memory."""
    from zoo.layers.residual import Conv2D

    x = np.random.default_rng(0).standard_normal((2, 9, 9, 5)).astype("float32")
    ours = Conv2D(6, kernel_size, strides=stride, padding=padding, use_bias=False)
    theirs = keras.layers.Conv2D(6, kernel_size, strides=stride, padding=padding, use_bias=False)
    ours.build(x.shape)
    theirs.build(x.shape)
    theirs.set_weights(ours.get_weights())
    np.testing.assert_allclose(to_numpy(ours(x)), to_numpy(theirs(x)), rtol=1e-5, atol=1e-5)
    assert type(ours).__name__ == "Conv2D"  # weight files name its place as a Keras Conv2D's
    if keras.backend.backend() == "torch":
        import torch

        grads = []
        for layer in (ours, theirs):
            inputs = torch.tensor(x, requires_grad=True)
            out = layer(inputs)
            (out * torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
            grads.append((inputs.grad.numpy(), layer.kernel.value.grad.numpy()))
            assert out.is_contiguous()
        for a, b in zip(*grads):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("shape,axis", [((6, 5, 5, 4), -1), ((8, 3), -1), ((4, 7, 3), -1), ((3, 4, 5, 5), 1)])
def test_zoo_batch_norm_equals_keras_batch_norm(shape, axis):
    """zoo's BatchNormalization (torch: one fused kernel) computes Keras' layer: the training
    output, the moving statistics after the step, the inference output and (torch) every
    gradient; under mixed_bfloat16 it returns bfloat16 as Keras' layer does."""
    from zoo.layers.norm import BatchNormalization

    x = np.random.default_rng(0).normal(2.0, 3.0, shape).astype("float32")
    ours = BatchNormalization(axis=axis, momentum=0.9, epsilon=1e-3)
    theirs = keras.layers.BatchNormalization(axis=axis, momentum=0.9, epsilon=1e-3)
    rng = np.random.default_rng(1)
    for layer in (ours, theirs):
        layer.build(shape)
    for a, b in zip(ours.weights, theirs.weights):
        value = np.abs(rng.normal(1.0, 0.3, a.shape)).astype("float32")
        a.assign(value)
        b.assign(value)
    assert type(ours).__name__ == "BatchNormalization"  # weight files name it as Keras' layer
    if keras.backend.backend() == "torch":
        import torch

        outs, grads = [], []
        for layer in (ours, theirs):
            inputs = torch.tensor(x, requires_grad=True)
            out = layer(inputs, training=True)
            (out * torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
            outs.append(out.detach().numpy())
            grads.append([inputs.grad.numpy(), layer.gamma.value.grad.numpy(), layer.beta.value.grad.numpy()])
        np.testing.assert_allclose(*outs, rtol=1e-5, atol=1e-5)
        for a, b in zip(*grads):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    else:
        np.testing.assert_allclose(to_numpy(ours(x, training=True)), to_numpy(theirs(x, training=True)), atol=1e-5)
    for a, b in zip(ours.non_trainable_weights, theirs.non_trainable_weights):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-5, atol=1e-6)
    assert not np.allclose(to_numpy(ours.moving_mean), 1.0, atol=0.05)  # the step moved them
    np.testing.assert_allclose(to_numpy(ours(x, training=False)), to_numpy(theirs(x, training=False)), atol=1e-5)
    half = BatchNormalization(axis=axis, dtype="mixed_bfloat16")
    assert keras.backend.standardize_dtype(half(x, training=True).dtype) == "bfloat16"
