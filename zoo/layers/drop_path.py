"""DropPath (stochastic depth) on a residual branch, seeded, with a mask a training step can set."""

import keras
from keras import ops

from zoo.errors import check_choice, check_range

GRANULARITIES = ("sample", "batch")


@keras.saving.register_keras_serializable(package="zoo")
class DropPath(keras.layers.Layer):
    """Zero the residual branch with probability `rate` during training, scaling the kept
    branch by 1 / (1 - rate) so its expectation is unchanged (Huang et al. 2016, as in timm).

    granularity:
      "sample": one keep/drop draw per sample (timm's DropPath).
      "batch":  one draw for the whole batch, so a dropped branch needs no compute at all (the
                DropPathFreeze step of Park 2024 uses this).

    A training step can impose the decision with `force(multiplier, grad_gate)`: while set,
    the branch is multiplied by `multiplier` (a scalar tensor or Python float, or one value a
    sample) instead of a draw, and `grad_gate` (one value a sample, or None) lets gradients
    through only where it is 1. The DropPathFreeze step sets these to tensors computed inside
    its compiled step, so changing masks never retrace, and nothing of it is saved with the
    weights.

    Input: any tensor with a leading batch axis. Output: the same shape.
    """

    def __init__(self, rate=0.0, granularity="sample", seed=0, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(check_range("drop_path_rate", rate, low=0.0, high=1.0, high_open=True))
        self.granularity = check_choice("granularity", granularity, GRANULARITIES)
        self.seed = check_range("seed", seed, low=0, integer=True)
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="seed_generator")
        self.supports_masking = True

    def force(self, multiplier=None, grad_gate=None, skippable=True):
        """Impose this step's keep multiplier (None restores random drawing). `skippable=False`:
        the unit computes its branch even where the multiplier is 0 (the reference the skipping
        step is tested against)."""
        # object.__setattr__: transient tensors, not state for Keras' (or torch's) tracking.
        object.__setattr__(self, "_forced", None if multiplier is None else (multiplier, grad_gate, skippable))

    def forced_batch_multiplier(self):
        """The multiplier a training step imposes on the whole batch (a scalar tensor), or None
        when none is imposed or it differs between samples. A unit whose multiplier is 0 need
        not compute its branch at all (BaseResidualUnit.call)."""
        forced = getattr(self, "_forced", None)
        if forced is None or forced[1] is not None or not forced[2]:
            return None
        if not isinstance(forced[0], float) and len(forced[0].shape) != 0:
            return None
        return forced[0]

    def _per_sample(self, value, x):
        return ops.reshape(ops.cast(value, x.dtype), (-1,) + (1,) * (len(x.shape) - 1))

    def call(self, x, training=None):
        forced = getattr(self, "_forced", None)
        if forced is not None:
            multiplier, grad_gate, _ = forced
            if isinstance(multiplier, float):  # one Python number for the batch (eager torch)
                return x if multiplier == 1.0 else x * multiplier
            if grad_gate is not None:
                gate = self._per_sample(grad_gate, x)
                x = gate * x + (1 - gate) * ops.stop_gradient(x)
            if len(multiplier.shape) == 0:
                return x * ops.cast(multiplier, x.dtype)
            return x * self._per_sample(multiplier, x)
        if not training or self.rate == 0.0:
            return x
        keep_prob = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1) if self.granularity == "sample" else ()
        keep = ops.floor(keras.random.uniform(shape, seed=self.seed_generator) + keep_prob)
        return x * ops.cast(keep / keep_prob, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "rate": self.rate,
            "granularity": self.granularity,
            "seed": self.seed,
        }


def linear_drop_path_rates(rate, num_units):
    """The linear per-unit schedule p_l = rate * l / (L - 1), l = 0..L-1 (SPEC section 4)."""
    check_range("drop_path_rate", rate, low=0.0, high=1.0, high_open=True)
    if num_units <= 1:
        return [0.0] * num_units
    return [rate * i / (num_units - 1) for i in range(num_units)]
