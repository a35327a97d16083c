"""The DropPathFreeze training step (Park 2024, "ResidualDroppath", arXiv 2411.09475).

Two kinds of iteration over the residual units of a model (SPEC section 5):

    A (droppath): draw a keep/drop mask per unit; dropped branches output 0; update every
                  variable except those of dropped units.
    B (freeze):   reuse the mask of the preceding A step; run the full model; update only the
                  variables of the units dropped in A.

A B step follows every `freeze_every`-th A step (1: A, B, A, B, ...; 0: never). A B step
whose A step dropped nothing runs as an ordinary step, so rate 0 is ordinary training.

How it stays exact and compiled once:
- The mask is drawn inside `call` from this model's seeded SeedGenerator; a B step replays
  the generator state of its A step, so it sees the same mask (same shape: the same mask
  bit for bit) without storing it. Masks are tensors: nothing retraces from step to step.
- `call` writes which units may change this step into non-trainable flag variables. The
  backend's ordinary train step then runs, and afterwards every variable of the model and
  its optimizer slot is set to `where(flag, new, old)`: frozen units stay bit-identical,
  optimizer moments, weight decay and BatchNorm statistics included (masking gradients alone
  would not stop weight decay, momentum or the statistics).
- Per backend: JAX selects between the stateless old and new state; TensorFlow and PyTorch
  copy the guarded values before their stateful step and restore them after. One model API:
  `DropPathFreeze(model).fit(...)`.
"""

import contextlib
import warnings

import keras
import numpy as np
from keras import ops

from zoo.errors import check_choice, check_range
from zoo.layers.drop_path import GRANULARITIES

BACKEND = keras.backend.backend()


def _read(variable):
    """The variable's value now (TensorFlow would otherwise read it after later assigns)."""
    return ops.copy(variable.value)


def _distributed():
    """Whether a keras.distribution (jax) or a tf.distribute strategy (tensorflow) is active."""
    if BACKEND == "jax":
        return keras.distribution.distribution() is not None
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.distribute.has_strategy()
    return False


def _plain_intermediates():
    """While tracing the step on tensorflow: the units' conditionals pass what their gradients
    read from the forward pass as plain tensors, not wrapped in optionals.

    A conditional's gradient reads the intermediates of the arm that ran; TensorFlow makes them
    outputs of the forward conditional, by default each wrapped in an optional (an
    `OptionalFromValue` in the arm that computes it, an `OptionalNone` in every other arm, an
    `OptionalGetValue` in the gradient): three more ops in TensorFlow's graph executor for every
    intermediate of every unit, every step. Without optionals (as under XLA) the other arms output
    a `FakeParam` placeholder instead (one tensor made once, never read: the gradient of the arm
    that ran reads only its own intermediates), the same values in fewer ops. The bench's
    DropPathFreeze / plain step on tensorflow, three runs each alternating, before -> after
    (this 2-core Intel Xeon, docs/benchmarks-cpu-log.md "2026-12-05 (Intel Xeon, night)"):
    ResNet-20 1.074, 1.050, 1.065 -> 1.097, 1.084, 1.080; ResNet-56 1.177, 1.181, 1.173 ->
    1.191, 1.173, 1.187. A private TensorFlow switch
    (`context.temporarily_disable_optionals_in_gradients`): where it is missing, TensorFlow's
    default."""
    if BACKEND != "tensorflow":
        return contextlib.nullcontext()
    from tensorflow.python.eager import context

    switch = getattr(context, "temporarily_disable_optionals_in_gradients", None)
    return switch() if switch is not None else contextlib.nullcontext()


