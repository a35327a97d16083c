"""Skip mappings keep their promise for the whole network (SPEC section 2, network level).

The composed skip path M_L T_L ... M_1 T_1 of a model (zoo.analysis.skip_path), at every depth
the zoo offers and in every family, and the stream a model carries at initialisation.
"""

import keras
import numpy as np
import pytest
from conftest import to_numpy

import zoo
from zoo import analysis
from zoo.data.datasets import load_digits

K = 5.0  # singular values of a composed path stay within [1/K, K]
ENTANGLED = ["orthogonal", "sparse", "correlation"]
# The matrices are drawn in numpy (float64, from seed + unit index) when a unit is built; the
# backend only stores them, and every depth below 1001 checks that on each backend. ResNet-1001
# (333 units, ~40 s to build on tensorflow and torch) is checked once, on jax.
ONE_BACKEND = pytest.mark.skipif(keras.backend.backend() != "jax",
                                 reason="backend-independent numpy construction; checked on jax")
CIFAR_DEPTHS = [20, 56, 110, pytest.param(1001, marks=[pytest.mark.slow, ONE_BACKEND])]


def singular_values(matrix):
    return np.linalg.svd(matrix, compute_uv=False)


def assert_promise(skip, matrix, square=True):
    """The property `skip` promises, for a composed path `matrix`."""
    s = singular_values(matrix)
    if skip == "orthogonal":
        np.testing.assert_allclose(s, 1.0, atol=1e-4)
    else:
        assert 1 / K <= s.min() and s.max() <= K, (skip, s.min(), s.max())
    if skip == "sparse" and square:
        # Unipotent: (M - I)^C = 0 is the exact form of "every eigenvalue is 1".
        c = matrix.shape[0]
        nilpotent = np.linalg.matrix_power(matrix - np.eye(c), c)
        assert np.abs(nilpotent).max() < 1e-6 * max(1.0, np.abs(matrix).max()) ** c
    if skip == "correlation" and square:
        assert np.all(np.linalg.eigvals(matrix).real > 0)


def widths(model):
    return sorted({analysis.skip_matrix(u).shape[0] for u in model.residual_units})


@pytest.mark.parametrize("depth", CIFAR_DEPTHS)
@pytest.mark.parametrize("skip", ENTANGLED)
def test_resnet_composed_skip_path_keeps_the_promise(skip, depth):
    model = zoo.get_model(f"resnet{depth}_cifar", skip=skip, downsample="pad", input_shape=(8, 8, 1))
    whole = analysis.skip_path(model)  # option A transitions included: (C_L, C_0)
    assert whole.shape == (widths(model)[-1], widths(model)[0])
    assert_promise(skip, whole, square=False)
    for width in widths(model):  # the path inside each width: one shared permutation for sparse
        assert_promise(skip, analysis.skip_path(model, width=width))
    for unit in model.residual_units[:3]:  # the per-unit invariants hold as before
        m = analysis.skip_matrix(unit)
        if skip == "sparse":
            c = m.shape[0]
            assert np.abs(np.linalg.matrix_power(m - np.eye(c), c)).max() < 1e-6
        if skip == "correlation":
            np.testing.assert_allclose(m, m.T, atol=0)
            np.testing.assert_allclose(np.diag(m), 1.0, atol=0)
            assert np.linalg.eigvalsh(m).min() > 0


def test_correlation_path_lies_in_the_bound_of_one_rho_matrix():
    rho = 0.5
    bound = (1 + rho) / (1 - rho)
    for depth in (20, 110):
        model = zoo.get_model(f"resnet{depth}_cifar", skip="correlation", downsample="pad", input_shape=(8, 8, 1))
        s = singular_values(analysis.skip_path(model))
        assert 1 / bound - 1e-6 <= s.min() and s.max() <= bound + 1e-6
        r = model.residual_units[0].skip.unit_rho
        units = (depth - 2) // 2  # basic units: 3 stages of n, depth = 6n + 2
        np.testing.assert_allclose(r, np.tanh(np.arctanh(rho) / units), rtol=1e-12)


@pytest.mark.parametrize("skip,options", [("sparse", {"sigma": 1.0, "depth_scaled": False, "shared_permutation": False}),
                                          ("correlation", {"depth_scaled": False})])
def test_raw_constructions_still_explode_on_purpose(skip, options):
    model = zoo.get_model("resnet56_cifar", skip=skip, skip_options=options, downsample="pad", input_shape=(8, 8, 1))
    largest = singular_values(analysis.skip_path(model)).max()
    assert largest > 1e3  # ~9.4e3 (sparse, k=4, sigma=1) and ~1e12 (correlation, rho=0.5)
    if skip == "sparse":
        # Per-unit permutations: the product of units of one width is no longer unipotent.
        m = analysis.skip_path(model, width=16)
        assert np.abs(np.linalg.matrix_power(m - np.eye(16), 16)).max() > 1e-3


