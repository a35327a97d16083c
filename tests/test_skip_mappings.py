"""SPEC section 2: each skip mapping's invariant, its options and its registry."""

import keras
import numpy as np
import pytest
from conftest import SKIP_CASES, SKIP_IDS, to_numpy

import zoo
from zoo.layers import skip as skip_module

C = 16


def built(name, channels=C, **options):
    layer = zoo.make_skip(name, options)
    layer.build((None, channels))
    return layer


def random_inputs(shape=(5, 3, 3, C), seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def test_registry_lists_every_spec_mapping():
    expected = {
        "identity", "scale", "gate_exclusive", "gate_shortcut", "conv1x1", "dropout",
        "orthogonal", "sparse", "correlation", "none",
    }
    assert expected <= set(zoo.list_skips())


def test_identity_is_exact():
    x = random_inputs()
    np.testing.assert_array_equal(to_numpy(built("identity")(x)), x)


def test_none_is_exact_zero():
    x = random_inputs()
    np.testing.assert_array_equal(to_numpy(built("none")(x)), np.zeros_like(x))


def test_scale_is_exact_and_scales_branch_only_when_asked():
    x, f = random_inputs(seed=1), random_inputs(seed=2)
    layer = built("scale", lambda_=0.25)
    mapped, branch = layer(x, f)
    np.testing.assert_array_equal(to_numpy(mapped), x * np.float32(0.25))
    np.testing.assert_array_equal(to_numpy(branch), f)
    mapped, branch = built("scale", lambda_=0.25, scale_branch=True)(x, f)
    np.testing.assert_array_equal(to_numpy(branch), f * np.float32(0.75))


@pytest.mark.parametrize("name", ["gate_exclusive", "gate_shortcut"])
def test_gate_bias_init_is_honoured_and_gate_in_open_unit_interval(name):
    layer = built(name, bias_init=-6.0)
    np.testing.assert_array_equal(to_numpy(layer.gate_bias), np.full((C,), -6.0, "float32"))
    x = random_inputs()
    g = to_numpy(layer.gate(x))
    assert np.all(g > 0) and np.all(g < 1)
    # W starts at 0 by default: at initialisation g = sigmoid(b_g) everywhere.
    np.testing.assert_array_equal(to_numpy(layer.gate_kernel), np.zeros((C, C), "float32"))
    np.testing.assert_allclose(g, 1 / (1 + np.exp(6.0)), rtol=1e-5)
    # After a change of W the gate depends on x and stays in (0, 1).
    layer.gate_kernel.assign(0.3 * np.random.default_rng(0).standard_normal((C, C)).astype("float32"))
    g = to_numpy(layer.gate(x))
    assert np.all(g > 0) and np.all(g < 1) and g.std() > 0


@pytest.mark.parametrize("name", ["gate_exclusive", "gate_shortcut"])
def test_gate_he_initialised_weights_as_in_the_paper(name):
    layer = zoo.make_skip(name, {"bias_init": -6.0, "kernel_initializer": "he_normal"})
    layer.build((None, 64))
    w = to_numpy(layer.gate_kernel)
    assert 0.7 < w.std() * np.sqrt(64 / 2) < 1.3  # He normal: std sqrt(2 / fan_in)
    np.testing.assert_array_equal(to_numpy(layer.gate_bias), np.full((64,), -6.0, "float32"))
    g = to_numpy(layer.gate(random_inputs((5, 64))))
    assert np.all(g > 0) and np.all(g < 1) and g.std() > 1e-3  # depends on x from the start
    rebuilt = type(layer).from_config(layer.get_config())
    assert type(rebuilt.kernel_initializer).__name__ == "HeNormal"


def test_gate_exclusive_scales_branch_by_g_and_shortcut_by_one_minus_g():
    layer = built("gate_exclusive", bias_init=0.0)  # g = 0.5 at init
    x, f = random_inputs(seed=1), random_inputs(seed=2)
    mapped, branch = layer(x, f)
    np.testing.assert_allclose(to_numpy(mapped), 0.5 * x, rtol=1e-6)
    np.testing.assert_allclose(to_numpy(branch), 0.5 * f, rtol=1e-6)
    mapped, branch = built("gate_shortcut", bias_init=0.0)(x, f)
    np.testing.assert_allclose(to_numpy(mapped), 0.5 * x, rtol=1e-6)
    np.testing.assert_array_equal(to_numpy(branch), f)


def test_conv1x1_keeps_shape_is_trainable_and_starts_at_the_identity():
    layer = built("conv1x1")
    x = random_inputs()
    assert tuple(layer(x).shape) == x.shape
    assert len(layer.trainable_weights) == 1
    np.testing.assert_array_equal(to_numpy(layer(x)), x)  # default init: W = I


def test_conv1x1_he_init_and_batch_norm_option():
    layer = zoo.make_skip("conv1x1", {"kernel_initializer": "he_normal", "norm": True})
    layer.build((None, 64))
    w = to_numpy(layer.kernel)
    assert 0.7 < w.std() * np.sqrt(64 / 2) < 1.3
    assert len(layer.trainable_weights) == 3  # W, BN gamma and beta
    x = 3.0 + 2.0 * random_inputs((64, 64))
    # Inference before any update: moving mean 0, variance 1, so BN(W x) = W x / sqrt(1 + eps).
    np.testing.assert_allclose(to_numpy(layer(x, training=False)), x @ w / np.sqrt(1 + 1e-5), rtol=1e-4, atol=1e-4)
    y = to_numpy(layer(x, training=True))  # BN on batch statistics: per channel mean 0, var 1
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.var(0), 1.0, atol=1e-2)
    rebuilt = type(layer).from_config(layer.get_config())
    assert rebuilt.norm and type(rebuilt.kernel_initializer).__name__ == "HeNormal"


