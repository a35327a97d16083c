"""The residual unit every model family builds on: y = post(M(s) + DropPath(F(x))).

`BaseResidualUnit` owns what every residual unit of the zoo shares: the skip mapping M
(zoo.layers.skip, built with the unit's position `index`, the length `num_units` of the
model's skip path and, for a recurrence, its `horizon`), DropPath on the branch, the
validated config, and the residual add, written once, in `residual`:

    branch = self.drop_path(branch)                   # apply_drop_path
    y = self.skip.add(shortcut, branch)               # add_skip: M(s) + branch scaled by M

A family's unit defines only its branch F and where it sits:

    build_branch(input_shape)          create and build the branch's sublayers (and any
                                       shortcut projection); called by `build`
    residual_shape(input_shape)        the shape of F(x) and of M(s) (default: the input's)
    branch_and_shortcut(x, training)   (F(x), s): the branch and the tensor the skip mapping
                                       starts from (default: (self.branch(x), x))
    branch(x, training)                F alone
    after_add(y, training)             anything after the add (a post-activation ReLU)
    add_skip, apply_drop_path          how M and DropPath are applied (a recurrent cell
                                       uses masks drawn once per sequence)

`build` creates every variable (the branch's, the skip mapping's), so `unit.build(shape)`
leaves a unit ready to load weights, as Keras expects. Sublayers take the unit's dtype
policy (`dtype=self.dtype_policy`), so a unit made with `dtype="mixed_bfloat16"` runs all of
itself in that policy.
"""

import functools

import keras
from keras import ops

from zoo.errors import check_choice, check_range
from zoo.layers import fused, grad_plan
from zoo.layers.drop_path import GRANULARITIES, DropPath
from zoo.layers.skip import make_skip