class _DropPathFreezeBase(keras.Model):
    """Wraps a zoo model (anything with `residual_units` whose units own a `drop_path`).

    Args:
        model: the model to train; its units' DropPath rates give the per-unit schedule
            (`drop_path_rate` with the linear schedule of the zoo's factories).
        granularity: "batch" (one decision per unit per step, the paper's) or "sample"
            (timm-style per-sample masks; in B each unit learns from the samples it was
            dropped on in A, and the rest of the model is frozen).
        freeze_every: run a B step after every k-th A step; 0 disables B steps.
        seed: seed of the mask generator.
        skip_dropped: with batch granularity, a unit whose branch is dropped computes M(s)
            alone, not F(x) times 0 (a conditional per unit in the compiled step on jax and
            tensorflow, a Python branch on eager torch), and the step computes only the gradients
            it uses: none for the weights of the units it freezes, no backward pass below the
            lowest unit it trains (on torch the frozen variables leave autograd; on jax and
            tensorflow the zoo's convs follow a gradient plan, zoo.layers.grad_plan). The same
            step as computing everything (tested). None (the default): True, except under a
            `keras.distribution` (jax) or a tf.distribute strategy (the all-reduces would sit
            inside the conditionals), and on jax on a CPU, where `fit` compiles one step per kind
            of step (`kind_dispatched_step`: A steps skip only when they drop enough units to
            pay for the conditionals, B steps plan their gradients).
            True skips in every step; False computes every branch and gradient and multiplies
            the dropped branches by 0. With per-sample masks no branch is skipped; on eager
            torch the step's frozen variables still leave autograd, unless False.

    The wrapper's call is the model's call. It serializes (get_config holds the wrapped model's
    config), so keras.callbacks.ModelCheckpoint (".keras" or ".weights.h5") and BackupAndRestore
    work inside `fit`; `keras.saving.load_model` gives back a DropPathFreeze whose `.model` is the
    trained model. To ship the model alone, save `wrapper.model`.
    """

    def __init__(self, model, granularity="batch", freeze_every=1, seed=0, skip_dropped=None, **kwargs):
        super().__init__(**kwargs)
        self.skip_dropped = None if skip_dropped is None else bool(skip_dropped)
        self.granularity = check_choice("granularity", granularity, GRANULARITIES)
        self.freeze_every = int(check_range("freeze_every", freeze_every, low=0, integer=True))
        self.seed = int(check_range("seed", seed, low=0, integer=True))
        units = getattr(model, "residual_units", None)
        if not units or not all(hasattr(u, "drop_path") for u in units):
            raise ValueError(
                f"DropPathFreeze needs a model exposing `residual_units` whose units own a "
                f"`drop_path` layer (every zoo model does); received {type(model).__name__}."
            )
        self.model = model
        self.unit_names = [u.name for u in units]
        self.keep_probs = [1.0 - float(u.drop_path.rate) for u in units]
        # read every step: the units once (the model's property walks its layers by name each
        # time) and the keep probabilities as one array (not converted from a list each step)
        object.__setattr__(self, "_units", tuple(units))
        object.__setattr__(self, "_keep_probs", np.asarray(self.keep_probs, dtype="float32"))
        self.mask_seed = keras.random.SeedGenerator(seed, name="mask_seed")
        num_units = len(units)
        self.step_count = self.add_weight(name="step_count", shape=(), dtype="int32", initializer="zeros", trainable=False)
        self.replay_state = self.add_weight(
            name="replay_state", shape=self.mask_seed.state.shape, dtype=self.mask_seed.state.dtype,
            initializer="zeros", trainable=False,
        )
        self.unit_update = self.add_weight(name="unit_update", shape=(num_units,), initializer="ones", trainable=False)
        self.outside_update = self.add_weight(name="outside_update", shape=(), initializer="ones", trainable=False)
        self.last_mask = self.add_weight(name="last_mask", shape=(num_units,), initializer="ones", trainable=False)
        self.last_kind = self.add_weight(name="last_kind", shape=(), dtype="int32", initializer="zeros", trainable=False)
        object.__setattr__(self, "_guard_cache", None)
        self.trace_count = 0  # Python-side: grows once per trace of the train step

    @property
    def residual_units(self):
        return list(self._units)

    # === Serialization: ModelCheckpoint(".keras") and load_model see a whole trainer ===
    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "model": keras.saving.serialize_keras_object(self.model),
            "granularity": self.granularity,
            "freeze_every": self.freeze_every,
            "seed": self.seed,
            "skip_dropped": self.skip_dropped,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"))
        trainer = cls(model, **config)
        trainer.built = True  # every variable exists (the wrapped model is built): load_model fills them
        return trainer

    # === Masks and flags (inside the compiled step) ===
    def _draw_mask(self, batch_size):
        """This step's mask, drawn (A) or replayed (B): (dropped, keep, probs, scheduled_b), 1 =
        dropped / kept. Advances the generator, the replay state and the step counter."""
        num_units = len(self.unit_names)
        keep_probs = ops.convert_to_tensor(self._keep_probs)
        count = _read(self.step_count)
        period = self.freeze_every + 1
        scheduled_b = (
            ops.equal(ops.mod(count, period), self.freeze_every) if self.freeze_every > 0 else ops.convert_to_tensor(False)
        )
        start = _read(self.mask_seed.state)
        replay = _read(self.replay_state)
        self.mask_seed.state.assign(ops.where(scheduled_b, replay, start))
        shape = (num_units,) if self.granularity == "batch" else (num_units, batch_size)
        u = keras.random.uniform(shape, seed=self.mask_seed)
        probs = keep_probs if self.granularity == "batch" else keep_probs[:, None]
        keep = ops.cast(u < probs, "float32")  # 1 = keep
        # An A step advances the generator; a B step leaves it where its A step left it.
        after_draw = _read(self.mask_seed.state)
        self.mask_seed.state.assign(ops.where(scheduled_b, start, after_draw))
        self.replay_state.assign(ops.where(scheduled_b, replay, start))
        self.step_count.assign(count + 1)
        return 1.0 - keep, keep, probs, scheduled_b

    def plan_step(self, batch_size):
        """Draw or replay this step's mask; set the DropPaths and the update flags."""
        num_units = len(self.unit_names)
        dropped, keep, probs, scheduled_b = self._draw_mask(batch_size)
        keep_probs = ops.convert_to_tensor(self._keep_probs)
        is_b = ops.logical_and(scheduled_b, ops.sum(dropped) > 0)

        b = ops.cast(is_b, "float32")
        if self.granularity == "batch":
            unit_dropped = dropped
            multiplier = (1.0 - b) * keep / keep_probs + b  # A: mask / keep_prob; B: 1
            unit_update = (1.0 - b) * keep + b * dropped
        else:
            unit_dropped = ops.cast(ops.sum(dropped, axis=1) > 0, "float32")
            multiplier = (1.0 - b) * keep / probs + b
            unit_update = (1.0 - b) * ops.ones((num_units,)) + b * unit_dropped
        self.unit_update.assign(unit_update)
        self.outside_update.assign(1.0 - b)
        self.last_mask.assign(1.0 - unit_dropped)
        self.last_kind.assign(ops.cast(is_b, "int32"))
        # the kinds of step `kind_dispatched_step` compiles (jax on a CPU): "computing" computes
        # every branch, the dropped ones multiplied by 0, and every gradient: no conditionals;
        # "dropping" (A steps) skips dropped branches and computes every gradient; "freezing" (B
        # steps, which drop nothing) computes every branch and only the gradients it needs
        kind = getattr(self, "_kind", None)
        skips = self.skips_work() and kind not in ("computing", "freezing")
        # torch takes frozen variables out of autograd instead
        plans = self.skips_work() and kind != "computing" and BACKEND != "torch"
        if plans:
            # which gradients the step needs: a unit's weights where it changes; its input where
            # it or anything below it changes (a B step needs no backward pass below the lowest
            # unit it trains); the zoo's convs compute only those (zoo.layers.grad_plan)
            below = ops.cumsum(unit_update) + (1.0 - b) > 0
            xla = BACKEND == "jax" or self.jit_compile is True
        if BACKEND == "torch" and self.granularity == "batch":
            # eager torch: the per-unit multipliers as Python floats, read once; a unit then
            # decides to skip its branch, and DropPath scales it, without a tensor op each
            multiplier = ops.convert_to_numpy(multiplier).tolist()
        for i, unit in enumerate(self._units):
            if self.granularity == "sample":
                unit.drop_path.force(multiplier[i], (1.0 - b) + b * dropped[i], skippable=skips)
            else:
                # a unit at rate 0 (the first of the linear schedule) is never dropped: its
                # multiplier is 1 in every step (mask / 1 in A steps, 1 in B steps), a Python
                # number here, so the unit has no conditional for dropping its branch
                never_dropped = self.keep_probs[i] == 1.0
                unit.drop_path.force(1.0 if never_dropped else multiplier[i], skippable=skips)
            if plans and hasattr(unit, "plan_gradients"):
                if kind == "dropping":  # an A step trains every unit it computes
                    unit.plan_gradients(True, True, xla=xla)
                else:
                    unit.plan_gradients(unit_update[i] > 0, below[i], xla=xla)

    def release(self):
        for unit in self._units:
            unit.drop_path.force(None)
            if hasattr(unit, "plan_gradients"):
                unit.plan_gradients(None)

    def call(self, x, training=False):
        if not training:
            return self.model(x, training=False)
        if not getattr(self, "_planned", False):  # torch plans before the forward pass (train_step)
            self.plan_step(ops.shape(keras.tree.flatten(x)[0])[0])
        object.__setattr__(self, "_planned", False)
        try:
            return self.model(x, training=True)
        finally:
            self.release()

    # === Which variables a step may change ===
    def guarded_variables(self):
        """[(variable, flag index)]: model variables and optimizer slots with the unit that owns
        them (index = unit position) or len(units) for the rest of the model. Worked out again
        for another optimizer (`compile` again) or once its slots are built."""
        optimizer = getattr(self, "optimizer", None)
        count = len(getattr(optimizer, "variables", []))
        cache = self._guard_cache
        if cache is not None and cache[0] is optimizer and cache[1] == count:
            return cache[2]
        num_units = len(self.unit_names)
        owner = {}
        for i, unit in enumerate(self._units):
            for v in unit.variables:
                owner[id(v)] = i
        # The wrapper's own variables (mask generator, flags, counter) are not the model's.
        guarded = [(v, owner.get(id(v), num_units)) for v in self.model.variables]
        # Optimizer slots are named "<variable path with / as _>_<slot>": map them back.
        by_prefix = sorted(
            ((v.path.replace("/", "_") + "_", owner.get(id(v), num_units)) for v in self.trainable_variables),
            key=lambda item: -len(item[0]),
        )
        for slot in getattr(optimizer, "variables", []):
            name = slot.name
            for prefix, index in by_prefix:
                if name.startswith(prefix):
                    guarded.append((slot, index))
                    break
        object.__setattr__(self, "_guard_cache", (optimizer, count, guarded))  # a cache, not state to track
        return guarded

    def skips_work(self):
        """Whether this step skips dropped branches and the gradients it does not use."""
        if self.granularity != "batch":
            return False
        if self.skip_dropped is None and _distributed():
            # a run over several devices or processes would hold its all-reduces (gradients,
            # synchronised BatchNorm statistics, mirrored assigns) inside the conditionals,
            # which gloo (jax) and tf.distribute (merge_call) do not allow: not the default there
            return False
        return True if self.skip_dropped is None else self.skip_dropped

    def _flags(self, unit_update, outside_update):
        return ops.concatenate([ops.convert_to_tensor(unit_update), ops.reshape(outside_update, (1,))])