def test_dropout_is_the_papers_attenuation_by_default():
    # He et al.: an unscaled Bernoulli mask in training, 0.5 x at inference; E[M(x)] = 0.5 x.
    layer = built("dropout", rate=0.5)
    x = random_inputs((200, C))
    np.testing.assert_allclose(to_numpy(layer(x, training=False)), 0.5 * x, rtol=1e-6)
    y = to_numpy(layer(x, training=True))
    kept = y != 0
    assert 0.45 < kept.mean() < 0.55
    np.testing.assert_array_equal(y[kept], x[kept])  # unscaled
    mean_multiplier = np.mean([to_numpy(layer(np.ones((50, C), "float32"), training=True)).mean() for _ in range(4)])
    assert abs(mean_multiplier - 0.5) < 0.03


def test_dropout_inverted_is_keras_dropout():
    layer = built("dropout", rate=0.5, inverted=True)
    x = random_inputs()
    np.testing.assert_array_equal(to_numpy(layer(x, training=False)), x)
    y = to_numpy(layer(x, training=True))
    assert np.mean(y == 0) > 0.3
    np.testing.assert_allclose(y[y != 0], 2 * x[y != 0], rtol=1e-6)


@pytest.mark.parametrize("mode", ["fixed", "learned"])
def test_orthogonal_is_an_isometry(mode):
    layer = built("orthogonal", mode=mode, seed=3)
    if mode == "learned":  # move away from Q = I so the test means something
        layer.cayley.assign(np.random.default_rng(0).standard_normal((C, C)).astype("float32"))
    q = to_numpy(layer.matrix()).astype("float64")
    np.testing.assert_allclose(np.linalg.svd(q, compute_uv=False), np.ones(C), atol=1e-5)
    np.testing.assert_allclose(q.T @ q, np.eye(C), atol=1e-5)
    x = random_inputs()
    y = to_numpy(layer(x))
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
    assert not np.allclose(q, np.eye(C))


def test_orthogonal_learned_starts_at_identity():
    layer = built("orthogonal", mode="learned")
    np.testing.assert_allclose(to_numpy(layer.matrix()), np.eye(C), atol=1e-7)


