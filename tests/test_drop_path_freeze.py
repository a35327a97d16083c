"""SPEC section 5: the DropPathFreeze step, exact on every backend."""

import keras
import numpy as np
import pytest
from conftest import tiny_resnet, to_numpy

import zoo
from zoo.training import DropPathFreeze

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def batch(seed=0, n=16):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 8, 8, 3)).astype("float32"), rng.integers(0, 3, n).astype("int32")


def make(optimizer, rate=0.5, run_eagerly=True, **kwargs):
    """A trainer on a 4-unit ResNet. Eager unless a test is about the compiled step: for a
    model this small the compile costs more than the steps."""
    keras.utils.set_random_seed(0)
    model = tiny_resnet(stage_depths=(2, 2), drop_path_rate=rate)
    trainer = DropPathFreeze(model, seed=kwargs.pop("seed", 3), **kwargs)
    trainer.compile(optimizer=optimizer, loss=LOSS, run_eagerly=run_eagerly)
    return model, trainer


def snapshot(trainer):
    """Every guarded variable (model variables and optimizer slots) with its owning unit."""
    return [(v.path, owner, to_numpy(v).copy()) for v, owner in trainer.guarded_variables()]


def changed_owners(before, trainer):
    after = snapshot(trainer)
    return {owner for (_, owner, a), (_, _, b) in zip(before, after) if not np.array_equal(a, b)}


OPTIMIZERS = {
    "sgd_momentum_wd": lambda: keras.optimizers.SGD(0.05, momentum=0.9, weight_decay=1e-2),
    "adamw": lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.1),
}


def check_exact_steps(model, trainer, steps):
    """Run `steps` steps; after each, the units it froze (and in B steps the rest of the model)
    must be bit-identical, optimizer slots included. Returns the kinds of step seen."""
    num_units = len(model.residual_units)
    outside = num_units
    seen_kinds = set()
    for step in range(1, steps + 1):
        before = snapshot(trainer)
        trainer.train_on_batch(*batch(step))
        kind = int(to_numpy(trainer.last_kind))
        kept = to_numpy(trainer.last_mask)  # after B: the A mask it reused
        changed = changed_owners(before, trainer)
        dropped = {i for i in range(num_units) if kept[i] == 0}
        if kind == 0:  # A: dropped units untouched; everything else trains
            assert not (changed & dropped), (step, changed, dropped)
            assert outside in changed
        else:  # B: only the units dropped in the preceding A change
            assert dropped and changed <= dropped and outside not in changed, (step, changed, dropped)
            assert changed, "a B step must train the dropped units"
        seen_kinds.add(kind)
        if dropped:
            seen_kinds.add(("dropped", kind))
    return seen_kinds


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=list(OPTIMIZERS))
def test_freeze_is_exact_for_a_and_b_steps(opt):
    model, trainer = make(OPTIMIZERS[opt](), run_eagerly=False)
    trainer.train_on_batch(*batch())  # builds the optimizer slots; from here on every value is checked
    seen_kinds = check_exact_steps(model, trainer, 9)
    assert {0, 1} <= seen_kinds and ("dropped", 0) in seen_kinds


def test_freeze_is_exact_under_mixed_precision():
    """A model computing in bfloat16 (float32 variables): the same guarantees."""
    keras.utils.set_random_seed(0)
    model = tiny_resnet(stage_depths=(2, 2), drop_path_rate=0.5, dtype="mixed_bfloat16")
    trainer = DropPathFreeze(model, seed=3)
    trainer.compile(optimizer=OPTIMIZERS["sgd_momentum_wd"](), loss=LOSS, run_eagerly=False)
    trainer.train_on_batch(*batch())
    assert {v.dtype for v, _ in trainer.guarded_variables() if v.trainable} == {"float32"}
    seen_kinds = check_exact_steps(model, trainer, 9)
    assert 1 in seen_kinds and ("dropped", 0) in seen_kinds


