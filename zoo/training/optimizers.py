"""Optimizers with PyTorch's weight decay: an L2 term added to the gradient (coupled).

Keras' `weight_decay` is decoupled (AdamW-style): w <- w - lr * wd * w, outside the momentum.
PyTorch's `weight_decay` (and Torch7's, which He et al. and most CIFAR papers trained with) adds
wd * w to the gradient, so the decay passes through the momentum buffer: at momentum 0.9 the
same number decays about 1 / (1 - 0.9) = 10x more than Keras' decoupled form. Reproducing a
paper's setting needs the coupled form:

    zoo.training.SGD(learning_rate=0.1, momentum=0.9, coupled_weight_decay=1e-4)
    # == torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)

The decay applies to every trainable variable (as PyTorch's, BatchNorm and biases included);
`weight_decay` (Keras' decoupled form) can still be given beside it.
"""

import keras
from keras import ops

from zoo.errors import check_range


class CoupledWeightDecay:
    """Mixin for a Keras optimizer: gradient + coupled_weight_decay * variable before the update."""

    def __init__(self, *args, coupled_weight_decay=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.coupled_weight_decay = float(check_range("coupled_weight_decay", coupled_weight_decay, low=0.0))

    def update_step(self, gradient, variable, learning_rate):
        if self.coupled_weight_decay:
            decay = ops.cast(self.coupled_weight_decay, gradient.dtype)
            gradient = gradient + decay * ops.cast(variable, gradient.dtype)
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "coupled_weight_decay": self.coupled_weight_decay}


@keras.saving.register_keras_serializable(package="zoo")
class SGD(CoupledWeightDecay, keras.optimizers.SGD):
    """`keras.optimizers.SGD` with `coupled_weight_decay` (torch.optim.SGD's `weight_decay`)."""


@keras.saving.register_keras_serializable(package="zoo")
class Adam(CoupledWeightDecay, keras.optimizers.Adam):
    """`keras.optimizers.Adam` with `coupled_weight_decay` (torch.optim.Adam's `weight_decay`)."""