if BACKEND == "jax":

    @keras.saving.register_keras_serializable(package="zoo")
    class DropPathFreeze(_DropPathFreezeBase):
        __doc__ = _DropPathFreezeBase.__doc__

        def make_train_function(self, force=False):
            if self.train_function is not None and not force:
                # every `fit` / `train_on_batch` call: the schedule's copy is read again from the
                # state (weights loaded in between would otherwise leave it behind: a slower
                # choice of step, never an inexact one)
                getattr(self, "_reread_schedule", lambda: None)()
                return
            if not self.dispatches_kinds():
                return super().make_train_function(force)
            self.train_function = self._make_function(self.kind_dispatched_step())

        def dispatches_kinds(self):
            """Whether `fit` runs one compiled step per kind of step (`kind_dispatched_step`): jax
            on a CPU, `skip_dropped` left to its default, batch granularity, compiled."""
            import jax

            return (self.skip_dropped is None and self.skips_work() and not self.run_eagerly
                    and bool(self.jit_compile) and jax.default_backend() == "cpu")

        def kind_dispatched_step(self, lookahead=32):
            """(state, data) -> (logs, state): three compiled steps, one chosen before each step.

            On jax on a CPU the units' conditionals cost a step about 3 ms whatever it drops
            (ResNet-20 and ResNet-56, 16 px, batch 32, this 2-core CPU): a step that drops
            nothing took 24.3 ms with them against a plain step's 21.1 (ResNet-20) and 78.2
            against 75.1 (ResNet-56). Inside one compiled step the kind is known only at run
            time, and choosing inside it (a conditional around the whole step) made the units'
            conditionals slower still (ResNet-56: 44 -> 60 ms a B step). But each kind of step
            needs only some of them: an A step trains every unit it computes (its gradient plan
            is all of them: the convs need no conditional), a B step drops nothing (its units
            need no dropped arm). So the step is compiled once per kind:

            - `dropping`: dropped branches skipped, every gradient computed. A steps that drop
              at least two units (ResNet-20, 9 units) or one (models of 18 units or more:
              ResNet-56, 27 units); fewer on ResNet-20 saved less than the conditionals cost.
            - `freezing`: every branch computed, only the gradients the step uses (the plan
              of `skip_dropped=True`). B steps.
            - `computing`: every branch computed, the dropped ones multiplied by 0, every
              gradient: no conditional. The other A steps.

            Each is a whole DropPathFreeze step, exact for any mask (what a plan does not
            compute, the step's freeze selects away): the choice is only ever about speed.
            Against two kinds (the B steps and these A steps under `skip_dropped=True`'s step,
            both plans and dropped arms), in one process, 5 rounds of 100 (ResNet-20) and 40
            (ResNet-56) steps each, medians: ResNet-20 17.72 -> 17.25 ms a step (plain step
            20.86), ResNet-56 54.16 -> 50.00 ms (plain 68.89; 51.24 with ResNet-20's threshold).

            The next step's mask is known before it runs: the masks depend only on the step
            counter and the mask generator's state, so a small compiled function replays their
            draws `lookahead` steps at a time from a copy of those three values (read from the
            state at the first step of each `fit` or `train_on_batch` call), independently of
            the training steps: no step waits for the one before it."""
            import functools

            import jax

            def of_kind(kind, state, data):
                object.__setattr__(self, "_kind", kind)
                try:
                    return self.train_step(state, data)
                finally:
                    object.__setattr__(self, "_kind", None)

            kinds = ("computing", "dropping", "freezing")
            # the fewest dropped units for which an A step skips: measured on ResNet-20 (9 units,
            # two) and ResNet-56 (27 units, one)
            fewest = 1 if len(self.unit_names) >= 18 else 2
            steps = {kind: jax.jit(functools.partial(of_kind, kind), donate_argnums=0) for kind in kinds}
            schedule = (self.step_count, self.mask_seed.state, self.replay_state)

            @jax.jit
            def ahead(values):
                def one(values, _):
                    with keras.StatelessScope(state_mapping=list(zip(schedule, values))) as scope:
                        dropped, _, _, scheduled_b = self._draw_mask(None)
                        values = tuple(scope.get_current_value(v) for v in schedule)
                    count = ops.sum(dropped)
                    b_step = ops.logical_and(scheduled_b, count > 0)
                    return values, ops.where(b_step, 2, ops.where(count >= fewest, 1, 0))

                return jax.lax.scan(one, tuple(values), None, length=lookahead)

            where = [next(i for i, v in enumerate(self.non_trainable_variables) if v is w) for w in schedule]
            pending, values, compiled = [], [], {}

            def reread():
                pending.clear()
                values.clear()

            object.__setattr__(self, "_reread_schedule", reread)

            def step(state, data):
                if not compiled:  # the first step: every kind traced, compiled and run once now
                    for kind, fn in steps.items():
                        compiled[kind] = fn.lower(state, data).compile()
                        # run once on a copy of the state, the result dropped: an executable's first
                        # run costs several steps' time (ResNet-56: 424 ms against 68), which would
                        # otherwise fall on the first step of its kind, however late
                        jax.block_until_ready(compiled[kind](jax.tree.map(jax.numpy.copy, state), data))
                if not values:  # copy the schedule's state
                    values.append(tuple(np.asarray(state[1][i]) for i in where))
                if not pending:
                    values[0], skips = ahead(values[0])
                    pending.extend(np.asarray(skips).tolist())
                kind = kinds[pending.pop(0)]
                object.__setattr__(self, "dispatched_kind", kind)  # the kind that ran last (tests)
                try:
                    return compiled[kind](state, data)
                except TypeError:  # a batch of another shape (an epoch's last): traced for it
                    return steps[kind](state, data)

            return step

        def train_step(self, state, data):
            self.trace_count += 1
            old_trainable, old_non_trainable, old_optimizer, _ = state
            logs, new_state = super().train_step(state, data)
            trainable, non_trainable, optimizer_vars, metrics_vars = new_state
            index = {id(v): i for i, v in enumerate(self.non_trainable_variables)}
            flags = self._flags(
                non_trainable[index[id(self.unit_update)]], non_trainable[index[id(self.outside_update)]]
            )
            owner = {id(v): i for v, i in self.guarded_variables()}

            def select(variables, new, old):
                out = []
                for v, n, o in zip(variables, new, old):
                    if id(v) in owner:
                        n = ops.where(flags[owner[id(v)]] > 0, n, o)
                    out.append(n)
                return out

            trainable = select(self.trainable_variables, trainable, old_trainable)
            non_trainable = select(self.non_trainable_variables, non_trainable, old_non_trainable)
            optimizer_vars = select(self.optimizer.variables, optimizer_vars, old_optimizer)
            return logs, (trainable, non_trainable, optimizer_vars, metrics_vars)

