"""Fully-connected ResNets (residual MLPs) on any skip mapping: the models of the Residual
Alignment studies (Li & Papyan 2023, arXiv 2401.09018, analyse fully-connected ResNets too).

    flatten -> Dense(width) -> L units  h_{i+1} = M(h_i) + DropPath(F(h_i))  -> Dense(classes)

F, by `norm`:
    "batch" (default)  Dense(hidden) BN ReLU Dense(width) BN     (a ResNet basic block, fully
                                                                  connected, post-norm)
    "layer"            LN Dense(hidden) ReLU Dense(width)        (pre-norm, a transformer MLP)
    "none"             Dense(hidden) ReLU Dense(width)
No activation after the add, so the representations h_i are exactly the residual stream.
"""

import keras
from keras import layers, ops

from zoo.errors import check_choice, check_range
from zoo.layers.drop_path import linear_drop_path_rates
from zoo.layers.norm import batch_normalization
from zoo.layers.residual import BN_EPSILON, BN_MOMENTUM
from zoo.layers.unit import BaseResidualUnit
from zoo.models.base import INPUT_NAME, ResidualModel
from zoo.registry import register_model

NORMS = ("batch", "layer", "none")


@keras.saving.register_keras_serializable(package="zoo")
class ResidualMLPUnit(BaseResidualUnit):
    """y = M(x) + DropPath(F(x)) on (B, width) vectors; F as in the module docstring.

    Args:
        width: features in and out.
        hidden: features inside the branch (default `width`).
        norm: "batch", "layer" or "none".
        skip, skip_options: the skip mapping M, by registered name, and its options.
        drop_path_rate, drop_path_granularity: DropPath on the branch.
        index: the unit's position in its model; offsets the seeds of the skip and DropPath.
        num_units: residual units on the model's skip path; the skip mapping scales its
            strength by it (`depth` of zoo.layers.skip), so the composed path stays bounded.
    """

    def __init__(self, width, hidden=None, norm="batch", **kwargs):
        super().__init__(**kwargs)
        # === Validation ===
        self.width = int(check_range("width", width, low=1, integer=True))
        self.hidden = int(check_range("hidden", hidden if hidden is not None else width, low=1, integer=True))
        self.norm = check_choice("norm", norm, NORMS)

        # === Layers (built in build_branch) ===
        dtype = self.dtype_policy
        self.dense1 = layers.Dense(
            self.hidden, use_bias=norm != "batch", kernel_initializer="he_normal", name="dense1", dtype=dtype
        )
        self.dense2 = layers.Dense(
            self.width, use_bias=norm != "batch", kernel_initializer="he_normal", name="dense2", dtype=dtype
        )
        if norm == "batch":
            self.norms = [
                batch_normalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"bn{i + 1}", dtype=dtype)
                for i in range(2)
            ]
        elif norm == "layer":
            self.norms = [layers.LayerNormalization(epsilon=1e-6, name="ln", dtype=dtype)]
        else:
            self.norms = []

    def build_branch(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] != self.width:
            raise ValueError(
                f"Received input_shape={tuple(input_shape)}; a ResidualMLPUnit of width {self.width} "
                f"takes (batch, {self.width})."
            )
        hidden_shape = (input_shape[0], self.hidden)
        if self.norm == "layer":
            self.norms[0].build(input_shape)
        self.dense1.build(input_shape)
        self.dense2.build(hidden_shape)
        if self.norm == "batch":
            self.norms[0].build(hidden_shape)
            self.norms[1].build(input_shape)

    def branch(self, x, training=False):
        """F(x): (B, width) -> (B, width), before DropPath and any gating scale (zoo.analysis)."""
        if self.norm == "batch":
            x = ops.relu(self.norms[0](self.dense1(x), training=training))
            return self.norms[1](self.dense2(x), training=training)
        if self.norm == "layer":
            x = self.norms[0](x)
        return self.dense2(ops.relu(self.dense1(x)))

    def get_config(self):
        return {**super().get_config(), "width": self.width, "hidden": self.hidden, "norm": self.norm}