def test_a_new_optimizer_is_guarded_after_compiling_again():
    """`compile` again with a new optimizer (a second phase of a run): its slots are guarded
    from its first step on, and the steps stay exact. (Until 2026-12-06 the guarded list stayed
    the first optimizer's: on jax and tensorflow the frozen units' new momentum moved.)"""
    model, trainer = make(OPTIMIZERS["sgd_momentum_wd"](), run_eagerly=False)
    trainer.train_on_batch(*batch())
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=LOSS, run_eagerly=False)
    trainer.train_on_batch(*batch(20))  # builds the new optimizer's slots
    guarded = {id(v) for v, _ in trainer.guarded_variables()}
    slots = [v for v in trainer.optimizer.variables if v.name.endswith("_momentum")]
    assert len(slots) == len(trainer.trainable_variables) and all(id(v) in guarded for v in slots)
    seen_kinds = check_exact_steps(model, trainer, 9)
    assert 1 in seen_kinds and ("dropped", 0) in seen_kinds


@pytest.mark.parametrize("placement", ["original", "full_preact"])
def test_skipping_dropped_branches_is_the_same_step(placement):
    """A unit dropped for the whole batch computes M(s) alone (a conditional per unit inside the
    compiled step on jax and tensorflow, a Python branch on torch, where the frozen variables
    also leave autograd): the weights, optimizer slots and BatchNorm statistics after A and B
    steps are those of the step that computes every branch and gradient and multiplies the
    dropped branches by 0."""
    def train(skip_dropped):
        keras.utils.set_random_seed(0)
        model = tiny_resnet(stage_depths=(2, 2), drop_path_rate=0.6, placement=placement, shared_first_preact=True)
        trainer = DropPathFreeze(model, seed=3, skip_dropped=skip_dropped)
        trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, weight_decay=1e-2), loss=LOSS)
        dropped, trimmed = 0, 0
        trainable = {id(v) for v in trainer.trainable_variables}
        for step in range(6):
            trainer.train_on_batch(*batch(step))
            dropped += int(np.sum(to_numpy(trainer.last_mask) == 0))
            if keras.backend.backend() == "torch" and skip_dropped and int(to_numpy(trainer.last_kind)) == 1:
                # A B step: outside the dropped units no gradient was computed, and autograd is back on.
                outside = [v for v, owner in trainer.guarded_variables() if owner == len(model.residual_units)
                           and id(v) in trainable]
                assert all(v.value.grad is None and v.value.requires_grad for v in outside)
                trimmed += 1
        assert trimmed or keras.backend.backend() != "torch" or not skip_dropped
        return [to_numpy(v) for v in trainer.variables], dropped

    (skipped, dropped), (computed, _), (default, _) = train(True), train(False), train(None)
    assert dropped > 2  # steps with dropped units were taken
    for a, b in zip(skipped + default, computed + computed):
        if keras.backend.backend() == "torch":  # eager: the same kernels on the same values, bit for bit
            np.testing.assert_array_equal(a, b)
        else:  # a conditional in the compiled graph changes how XLA / grappler fuse the rest
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's conditionals")
def test_tensorflow_conditionals_pass_plain_intermediates(monkeypatch):
    """On tensorflow the units' conditionals hand their gradients the forward intermediates as
    plain tensors (placeholders in the arms that did not run), not wrapped in optionals: fewer
    ops a step in TensorFlow's graph executor. Without the switch TensorFlow wraps them: the
    check tells the two apart. (That the step's values do not change is
    test_skipping_dropped_branches_is_the_same_step's.)"""
    import contextlib

    import tensorflow as tf

    from zoo.training import drop_path_freeze

    def op_types(trainer):
        x, y = batch()
        graph = tf.function(trainer.train_step).get_concrete_function((tf.constant(x), tf.constant(y))).graph
        library = graph.as_graph_def().library.function
        return {node.op for function in library for node in function.node_def}

    _, trainer = make(keras.optimizers.SGD(0.1), run_eagerly=False)
    plain = op_types(trainer)
    assert "FakeParam" in plain and not {"OptionalFromValue", "OptionalNone"} & plain
    monkeypatch.setattr(drop_path_freeze, "_plain_intermediates", contextlib.nullcontext)
    _, trainer = make(keras.optimizers.SGD(0.1), run_eagerly=False)
    assert "OptionalFromValue" in op_types(trainer)