else:

    @keras.saving.register_keras_serializable(package="zoo")
    class DropPathFreeze(_DropPathFreezeBase):
        __doc__ = _DropPathFreezeBase.__doc__

        def train_step(self, data):
            self.trace_count += 1
            if not self.optimizer.built:
                self.optimizer.build(self.trainable_variables)
            guarded = self.guarded_variables()
            if BACKEND == "torch" and self._plans_first():
                # planned before the forward pass: only what this step freezes is kept aside
                frozen, keep = self._plan_and_freeze(data, guarded)
                old = self._snapshot(guarded, keep)
            else:
                frozen, keep, old = [], None, self._snapshot(guarded)
            try:
                with warnings.catch_warnings(), _plain_intermediates():
                    # the frozen variables get no gradient: by design
                    warnings.filterwarnings("ignore", message="Gradients do not exist for variables")
                    logs = super().train_step(data)
            finally:
                for value in frozen:
                    value.requires_grad_(True)
            self._restore(guarded, old, keep)
            return logs

        def _plans_first(self):
            """Eager torch: whether the step is planned before its forward pass, its frozen
            variables out of autograd. Every step that skips work, and the per-sample step
            unless `skip_dropped=False`: it skips no branch, but its A steps freeze nothing (no
            copy to keep) and its B steps train only the units dropped on some sample (no
            gradient for the rest)."""
            if self.granularity == "sample":
                return self.skip_dropped is not False
            return self.skips_work()

        def _plan_and_freeze(self, data, guarded):
            """Eager torch: plan the step before its forward pass and take the variables this
            step leaves unchanged out of autograd, so the backward pass computes no gradient for
            them and stops below the first unit that trains (a B step trains only the units its
            A step dropped). With a global gradient norm clip every gradient counts: no change."""
            x = keras.tree.flatten(data[0] if isinstance(data, (tuple, list)) else data)[0]
            self.plan_step(ops.shape(x)[0])
            object.__setattr__(self, "_planned", True)
            keep = (self._flags(self.unit_update.value, self.outside_update.value) > 0).tolist()
            if getattr(self.optimizer, "global_clipnorm", None):
                return [], keep
            # requires_grad marks the trainable variables (Keras' torch variables carry it), read
            # fresh: no walk over the model's layers for `trainable_variables` every step
            frozen = [value for value, i in self._torch_values(guarded) if not keep[i] and value.requires_grad]
            for value in frozen:
                value.requires_grad_(False)
            return frozen, keep

        def _torch_values(self, guarded):
            """Eager torch: [(tensor, flag index)] of `guarded` (`guarded_variables()`), read once.
            A Keras variable's `value` on torch checks its scopes and device at every read (1.3
            us, some 200 reads a step on ResNet-20); the tensor behind it stays the same, Keras
            assigns in place."""
            cached = getattr(self, "_torch_value_cache", None)
            if cached is None or cached[0] is not guarded:
                cached = (guarded, [(v.value, i) for v, i in guarded])
                object.__setattr__(self, "_torch_value_cache", cached)  # a cache, not state to track
            return cached[1]

        def _snapshot(self, guarded, keep=None):
            """The values a step may have to restore. `keep` (eager torch, the step planned
            already): per flag, whether the step updates it; only the others are copied."""
            if BACKEND != "torch":
                return [ops.copy(v.value) for v, _ in guarded]
            import torch

            # Eager torch: plain tensor clones (bit for bit, -0.0 and NaN payloads included),
            # without the per-variable dispatch of keras ops.
            with torch.no_grad():
                return [value.clone() if keep is None or not keep[i] else None for value, i in self._torch_values(guarded)]

        def _restore(self, guarded, old, keep=None):
            """Put back the variables this step froze. `keep`: the per-flag plan where the step
            was planned before its forward pass (eager torch), else read from the flags now."""
            if keep is None:
                flags = self._flags(self.unit_update.value, self.outside_update.value)
            if BACKEND == "torch":
                import torch

                # Eager torch: read the few flags once (one device sync a step on a GPU) and copy
                # back only the frozen variables in place, not a `where` per variable.
                keep = (flags > 0).tolist() if keep is None else keep
                with torch.no_grad():
                    for (value, i), o in zip(self._torch_values(guarded), old):
                        if not keep[i]:
                            value.copy_(o)
            elif _distributed():  # tf.distribute: no assigns to mirrored variables inside a cond
                for (v, i), o in zip(guarded, old):
                    v.assign(ops.where(flags[i] > 0, v.value, o))
            else:
                import tensorflow as tf

                # One conditional per owner (a unit, or the rest of the model): a frozen owner's
                # variables get their old values back, the others are left as the step made them
                # (not a `where` and an assign for every variable, every step).
                groups = {}
                for (v, i), o in zip(guarded, old):
                    groups.setdefault(i, []).append((v, o))
                for i, pairs in groups.items():
                    def put_back(pairs=pairs):
                        for v, o in pairs:
                            v.assign(o)
                        return tf.constant(True)

                    tf.cond(flags[i] > 0, lambda: tf.constant(False), put_back)
