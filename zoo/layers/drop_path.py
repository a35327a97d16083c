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

    A training step can impose the keep decision through the non-trainable scalar weight
    `keep_override`: a negative value (the default, -1) means "draw from the seed generator",
    0 means drop, 1 means keep. It is a variable, not a Python attribute, so a compiled step
    reads it as a tensor and does not retrace when it changes.

    Input: any tensor with a leading batch axis. Output: the same shape.
    """

    def __init__(self, rate=0.0, granularity="sample", seed=0, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(check_range("drop_path_rate", rate, low=0.0, high=1.0, high_open=True))
        self.granularity = check_choice("granularity", granularity, GRANULARITIES)
        self.seed = check_range("seed", seed, low=0, integer=True)
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="seed_generator")
        self.supports_masking = True

    def build(self, input_shape):
        self.keep_override = self.add_weight(
            name="keep_override",
            shape=(),
            initializer=keras.initializers.Constant(-1.0),
            trainable=False,
        )

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep_prob = 1.0 - self.rate
        if self.granularity == "sample":
            shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        else:
            shape = ()
        drawn = ops.floor(keras.random.uniform(shape, seed=self.seed_generator) + keep_prob)
        override = ops.cast(self.keep_override, drawn.dtype)
        keep = ops.where(override >= 0, override, drawn)
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