def test_orthogonal_fixed_depends_on_seed_only():
    a, b, c = (to_numpy(built("orthogonal", seed=s).matrix()) for s in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("trainable_values", [False, True])
def test_sparse_has_the_identity_spectrum_and_its_density(trainable_values):
    k = 3
    layer = built("sparse", k=k, seed=5, trainable_values=trainable_values)
    m = to_numpy(layer.matrix()).astype("float64")
    # M = P (I + N) P^T: undo the permutation and check unipotent upper-triangular structure.
    eig = np.linalg.eigvals(m)
    np.testing.assert_allclose(eig, np.ones(C), atol=1e-3)  # defective: eigvals is ill-conditioned
    assert np.allclose(np.linalg.det(m), 1.0, atol=1e-4)
    # Nilpotency of M - I is the exact statement of "every eigenvalue is 1".
    n = m - np.eye(C)
    np.testing.assert_allclose(np.linalg.matrix_power(n, C), np.zeros((C, C)), atol=1e-6)
    nonzeros_above = sum(min(k, C - 1 - i) for i in range(C))
    assert np.count_nonzero(m) == C + nonzeros_above
    assert abs(np.count_nonzero(m) / C**2 - (k + 1) / C) < k * (k + 1) / 2 / C**2 + 1e-12
    assert len(layer.trainable_weights) == (1 if trainable_values else 0)


def test_sparse_trainable_values_keep_the_pattern_under_updates():
    layer = built("sparse", k=2, trainable_values=True)
    layer.values.assign(np.random.default_rng(0).standard_normal((C, C)).astype("float32"))
    n = to_numpy(layer.matrix()).astype("float64") - np.eye(C)
    np.testing.assert_allclose(np.linalg.matrix_power(n, C), np.zeros((C, C)), atol=1e-4)


@pytest.mark.parametrize("skip, options", [("correlation", {"rho": 0.5, "depth": 9}), ("orthogonal", {}),
                                           ("sparse", {"k": 4})])
def test_matrix_mappings_hold_no_subnormal_numbers(skip, options):
    # ResNet-20's third stage: 64 channels, r = tanh(atanh(0.5) / 9) ~ 0.061, r^63 ~ 1e-77: the
    # float32 weight would hold hundreds of subnormal entries, slow operands on x86 CPUs (torch)
    m = to_numpy(built(skip, channels=64, **options).matrix())
    tiny = np.finfo(np.float32).tiny
    assert not np.any((m != 0) & (np.abs(m) < tiny))
    if skip == "correlation":  # what was zeroed is below float32's normal range, nothing else
        r = np.tanh(np.arctanh(0.5) / 9)
        assert np.count_nonzero(m) == np.count_nonzero(r ** np.abs(np.subtract.outer(np.arange(64), np.arange(64)))
                                                       >= tiny)
        np.testing.assert_allclose(np.diag(m), np.ones(64), atol=0)


@pytest.mark.parametrize("rho,block", [(0.5, None), (-0.7, None), (0.9, 4), (0.0, None)])
def test_correlation_is_symmetric_pd_unit_diagonal(rho, block):
    m = to_numpy(built("correlation", rho=rho, block=block, seed=2).matrix()).astype("float64")
    np.testing.assert_allclose(m, m.T, atol=0)
    np.testing.assert_allclose(np.diag(m), np.ones(C), atol=0)
    eig = np.linalg.eigvalsh(m)
    assert eig.min() > 0
    np.testing.assert_allclose(eig.mean(), 1.0, atol=1e-6)
    if block:
        # Block diagonal up to the permutation: each row has at most `block` nonzeros.
        assert np.count_nonzero(m, axis=1).max() <= block


def test_mapping_options_are_in_the_config_and_rebuild_bit_identically():
    for _, name, options in SKIP_CASES:
        a = zoo.make_skip(name, {**options, "seed": 7} if "seed" in zoo.layers.skip_option_names(name) else options)
        config = a.get_config()
        for key, value in options.items():
            assert config[key] == value, (name, key)
        b = type(a).from_config(config)
        x = random_inputs()
        a.build(x.shape)
        b.build(x.shape)
        for wa, wb in zip(a.weights, b.weights):
            if not wa.trainable:  # seeded matrices: identical by construction
                np.testing.assert_array_equal(to_numpy(wa), to_numpy(wb))


def test_unit_index_gives_each_unit_its_own_draw():
    a = zoo.make_skip("orthogonal", {"seed": 0}, index=0)
    b = zoo.make_skip("orthogonal", {"seed": 0}, index=1)
    assert (a.seed, a.index, b.seed, b.index) == (0, 0, 0, 1)
    a.build((None, C))
    b.build((None, C))
    assert not np.allclose(to_numpy(a.matrix()), to_numpy(b.matrix()))
    # The matrix of unit i with seed s is the matrix of a lone mapping seeded s + i.
    c = built("orthogonal", seed=1)
    np.testing.assert_array_equal(to_numpy(b.matrix()), to_numpy(c.matrix()))
    # A mapping without an index argument gets the index added to its seed.
    assert zoo.make_skip("dropout", {"seed": 3}, index=2).seed == 5
    with pytest.raises(ValueError, match="index"):  # the model sets it, not the user
        zoo.make_skip("sparse", {"index": 3})


def test_unknown_mapping_name_suggests_closest():
    with pytest.raises(zoo.UnknownNameError) as err:
        zoo.make_skip("orthogonl")
    assert "'orthogonal'" in str(err.value)
    assert "Valid skip mapping names" in str(err.value)
    with pytest.raises(ValueError):  # also a ValueError
        zoo.make_skip("sparce")


def test_unknown_option_names_the_valid_options():
    with pytest.raises(ValueError, match="rho"):
        zoo.make_skip("correlation", {"roh": 0.3})


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("correlation", {"rho": 1.0}, r"rho=1\.0.*\(-1\.0, 1\.0\)"),
        ("correlation", {"rho": -1.5}, r"rho=-1\.5"),
        ("correlation", {"block": 0}, r"block=0"),
        ("dropout", {"rate": -0.1}, r"rate=-0\.1.*\[0\.0, 1\.0\)"),
        ("dropout", {"rate": 1.0}, r"rate=1\.0"),
        ("sparse", {"k": 0}, r"k=0"),
        ("sparse", {"sigma": -1.0}, r"sigma=-1\.0"),
        ("orthogonal", {"mode": "cayley"}, r"mode='cayley'.*'fixed', 'learned'"),
        ("orthogonal", {"seed": -1}, r"seed=-1"),
    ],
)
def test_invalid_options_raise_value_error_with_received_and_allowed(name, options, match):
    with pytest.raises(ValueError, match=match):
        zoo.make_skip(name, options)