def test_a_unit_skips_its_dropped_branch_only_where_it_can_give_the_shortcut_alone():
    """A family that overrides `branch_and_shortcut` (s is not x) must also give `shortcut_only`
    for its dropped branches to be skipped; a recurrent cell (its own residual add) never is."""
    from zoo.layers.residual import ResidualUnit
    from zoo.layers.transformer import AttentionUnit, MLPUnit
    from zoo.layers.unit import BaseResidualUnit, _can_skip_branch
    from zoo.models.mlp import ResidualMLPUnit
    from zoo.models.rnn import RecurrentResidualUnit, ResidualRNNCell

    class OwnShortcut(BaseResidualUnit):
        def branch_and_shortcut(self, x, training=None):
            return self.branch(x, training=training), 2 * x

    class OwnShortcutGiven(OwnShortcut):
        def shortcut_only(self, x, training=None):
            return 2 * x

    assert not _can_skip_branch(OwnShortcut) and _can_skip_branch(OwnShortcutGiven)
    assert all(map(_can_skip_branch, (ResidualUnit, AttentionUnit, MLPUnit, ResidualMLPUnit, RecurrentResidualUnit)))
    assert not _can_skip_branch(ResidualRNNCell)


def test_a_unit_at_rate_zero_has_no_conditional_for_dropping():
    """The linear schedule's first unit (rate 0) is never dropped: with batch masks the step gives
    it the Python multiplier 1, so it has no conditional for dropping its branch; the other units
    get the step's multipliers (tensors inside a compiled step). Its values: the exactness tests."""
    model, trainer = make(keras.optimizers.SGD(0.05))
    units = model.residual_units
    assert units[0].drop_path.rate == 0.0 and all(u.drop_path.rate > 0 for u in units[1:])
    for granularity, first_is_python in (("batch", True), ("sample", False)):
        trainer.granularity = granularity
        trainer.plan_step(16)
        try:
            first = units[0].drop_path._forced[0]
            assert isinstance(first, float) == first_is_python, (granularity, first)
            if first_is_python:
                assert first == 1.0 and units[0].drop_path.forced_batch_multiplier() == 1.0
            if keras.backend.backend() != "torch":  # eager torch: every multiplier a Python number
                assert not any(isinstance(u.drop_path._forced[0], float) for u in units[1:])
        finally:
            trainer.release()
    assert all(u.drop_path._forced is None for u in units)


def test_b_step_reuses_the_mask_of_its_a_step():
    model, trainer = make(keras.optimizers.SGD(0.05))
    masks = []
    for step in range(8):
        trainer.train_on_batch(*batch(step))
        masks.append((int(to_numpy(trainer.last_kind)), to_numpy(trainer.last_mask).copy()))
    for (kind_a, mask_a), (kind_b, mask_b) in zip(masks, masks[1:]):
        if kind_b == 1:
            assert kind_a == 0
            np.testing.assert_array_equal(mask_a, mask_b)


def a_masks(seed, steps=8, train=False):
    """The masks of `steps` A steps. Drawn as the step draws them (`plan_step`) unless `train`:
    the real steps' forward and backward passes cost 20 s eagerly on jax and show nothing more
    about the draw, which one short run of real steps ties to it (below)."""
    _, trainer = make(keras.optimizers.SGD(0.01), seed=seed, freeze_every=0)
    out = []
    for step in range(steps):
        if train:
            trainer.train_on_batch(*batch(step))
        else:
            trainer.plan_step(16)
            trainer.release()
        out.append(to_numpy(trainer.last_mask).copy())
    return np.stack(out)