@keras.saving.register_keras_serializable(package="zoo")
class ResidualMLP(ResidualModel):
    """A fully-connected ResNet: flatten, Dense stem, `depth` ResidualMLPUnits, linear head.

    Args:
        depth: number of residual units L.
        width: features of the residual stream.
        hidden: features inside each branch (default `width`).
        norm: "batch", "layer" or "none" (see the module docstring).
        skip, skip_options: the skip mapping of every unit, by registered name, and options.
        num_classes: size of the head; 0 gives the last representation h_L.
        input_shape: any shape; it is flattened (e.g. (28, 28, 1) or (784,)).
        drop_path_rate: DropPath rate of the last unit; unit l gets rate * l / (L - 1).
        drop_path_granularity: "sample" or "batch".
        preprocessing, name, dtype: as every zoo model (zoo.models.base.ResidualModel).

    Call: inputs (B, *input_shape) -> logits (B, num_classes).
    forward_features: inputs -> the last representation h_L (B, width).
    """

    # What the registered name fixes: a preset of this name must have these (zoo.presets checks it).
    ARCHITECTURE_ARGUMENTS = ("depth", "width")

    def __init__(
        self,
        depth=8,
        width=128,
        hidden=None,
        norm="batch",
        skip="identity",
        skip_options=None,
        num_classes=10,
        input_shape=(28, 28, 1),
        drop_path_rate=0.0,
        drop_path_granularity="sample",
        preprocessing=None,
        name=None,
        dtype=None,
        **kwargs,
    ):
        # === Validation ===
        depth = int(check_range("depth", depth, low=1, integer=True))
        width = int(check_range("width", width, low=1, integer=True))
        hidden = None if hidden is None else int(check_range("hidden", hidden, low=1, integer=True))
        check_choice("norm", norm, NORMS)
        skip_options, num_classes, drop_path_rate = self.check_common_arguments(
            skip, skip_options, num_classes, drop_path_rate, drop_path_granularity
        )
        input_shape = tuple(int(d) for d in input_shape)
        if not input_shape or any(d < 1 for d in input_shape):
            raise ValueError(f"Received input_shape={input_shape}; expected positive sizes, e.g. (28, 28, 1).")
        rates = linear_drop_path_rates(drop_path_rate, depth)

        # === Layers and functional model ===
        inputs = keras.Input(shape=input_shape, name=INPUT_NAME)
        x = layers.Flatten(name="flatten")(inputs) if len(input_shape) > 1 else inputs
        x = layers.Dense(width, kernel_initializer="he_normal", name="stem")(x)
        common = dict(skip=skip, skip_options=skip_options, drop_path_granularity=drop_path_granularity)
        units = [
            ResidualMLPUnit(width, **common, hidden=hidden, norm=norm, drop_path_rate=rate, index=i, num_units=depth,
                            name=f"unit{i + 1}")
            for i, rate in enumerate(rates)
        ]
        features, unit_names = self.stack_units(x, units)

        # === Head, functional model, config: these arguments (zoo.models.base) ===
        super().__init__(
            inputs=inputs, features=features, head_input=features, residual_units=unit_names, arguments=locals(), **kwargs
        )


def fmnist_residual_mlp(depth=8, **kwargs):
    """A residual MLP for 28x28 Fashion-MNIST images, named after its depth."""
    return ResidualMLP(**fmnist_residual_mlp_arguments(depth, **kwargs))


def fmnist_residual_mlp_arguments(depth=8, **kwargs):
    """The `ResidualMLP` arguments of `fmnist_residual_mlp(depth, **kwargs)`."""
    kwargs.setdefault("name", f"resmlp_fmnist_d{depth}")
    return dict(depth=depth, **kwargs)


fmnist_residual_mlp.forwards_to, fmnist_residual_mlp.arguments = ResidualMLP, fmnist_residual_mlp_arguments

# === Presets: name -> (builder, defaults) ===
MLP_PRESETS = {
    f"resmlp_fmnist_d{depth}": (fmnist_residual_mlp, dict(depth=depth, width=128, input_shape=(28, 28, 1), num_classes=10))
    for depth in (4, 8, 16)
}

for _name, (_builder, _defaults) in MLP_PRESETS.items():
    register_model(_name, _builder, family="mlp", **_defaults)