def test_sparse_k_at_least_channels_is_refused_at_build():
    layer = zoo.make_skip("sparse", {"k": C})
    with pytest.raises(ValueError, match=rf"k={C} for {C} channels.*1 <= k < channels"):
        layer.build((None, C))


def test_mappings_act_on_the_last_axis_of_any_rank():
    for _, name, options in SKIP_CASES:
        for shape in [(4, C), (4, 7, C), (2, 3, 3, C)]:
            layer = zoo.make_skip(name, options)
            y = layer(random_inputs(shape))
            assert tuple(y.shape) == shape, (name, shape)


def test_register_skip_rejects_non_layers():
    with pytest.raises(TypeError):
        zoo.register_skip("bad", object)


def test_skip_module_registry_is_the_public_one():
    assert skip_module.list_skips() == zoo.list_skips()


# === The residual sum as one kernel (zoo.layers.fused) ===
SUM_CASES = {
    "gate_exclusive": {"bias_init": 0.5, "kernel_initializer": "he_normal"},
    "gate_shortcut": {"bias_init": 0.5, "kernel_initializer": "he_normal"},
    "identity": {},
    "orthogonal": {},
    "orthogonal_learned": {"mode": "learned"},
    "sparse": {"trainable_values": True},
    "correlation": {},
    "conv1x1": {"kernel_initializer": "he_normal"},
    "conv1x1_norm": {"kernel_initializer": "he_normal", "norm": True},
    # a blend of two linear mappings (one matmul by the blended matrix; torch: one addmm) and
    # of a linear and a gate (both mappings applied, then mixed)
    "blend": {"start": "identity", "end": "orthogonal", "steps": 10},
    "blend_gate": {"start": "identity", "end": "gate_exclusive", "end_options": {"bias_init": 0.5}, "steps": 10},
}


LINEAR_SUMS = {"orthogonal", "orthogonal_learned", "sparse", "correlation", "conv1x1", "blend"}