def test_raw_sparse_is_the_former_construction_bit_for_bit():
    """depth_scaled=False, shared_permutation=False, sigma=1 rebuild the matrices weights were
    trained with before the network-level construction (the shipped presets' record)."""
    k, c, seed = 4, 16, 3
    rng = np.random.default_rng(seed)
    perm = rng.permutation(c)
    mask = np.zeros((c, c))
    for i in range(c - 1):
        mask[i, rng.choice(np.arange(i + 1, c), size=min(k, c - 1 - i), replace=False)] = 1.0
    values = rng.normal(0.0, 1.0 / np.sqrt(k), size=(c, c)) * mask
    p = np.eye(c)[perm]
    expected = (p @ (np.eye(c) + values) @ p.T).astype("float32")
    layer = zoo.make_skip("sparse", {"k": k, "sigma": 1.0, "depth_scaled": False, "shared_permutation": False, "seed": seed})
    layer.build((None, c))
    np.testing.assert_array_equal(to_numpy(layer.matrix()), expected)


def test_every_linear_mapping_composes_as_documented():
    model_args = dict(downsample="pad", input_shape=(8, 8, 1))
    identity = analysis.skip_path(zoo.get_model("resnet20_cifar", skip="identity", **model_args))
    embed = np.zeros((64, 16))
    embed[24:40] = np.eye(16)  # option A pads the new channels evenly on both sides, twice
    np.testing.assert_array_equal(identity, embed)
    conv = analysis.skip_path(zoo.get_model("resnet20_cifar", skip="conv1x1", **model_args))
    np.testing.assert_allclose(conv, embed, atol=1e-6)  # W = I at initialisation
    scale = analysis.skip_path(zoo.get_model("resnet20_cifar", skip="scale", skip_options={"lambda_": 0.5}, **model_args))
    np.testing.assert_allclose(scale, 0.5**9 * embed, rtol=1e-6)  # attenuation, by design
    none = analysis.skip_path(zoo.get_model("resnet20_cifar", skip="none", **model_args))
    np.testing.assert_array_equal(none, np.zeros((64, 16)))
    with pytest.raises(ValueError, match="not a fixed linear map"):
        analysis.skip_path(zoo.get_model("resnet20_cifar", skip="gate_shortcut", **model_args))
    with pytest.raises(ValueError, match="width="):
        analysis.skip_path(zoo.get_model("resnet20_cifar", skip="sparse", input_shape=(8, 8, 1)))


@pytest.mark.parametrize("skip", ENTANGLED)
def test_vit_small_composed_skip_path(skip):
    model = zoo.get_model("vit_small_patch16_224", skip=skip, input_shape=(32, 32, 3), num_classes=10)
    assert len(model.residual_units) == 24
    assert_promise(skip, analysis.skip_path(model))


@pytest.mark.parametrize("skip", ENTANGLED)
def test_mlp_and_stacked_rnn_composed_skip_paths(skip):
    for model in (
        zoo.ResidualMLP(depth=32, width=64, input_shape=(16,), num_classes=3, skip=skip),
        zoo.get_model("resgru_mnist1d", skip=skip),
    ):
        assert_promise(skip, analysis.skip_path(model))


@pytest.mark.parametrize("preset", ["resrnn_fmnist_rows", "resrnn_mnist1d", "resrnn_adding"])
@pytest.mark.parametrize("skip", ENTANGLED)
def test_recurrent_cell_over_its_sequence_length(skip, preset):
    model = zoo.get_model(preset, skip=skip)
    cell = model.residual_units[0]
    steps = model.sequence_shape[0] or zoo.models.rnn.ADDING_HORIZON
    assert cell.horizon == steps
    assert_promise(skip, analysis.recurrent_skip_path(cell))
    raw = zoo.get_model(preset, skip=skip, skip_options={"depth_scaled": False, "sigma": 1.0} if skip == "sparse"
                        else {"depth_scaled": False} if skip == "correlation" else {})
    if skip != "orthogonal":  # the raw matrix applied at every step explodes over the sequence
        assert singular_values(analysis.recurrent_skip_path(raw.residual_units[0])).max() > 1e3


def test_over_time_model_of_unknown_length_needs_a_horizon():
    with pytest.raises(ValueError, match="horizon"):
        zoo.ResidualRNN(units=8, input_shape=(None, 2), skip="sparse")
    assert zoo.ResidualRNN(units=8, input_shape=(None, 2), horizon=50).residual_units[0].horizon == 50
    assert zoo.ResidualRNN(units=8, input_shape=(None, 2), skip="orthogonal").residual_units[0].horizon == 1


# === The stream at initialisation (train-mode BatchNorm) ===