def test_masks_change_across_steps_and_repeat_with_the_seed():
    first, again, other = a_masks(5), a_masks(5), a_masks(6)
    np.testing.assert_array_equal(first, again)
    assert len({m.tobytes() for m in first}) > 3
    assert not np.array_equal(first, other)
    # The first unit has rate 0 in the linear schedule: never dropped.
    assert np.all(first[:, 0] == 1)
    # the training step draws the same masks, and advances the generator alike
    np.testing.assert_array_equal(a_masks(5, steps=2, train=True), first[:2])


def test_freeze_every_k_runs_b_after_every_kth_a():
    _, trainer = make(keras.optimizers.SGD(0.01), rate=0.9, freeze_every=2)
    kinds = []
    for step in range(9):
        trainer.train_on_batch(*batch(step))
        kinds.append(int(to_numpy(trainer.last_kind)))
    # Schedule A A B A A B ...; a B whose A dropped nothing runs as an A (rate 0.9: rare).
    assert [k for i, k in enumerate(kinds) if i % 3 != 2] == [0] * 6
    assert sum(kinds) >= 2


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="torch runs the step eagerly: nothing is traced")
def test_the_step_compiles_once_over_20_steps():
    _, trainer = make(keras.optimizers.SGD(0.05, momentum=0.9), run_eagerly=False)
    x = np.concatenate([batch(i)[0] for i in range(20)])
    y = np.concatenate([batch(i)[1] for i in range(20)])
    trainer.fit(x[:32], y[:32], batch_size=16, epochs=1, verbose=0, shuffle=False)
    traces_after_warmup = trainer.trace_count
    trainer.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)  # 20 more steps, A and B
    assert trainer.trace_count == traces_after_warmup
    # TensorFlow traces a step twice on its first call when the optimizer creates variables;
    # jax on a CPU traces its three kinds of step on the first (kind_dispatched_step)
    assert traces_after_warmup <= (3 if getattr(trainer, "dispatches_kinds", lambda: False)() else 2)


@pytest.mark.xfail(
    keras.backend.backend() == "torch",
    reason="on torch (2.13 CPU) the plain Keras step itself is not reproducible: two plain models "
    "with copied weights, fitted alike in one process, end up to 6e-3 apart after these 4 steps "
    "(measured 2026-12-03); the cause (a torch CPU kernel or Keras' torch trainer) is open",
    strict=False,
)
def test_rate_zero_matches_the_plain_keras_step():
    x = np.concatenate([batch(i)[0] for i in range(4)])
    y = np.concatenate([batch(i)[1] for i in range(4)])
    model, trainer = make(keras.optimizers.SGD(0.05, momentum=0.9, weight_decay=1e-3), rate=0.0)
    plain = tiny_resnet(stage_depths=(2, 2))
    # Both start from the same values, copied: the claim is about the step, not about how
    # many random draws other tests made before this one in the same process.
    for a, b in zip(plain.weights, model.weights):
        a.assign(to_numpy(b))
    plain.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, weight_decay=1e-3), loss=LOSS)
    plain.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    trainer.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(plain.weights, model.weights):
        np.testing.assert_allclose(to_numpy(b), to_numpy(a), atol=1e-6, err_msg=a.path)


def test_sample_granularity_trains_dropped_units_on_their_samples():
    model, trainer = make(keras.optimizers.SGD(0.05, momentum=0.9, weight_decay=1e-2), granularity="sample")
    trainer.train_on_batch(*batch(0))
    trainable = {id(v) for v in trainer.trainable_variables}
    losses, b_steps = [], 0
    for step in range(1, 6):
        before = snapshot(trainer)
        losses.append(float(trainer.train_on_batch(*batch(step % 2))))
        changed = changed_owners(before, trainer)
        if int(to_numpy(trainer.last_kind)) == 1:
            b_steps += 1
            assert len(model.residual_units) not in changed  # stem and head frozen in B
            assert 0 not in changed  # the first unit (rate 0) is never dropped
            if keras.backend.backend() == "torch":
                # eager torch: the frozen variables left autograd for the step (no gradient
                # computed for them) and are back in it after
                frozen = [v for v, owner in trainer.guarded_variables() if owner not in changed
                          and id(v) in trainable]
                assert frozen and all(v.value.grad is None and v.value.requires_grad for v in frozen)
    assert b_steps and np.all(np.isfinite(losses))