class BaseResidualUnit(keras.layers.Layer):
    """Base class of the residual units: skip mapping, DropPath, the residual add, config.

    Args:
        skip, skip_options: the skip mapping M, by registered name, and its options.
        drop_path_rate, drop_path_granularity: DropPath on the branch.
        index: the unit's position in its model; offsets the seeds of M and DropPath.
        num_units: residual units on the model's skip path; the skip mapping scales its
            strength by it (`depth` of zoo.layers.skip), so the composed path stays bounded.
        horizon: for a recurrent unit, the steps over which it applies the same M (the
            mapping scales its strength by it too); None elsewhere. A subclass that takes it
            saves it in its own config.
    """

    def __init__(
        self,
        skip="identity",
        skip_options=None,
        drop_path_rate=0.0,
        drop_path_granularity="sample",
        index=0,
        num_units=1,
        horizon=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # === Validation ===
        self.skip_name = skip
        self.skip_options = dict(skip_options or {})
        self.drop_path_rate = float(check_range("drop_path_rate", drop_path_rate, low=0.0, high=1.0, high_open=True))
        self.drop_path_granularity = check_choice("drop_path_granularity", drop_path_granularity, GRANULARITIES)
        self.index = int(check_range("index", index, low=0, integer=True))
        self.num_units = int(check_range("num_units", num_units, low=1, integer=True))

        # === Layers ===
        self.skip = make_skip(
            skip,
            self.skip_options,
            index=self.index,
            depth=self.num_units,
            horizon=horizon,
            name="skip",
            dtype=self.dtype_policy,
        )
        self.drop_path = DropPath(
            self.drop_path_rate,
            granularity=self.drop_path_granularity,
            seed=self.index,
            name="drop_path",
            dtype=self.dtype_policy,
        )

    # === Extension hooks ===
    def build_branch(self, input_shape):
        """Create and build the branch's sublayers for `input_shape` (and check it)."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_branch(input_shape).")

    def branch(self, x, training=None):
        """F(x), the residual branch alone, before any branch scale of M and DropPath."""
        raise NotImplementedError(f"{type(self).__name__} must implement branch(x, training).")

    def residual_shape(self, input_shape):
        """The shape of F(x) and M(s), where the add happens."""
        return tuple(input_shape)

    def branch_and_shortcut(self, x, training=None):
        """(F(x), s): the branch and the tensor the skip mapping acts on."""
        return self.branch(x, training=training), x

    def after_add(self, y, training=None):
        """What follows the residual add (nothing by default)."""
        return y

    def shortcut_only(self, x, training=None):
        """s, the tensor the skip mapping acts on, without computing the branch: what a unit
        whose branch is dropped for the whole batch computes. A family that overrides
        `branch_and_shortcut` overrides this too, or its dropped branches are computed and
        multiplied by zero as before (see `_can_skip_branch`)."""
        return x

    def add_skip(self, shortcut, branch, training=None):
        """M(shortcut) + the branch (after DropPath) times the scale M imposes, the residual
        sum (`SkipMapping.add`). A recurrent cell draws its randomness once per sequence here
        instead."""
        return self.skip.add(shortcut, branch, training=training)

    def apply_drop_path(self, branch, training=None):
        """DropPath on the branch (a recurrent cell applies its per-sequence mask)."""
        return self.drop_path(branch, training=training)

    # === The residual unit ===
    def build(self, input_shape):
        self.build_branch(input_shape)
        shape = self.residual_shape(input_shape)
        self.skip.build(shape)
        self.drop_path.build(shape)

    def residual(self, shortcut, branch, training=None):
        """M(shortcut) + DropPath(branch), with the branch scale M may impose: the residual add.
        (DropPath multiplies whole samples by a constant, so it commutes with M's branch scale:
        it goes first, and the skip mapping computes its scale and the sum in one kernel.)"""
        return self.add_skip(shortcut, self.apply_drop_path(branch, training=training), training=training)

    def plan_gradients(self, weights=None, inputs=None, xla=True):
        """Set by a training step (DropPathFreeze): whether the step needs the gradients of this
        unit's weights and of its input (scalar boolean tensors; `xla`: the step is compiled by
        XLA); None: every gradient. The zoo's convs read it (zoo.layers.grad_plan); other layers
        compute every gradient."""
        # object.__setattr__: transient tensors, not state for Keras' (or torch's) tracking
        object.__setattr__(self, "_gradient_plan", None if weights is None else (weights, inputs, xla))

    def call(self, x, training=None):
        plan = getattr(self, "_gradient_plan", None) if training else None
        if plan is None:
            return self._call(x, training, None)
        with grad_plan.needed_gradients(*plan):
            return self._call(x, training, plan)

    def _call(self, x, training, plan):
        multiplier = self.drop_path.forced_batch_multiplier() if training and self._skippable() else None
        if multiplier is None and plan is None:
            return self._full(x, training)
        # A training step (DropPathFreeze) imposes one multiplier on the whole batch: where it is
        # 0 the branch's output is multiplied away, so the unit computes M(s) alone. Where its
        # gradient plan needs nothing of this unit or below (a B step, below the lowest unit it
        # trains), the unit runs forward with its output cut from the gradient: no backward
        # pass through it at all (the convs' plans alone leave its BatchNorms and activations).
        arms, conditions = [], []
        dropped = None if multiplier is None else (
            multiplier == 0 if isinstance(multiplier, float) else ops.equal(multiplier, 0))
        if dropped is not None and dropped is not False:  # a Python number other than 0: no arm
            arms.append(lambda: self.after_add(
                self.skip(self.shortcut_only(x, training=training), training=training), training=training))
            conditions.append(dropped)
        if plan is not None and plan[1] is not True:
            arms.append(lambda: ops.stop_gradient(self._full(x, training)))
            conditions.append(ops.logical_not(plan[1]))

        def full():
            if plan is None or plan[1] is True:
                return self._full(x, training)
            # taken only where the step needs the gradient of this unit's input (else the arm
            # above is): the convs compute their input gradients without a conditional
            with grad_plan.needed_gradients(plan[0], True, *plan[2:]):
                return self._full(x, training)

        if not arms:  # nothing to choose (a unit never dropped, all its gradients needed)
            return self._full(x, training)
        arms.append(full)
        with fused.inside_conditional():  # the arms are conditionals: the sums need none of their own
            return _first_taken(conditions, arms, self.variables)

    def _full(self, x, training):
        branch, shortcut = self.branch_and_shortcut(x, training=training)
        return self.after_add(self.residual(shortcut, branch, training=training), training=training)

    def _skippable(self):
        return _can_skip_branch(type(self))

    def compute_output_shape(self, input_shape):
        return self.residual_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "skip": self.skip_name,
            "skip_options": self.skip_options,
            "drop_path_rate": self.drop_path_rate,
            "drop_path_granularity": self.drop_path_granularity,
            "index": self.index,
            "num_units": self.num_units,
        }


@functools.cache
def _can_skip_branch(cls):
    """Whether units of `cls` can compute M(s) alone when their branch is dropped: the residual
    add is the base class's, and `shortcut_only` gives s (the default, x, is s only where
    `branch_and_shortcut` is the default too). Once per class, not per call."""
    base = BaseResidualUnit
    return (cls.add_skip is base.add_skip and cls.apply_drop_path is base.apply_drop_path
            and (cls.shortcut_only is not base.shortcut_only or cls.branch_and_shortcut is base.branch_and_shortcut))


def _first_taken(conditions, arms, variables):
    """`arms[k]()` for the first k whose condition (a scalar boolean tensor or a Python bool) is
    true, else `arms[-1]()`, computing only the one taken, inside a compiled step too: a Python
    branch on eager torch, tf.switch_case on tensorflow, lax.switch on jax. On jax the state an
    arm updates (BatchNorm statistics, seed generators of `variables`) comes out of the switch
    as outputs of every arm and is assigned after it, into the training step's stateless
    scope, as Keras' jax trainer collects it."""
    backend = keras.backend.backend()
    if backend == "torch" or all(isinstance(c, bool) for c in conditions):
        return arms[next((k for k, c in enumerate(conditions) if bool(c)), len(arms) - 1)]()
    index = ops.convert_to_tensor(len(arms) - 1, "int32")
    for k in reversed(range(len(conditions))):
        index = ops.where(conditions[k], k, index)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.switch_case(index, arms)
    import jax

    variables = list(variables)
    start = [v.value for v in variables]  # the step's current values (its stateless scope's)
    state = [v for v in variables if not v.trainable]  # what a forward pass may assign

    def arm(fn):
        def run():
            with keras.StatelessScope(list(zip(variables, start))) as scope:
                out = fn()
            return out, [scope.get_current_value(v) for v in state]

        return run

    # Each arm is rematerialised but for its products (convolutions, matmuls): what its backward
    # pass reads from the forward crosses the conditional as outputs XLA writes out and cannot
    # fuse into their consumers (BatchNorm's centred inputs, masks, copies of the arm's inputs);
    # recomputing the elementwise ones inside the backward arm is cheaper (ResNet-56's
    # DropPathFreeze step 1.06x -> 1.41x the plain step, medians of three runs,
    # docs/benchmarks-cpu-log.md). No CSE to prevent inside a conditional: prevent_cse=False.
    arms = [jax.checkpoint(arm(fn), policy=_saves_products, prevent_cse=False) for fn in arms]
    out, values = jax.lax.switch(index, arms)
    for v, value in zip(state, values):
        v.assign(value)
    return out


def _saves_products(primitive, *_, **__):
    """jax.checkpoint policy of a unit's arm: save convolution and matmul outputs, recompute the
    rest."""
    return primitive.name in ("conv_general_dilated", "dot_general")