ATTENUATING = {"scale", "dropout", "none"}  # their purpose is to attenuate or cut the path
BUILT_IN = ["identity", "scale", "gate_exclusive", "gate_shortcut", "conv1x1", "dropout", "orthogonal",
            "sparse", "correlation", "none"]  # (tests register mappings of their own)


# ResNet-110 on jax (the depth the README's statement is about); ResNet-56 on tensorflow and
# torch, which check their own forward pass of the same construction at half the build time.
STREAM_DEPTH = 110 if keras.backend.backend() == "jax" else 56


def stream(skip, placement, depth=STREAM_DEPTH, options=None, **model_args):
    keras.utils.set_random_seed(0)
    model = zoo.get_model(
        f"resnet{depth}_cifar", skip=skip, skip_options=options or {}, placement=placement,
        downsample="pad", input_shape=(8, 8, 1), **model_args,
    )
    x = np.random.default_rng(0).standard_normal((16, 8, 8, 1)).astype("float32")
    return np.array(analysis.stream_rms(model, x, training=True))


@pytest.mark.parametrize("placement", ["full_preact", "original"])
def test_stream_rms_at_initialisation_stays_within_3x_of_identity(placement):
    reference = stream("identity", placement)
    checked = []
    for skip in BUILT_IN:
        if skip in ATTENUATING or (skip == "orthogonal" and placement == "original"):
            continue
        if skip == "gate_exclusive":
            # g = sigmoid(-6) scales the branch away: the model starts as its skip path alone,
            # so its stream is compared with the identity model whose branches start at zero.
            ratio = stream(skip, placement) / stream("identity", placement, zero_init_last=True)
        else:
            ratio = stream(skip, placement) / reference
        assert np.all((ratio > 1 / 3) & (ratio < 3)), (skip, placement, ratio.min(), ratio.max())
        checked.append(skip)
    assert set(checked) == set(BUILT_IN) - ATTENUATING - ({"orthogonal"} if placement == "original" else set())


def test_stream_of_the_attenuating_and_rotating_mappings_is_as_documented():
    # With zero-initialised branches (zero_init_last) the stream is the skip path alone. In
    # full_preact a stage's first unit starts its shortcut from BN-ReLU(x): a fresh scale, so
    # the attenuation is counted from the start of each stage (3 units a stage at depth 20).
    identity = stream("identity", "full_preact", depth=20, zero_init_last=True)
    in_stage = np.tile(np.arange(1, 4), 3)
    scale = stream("scale", "full_preact", depth=20, zero_init_last=True)
    np.testing.assert_allclose(scale / identity, 0.5**in_stage, rtol=1e-3)  # lambda = 0.5 a unit
    np.testing.assert_array_equal(stream("none", "full_preact", depth=20, zero_init_last=True), 0.0)
    # He et al.'s dropout shortcut (unscaled mask): RMS sqrt(0.5) a unit, the attenuation the
    # paper describes; Keras' inverted dropout: sqrt(2) a unit, the stream grows instead.
    attenuated = stream("dropout", "full_preact", depth=20, zero_init_last=True) / identity
    inverted = stream("dropout", "full_preact", depth=20, zero_init_last=True, options={"inverted": True}) / identity
    # (Stage 1 only: later stages start from BN-ReLU of a stream the masks made sparse, whose
    # RMS after normalisation is no longer a product of the masks'.)
    first = slice(0, 3)
    np.testing.assert_allclose(attenuated[first], 0.5 ** (in_stage[first] / 2), rtol=0.15)
    np.testing.assert_allclose(inverted[first], 2.0 ** (in_stage[first] / 2), rtol=0.15)
    # Orthogonal after a ReLU (original placement): about half the energy lost a unit, so the
    # stream stays near the branch scale where the identity's grows.
    rotated = stream("orthogonal", "original", depth=56) / stream("identity", "original", depth=56)
    assert rotated[-1] < 1 / 2


@ONE_BACKEND  # four ResNet-56 fits; the mappings' training steps are checked on every backend elsewhere
def test_entangled_mappings_first_epoch_loss_stays_near_identity():
    """Digits, ResNet-56, original placement, option A: no entangled mapping's first-epoch
    loss exceeds 10x identity's (the raw constructions reached 1e29)."""
    data = load_digits().subset(train=512)
    x, y = data.normalize(data.x_train), data.y_train
    losses = {}
    for skip in ["identity", *ENTANGLED]:
        keras.utils.set_random_seed(0)
        model = zoo.get_model("resnet56_cifar", skip=skip, placement="original", downsample="pad",
                              input_shape=data.input_shape, num_classes=10)
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
        losses[skip] = history.history["loss"][0]
    assert all(np.isfinite(v) for v in losses.values()), losses
    for skip in ENTANGLED:
        assert losses[skip] <= 10 * losses["identity"], losses