def test_bad_arguments_are_refused():
    model = tiny_resnet(drop_path_rate=0.1)
    with pytest.raises(ValueError, match=r"granularity='unit'"):
        DropPathFreeze(model, granularity="unit")
    with pytest.raises(ValueError, match=r"freeze_every=-1"):
        DropPathFreeze(model, freeze_every=-1)
    with pytest.raises(ValueError, match="residual_units"):
        DropPathFreeze(keras.Sequential([keras.layers.Dense(2)]))


def test_inference_is_the_wrapped_model():
    model, trainer = make(keras.optimizers.SGD(0.01))
    x, _ = batch()
    np.testing.assert_array_equal(to_numpy(trainer(x)), to_numpy(model(x)))


def test_model_checkpoint_and_backup_and_restore_work_inside_fit(tmp_path):
    """Keras' own checkpoint callbacks take the trainer as they take any model (#14)."""
    x, y = batch(n=32)
    model, trainer = make(keras.optimizers.SGD(0.05, momentum=0.9), run_eagerly=False)
    trainer(x[:2])  # BackupAndRestore wants a built model, as for any subclassed Keras model
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(tmp_path / "last.keras")),
        keras.callbacks.ModelCheckpoint(str(tmp_path / "last.weights.h5"), save_weights_only=True),
        keras.callbacks.BackupAndRestore(str(tmp_path / "backup")),
    ]
    trainer.fit(x, y, batch_size=16, epochs=2, callbacks=callbacks, verbose=0)
    loaded = keras.saving.load_model(tmp_path / "last.keras")
    assert isinstance(loaded, DropPathFreeze) and loaded.seed == 3 and type(loaded.model) is type(model)
    np.testing.assert_allclose(to_numpy(loaded.model(x)), to_numpy(model(x)), atol=1e-6)
    _, fresh = make(keras.optimizers.SGD(0.05, momentum=0.9))
    fresh(x[:2])  # built by its first call, as any Keras model
    fresh.load_weights(tmp_path / "last.weights.h5")
    np.testing.assert_allclose(to_numpy(fresh(x)), to_numpy(model(x)), atol=1e-6)

    # BackupAndRestore: a fit interrupted after its first epoch resumes at the second
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                raise RuntimeError("interrupted")

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup2"))
    _, run = make(keras.optimizers.SGD(0.05, momentum=0.9))
    run(x[:2])
    with pytest.raises(RuntimeError, match="interrupted"):
        run.fit(x, y, batch_size=16, epochs=2, callbacks=[backup, Interrupt()], verbose=0)
    _, resumed = make(keras.optimizers.SGD(0.05, momentum=0.9))
    resumed(x[:2])
    history = resumed.fit(x, y, batch_size=16, epochs=2, callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup2"))],
                          verbose=0)
    assert history.epoch == [1]


CONVS = [  # (size, kernel, stride, padding, dilation)
    (8, 3, 1, "same", 1),
    (8, 3, 2, ((1, 1), (1, 1)), 1),  # SymmetricConv2D's explicit padding
    (9, 3, 2, "same", 1),
    (8, 1, 2, "valid", 1),  # a projection shortcut: the last row is never read
    (9, 3, 1, "same", 2),
    (8, 7, 2, ((3, 3), (3, 3)), 1),  # an ImageNet stem
]