@pytest.mark.parametrize("case", SUM_CASES)
def test_residual_sum_is_the_calls_mapping_plus_its_branch(case, monkeypatch):
    """`add(x, F)` (the kernel a unit computes: on torch one `addmm` for the mappings linear in
    the channels) = M(x) + the branch as `call` scales it, in inference and in training."""
    from zoo.layers import fused

    sums = []
    linear_sum = fused.linear_sum
    monkeypatch.setattr(fused, "linear_sum", lambda *t: sums.append(1) or linear_sum(*t))
    x, f = random_inputs(seed=1), random_inputs(seed=2)
    layer = zoo.make_skip(case.split("_")[0] if case.startswith(("orthogonal", "conv1x1", "blend")) else case,
                          SUM_CASES[case])
    layer.build(x.shape)
    blend = case.startswith("blend")
    for training in (False, True):  # conv1x1_norm: batch statistics in training
        if blend:
            layer.count.assign(3.0)  # partway: alpha = 0.3
        mapped, branch = layer(x, f, training=training)
        expected = to_numpy(mapped) + to_numpy(branch)
        if blend:
            layer.count.assign(3.0)
        np.testing.assert_allclose(to_numpy(layer.add(x, f, training=training)), expected, rtol=1e-5, atol=1e-5)
        if blend:  # a training call counts one step, as `call` does
            assert float(to_numpy(layer.count)) == (4.0 if training else 3.0)
    assert len(sums) == (2 if keras.backend.backend() == "torch" and case in LINEAR_SUMS else 0)


def _one_step_weights(skip, x, y, plain, monkeypatch, options=None):
    """Every weight of a tiny ResNet after one SGD step, its residual sums fused (the default)
    or written as plain ops (`plain`), both traced and compiled by Keras' own step."""
    from zoo.layers import fused

    with monkeypatch.context() as patch:
        if plain:
            patch.setattr(fused, "add", lambda a, b: a + b)
            patch.setattr(fused, "linear_sum", lambda x, k, b: keras.ops.matmul(x, k) + b)
            patch.setattr(fused, "gated_sum", lambda x, k, b, br, scales, training=False:
                          fused._gated(x, keras.ops.matmul(x, k), b, br, scales))
        keras.utils.set_random_seed(0)
        if options is None:
            options = {"bias_init": 0.0, "kernel_initializer": "he_normal"}
        model = zoo.ResNet(stage_depths=(2, 1), stage_widths=(4, 8), input_shape=(8, 8, 3), num_classes=3,
                           skip=skip, skip_options=options)
        model.compile(optimizer=keras.optimizers.SGD(0.5),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.train_on_batch(x, y)
        return {w.path: to_numpy(w) for w in model.weights}


@pytest.mark.parametrize("skip", ["gate_exclusive", "gate_shortcut"])
def test_fused_gate_trains_as_its_formula_does(skip, monkeypatch):
    """The gates' fused sum and its own backward pass (jax on a CPU) give the step that the
    formula differentiated by the backend gives: every weight after one step, the gate's too."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, 6).astype("int32")
    fused_step = _one_step_weights(skip, x, y, False, monkeypatch)
    plain_step = _one_step_weights(skip, x, y, True, monkeypatch)
    assert fused_step.keys() == plain_step.keys()
    moved = 0
    for path, value in plain_step.items():
        np.testing.assert_allclose(fused_step[path], value, rtol=1e-4, atol=1e-6, err_msg=path)
        moved += "gate" in path
    assert moved == 6  # 3 units, a kernel and a bias each


@pytest.mark.parametrize("skip, options, trained", [
    ("conv1x1", {"kernel_initializer": "he_normal"}, "skip/kernel"),
    ("orthogonal", {"mode": "learned"}, "cayley"),
    ("blend", {"start": "orthogonal", "start_options": {"mode": "learned"}, "end": "identity", "steps": 2}, "cayley"),
])
def test_linear_sum_trains_as_matmul_plus_add(skip, options, trained, monkeypatch):
    """The sums of the mappings linear in the channels (torch: one `addmm`) give the step that
    a matmul and an add give, the mapping's own trained weights included."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, 6).astype("int32")
    fused_step = _one_step_weights(skip, x, y, False, monkeypatch, options)
    plain_step = _one_step_weights(skip, x, y, True, monkeypatch, options)
    assert fused_step.keys() == plain_step.keys()
    moved = 0
    for path, value in plain_step.items():
        np.testing.assert_allclose(fused_step[path], value, rtol=1e-4, atol=1e-6, err_msg=path)
        moved += trained in path and not np.allclose(value, 0.0)
    assert moved == 3, moved  # 3 units' mapping weights trained


def test_gate_model_has_forward_mode_derivatives_in_inference():
    """Analysis takes jvps of models in inference: the gates' sum there is differentiable in
    both modes (its training backward pass has no forward mode), and <u, J v> = <J^T u, v>."""
    from zoo.analysis import autodiff

    model = zoo.ResNet(stage_depths=(1, 1), stage_widths=(4, 8), input_shape=(8, 8, 3), num_classes=3,
                       skip="gate_exclusive", skip_options={"bias_init": 0.0, "kernel_initializer": "he_normal"})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 8, 3)).astype("float32")
    v = rng.standard_normal(x.shape).astype("float32")
    u = rng.standard_normal((2, 3)).astype("float32")
    fn = lambda t: model(t, training=False)  # noqa: E731
    _, jv = autodiff.jvp(fn, x, v)
    _, ju = autodiff.vjp(fn, x, u)
    np.testing.assert_allclose(np.sum(u * jv), np.sum(ju * v), rtol=1e-4)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the fusion boundary is XLA:CPU's (jax)")