def _conv_gradients(conv, x, w, dy):
    """(dx, dw) of sum(conv(x, w) * dy), by the backend's own autodiff."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.vjp(conv, x, w)[1](dy)
    import tensorflow as tf

    x, w = tf.constant(x), tf.constant(w)
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        out = tf.reduce_sum(conv(x, w) * dy)
    return tape.gradient(out, [x, w])


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="eager torch skips gradients by requires_grad")
@pytest.mark.parametrize("xla", [True, False], ids=["xla", "graph"])
@pytest.mark.parametrize("size,kernel,stride,padding,dilation", CONVS)
def test_gated_conv_gives_the_backends_own_gradients_and_skips_what_the_plan_does_not_need(
        size, kernel, stride, padding, dilation, xla):
    if not xla and keras.backend.backend() == "jax":
        pytest.skip("jax always compiles with XLA")
    from zoo.layers import grad_plan

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, size, size, 3)).astype("float32")
    w = rng.standard_normal((kernel, kernel, 3, 4)).astype("float32")
    pairs = padding if not isinstance(padding, str) else None
    strides, dilations = (stride, stride), (dilation, dilation)

    def reference(x, w):
        if pairs:
            x = keras.ops.pad(x, [[0, 0], *pairs, [0, 0]])
        return keras.ops.conv(x, w, strides=stride, padding="valid" if pairs else padding, dilation_rate=dilation)

    def gated(flags):
        return lambda x, w: grad_plan.gated_conv(x, w, (*flags, xla), strides, padding, dilations)

    y = to_numpy(reference(x, w))
    np.testing.assert_allclose(to_numpy(gated((True, True))(x, w)), y, rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype("float32")
    want = [to_numpy(g) for g in _conv_gradients(reference, x, w, dy)]
    # (weights, inputs): Python bools (True: known when tracing, no conditional) and tensors
    # (decided in the step: a conditional)
    both = [(w_, i_) for w_ in (True, False) for i_ in (True, False)]
    tensors = [tuple(keras.ops.convert_to_tensor(f) for f in flags) for flags in both]
    for flags, plan in zip(both + both, both + tensors):
        got = [to_numpy(g) for g in _conv_gradients(gated(plan), x, w, dy)]
        for g, ref, needed in zip(got, [want[0], want[1]], (flags[1], flags[0])):
            if needed and keras.backend.backend() == "jax":  # the same convolutions as jax's own rule
                np.testing.assert_array_equal(g, ref)
            elif needed:
                np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-4)
            else:
                np.testing.assert_array_equal(g, np.zeros_like(ref))


def test_the_compiled_step_plans_gradients_where_it_skips(monkeypatch):
    """jax and tensorflow: the skipping step's convs run under its gradient plan (the weight
    and input gradients only where the step needs them); torch leaves frozen variables out of
    autograd instead; the per-sample step plans nothing."""
    from zoo.layers import grad_plan

    calls = []
    gated_conv = grad_plan.gated_conv
    monkeypatch.setattr(grad_plan, "gated_conv", lambda x, w, plan, *a: calls.append(plan) or gated_conv(x, w, plan, *a))
    for granularity, planned in (("batch", keras.backend.backend() != "torch"), ("sample", False)):
        calls.clear()
        _, trainer = make(keras.optimizers.SGD(0.1), run_eagerly=False, granularity=granularity)
        trainer.train_on_batch(*batch())
        assert bool(calls) == planned, (granularity, len(calls))
        if planned:
            # a unit's arm that computes everything runs only where the step needs its input's
            # gradient: there its convs know it when tracing (no conditional on it)
            assert any(plan[1] is True for plan in calls) and not all(plan[1] is True for plan in calls)
        assert all(getattr(u, "_gradient_plan", None) is None for u in trainer.residual_units)  # released


@pytest.mark.parametrize("downsample", ["projection", "pad"])
def test_the_skipping_step_trains_inside_fit(downsample):
    """`fit` (on TensorFlow the graph executor, without XLA by default on a CPU) runs the
    skipping step with its gradient plan, projection or padded shortcuts; the trained model
    predicts finite values. (tests/test_recipes.py trains through the recipe, whose data
    pipeline once left a tensor the custom conv gradient read unfed: zoo.layers.grad_plan.)"""
    keras.utils.set_random_seed(0)
    model = zoo.get_model("resnet20_cifar", depth=8, skip="orthogonal", drop_path_rate=0.3, downsample=downsample,
                          input_shape=(8, 8, 3), num_classes=3)
    trainer = DropPathFreeze(model, seed=3)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=LOSS)
    x, y = batch(n=32)
    history = trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert np.isfinite(to_numpy(model.predict(x, verbose=0))).all()


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="jax's conditional arms and jax.checkpoint")
def test_unit_arms_recompute_what_is_not_a_product_in_their_backward_pass_on_jax():
    """On jax a unit's arms are rematerialised but for their products: the backward arm
    computes the elementwise values again (tanh here) instead of reading them from the forward
    arm's outputs, and the gradient is the one without rematerialisation."""
    import jax
    import jax.numpy as jnp

    from zoo.layers.unit import _first_taken

    keras.utils.set_random_seed(0)
    dense = keras.layers.Dense(4)
    dense.build((2, 4))
    x = np.random.default_rng(0).standard_normal((2, 4)).astype("float32")

    def loss(x):
        out = _first_taken([x[0, 0] > 5.0], [lambda: x * 0.0, lambda: jnp.tanh(dense(x))], dense.variables)
        return jnp.sum(out**2)

    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(x))
    assert jaxpr.count("tanh") >= 2, jaxpr  # once forward, once again in the backward arm
    expected = jax.grad(lambda x: jnp.sum(jnp.tanh(dense(x)) ** 2))(x)
    np.testing.assert_allclose(np.asarray(jax.grad(loss)(x)), np.asarray(expected), rtol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="jax on a CPU: one compiled step per kind")