def test_residual_sums_are_conditionals_on_jax_unless_inside_one():
    """On jax each sum is traced inside a conditional of its own (a boundary XLA does not fuse
    across), the gates' training sum with its own backward pass; inside a unit's DropPathFreeze
    arm, a conditional already, it is a plain sum."""
    import jax

    from zoo.layers import fused

    x, bias = np.ones((2, 3, 4), "float32"), np.zeros((4,), "float32")

    def conditionals(fn, *args):  # a new function each time: jax caches traces by function
        return str(jax.make_jaxpr(lambda *t: fn(*t))(*args)).count("cond[")

    plain = conditionals(lambda a, b: a + b, x, x)
    assert conditionals(fused.add, x, x) > plain
    with fused.inside_conditional():
        assert conditionals(fused.add, x, x) == plain
    kernel = np.eye(4, dtype="float32")
    gated = jax.make_jaxpr(lambda *t: fused.gated_sum(*t, True, training=True))(x, kernel, bias, x)
    assert "custom_vjp" in str(gated) and str(gated).count("cond[") > plain


def test_channel_matmul_is_the_matmul_its_kernel_gradient_a_2d_product():
    """`fused.channel_matmul` (the gates' 1x1 conv, conv1x1's) equals x @ kernel with its
    gradients, on 2-D to 4-D inputs; on jax the kernel's gradient is one 2-D product of the
    (rows, C) views, not a contraction over batch and space."""
    from zoo.layers import fused
    from zoo.analysis import autodiff

    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((4, 5)).astype("float32")
    for shape in ((6, 4), (2, 3, 4), (2, 3, 3, 4)):
        x = rng.standard_normal(shape).astype("float32")
        np.testing.assert_allclose(keras.ops.convert_to_numpy(fused.channel_matmul(x, kernel)), x @ kernel,
                                   rtol=1e-5, atol=1e-5)
        u = rng.standard_normal(shape[:-1] + (5,)).astype("float32")
        _, dx = autodiff.vjp(lambda t: fused.channel_matmul(t, kernel), x, u)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(dx), u @ kernel.T, rtol=1e-5, atol=1e-5)
        _, dk = autodiff.vjp(lambda k: fused.channel_matmul(x, k), kernel, u)
        expected = x.reshape(-1, 4).T @ u.reshape(-1, 5)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(dk), expected, rtol=1e-4, atol=1e-4)
    if keras.backend.backend() == "jax":
        import jax

        x = rng.standard_normal((2, 3, 3, 4)).astype("float32")
        grad = jax.make_jaxpr(jax.grad(lambda k: fused.channel_matmul(x, k).sum()))(kernel)
        dots = [e for e in grad.jaxpr.eqns if e.primitive.name == "dot_general"]
        assert dots and all(v.aval.ndim == 2 for e in dots for v in e.invars), grad