def test_jax_fit_runs_the_compiled_step_chosen_for_each_mask_before_it(monkeypatch):
    """On jax on a CPU `fit` runs one compiled step per kind of step: "computing" (every branch,
    no conditional, no gradient plan) for A steps dropping fewer than two units (a small
    model), "dropping" (dropped branches skipped, every gradient: its convs' plans are known
    when tracing, no conditional) for A steps dropping two or more, "freezing" (planned
    gradients) for B steps. Each is traced once, on the first step, and the right one runs
    before each step."""
    from zoo.layers import grad_plan

    planned = []
    gated_conv = grad_plan.gated_conv
    monkeypatch.setattr(grad_plan, "gated_conv",
                        lambda x, w, plan, *a, **k: planned.append(plan) or gated_conv(x, w, plan, *a, **k))
    traced = []
    train_step = DropPathFreeze.train_step
    monkeypatch.setattr(DropPathFreeze, "train_step",
                        lambda self, *a: traced.append((self._kind, len(planned))) or train_step(self, *a))
    _, trainer = make(keras.optimizers.SGD(0.05, momentum=0.9), run_eagerly=False, rate=0.6)
    assert trainer.dispatches_kinds() and len(trainer.unit_names) < 18
    kinds = []
    for step in range(12):
        trainer.train_on_batch(*batch(step))
        kinds.append(trainer.dispatched_kind)
        b_step = int(to_numpy(trainer.last_kind)) == 1
        dropped = int(np.sum(to_numpy(trainer.last_mask) == 0))
        expected = "freezing" if b_step else "dropping" if dropped >= 2 else "computing"
        assert kinds[-1] == expected, (step, b_step, dropped)
    assert set(kinds) == {"computing", "dropping", "freezing"}
    # each traced once, on the first step; the computing step's convs follow no plan, the
    # dropping step's a plan of Python constants (every gradient), the freezing step's tensors
    assert [kind for kind, _ in traced] == ["computing", "dropping", "freezing"]
    assert traced[1][1] == 0 < traced[2][1] < len(planned)
    dropping, freezing = planned[: traced[2][1]], planned[traced[2][1]:]
    assert all(plan[0] is True and plan[1] is True for plan in dropping)
    assert not any(plan[0] is True for plan in freezing)
    assert not DropPathFreeze(trainer.model, skip_dropped=True).dispatches_kinds()
