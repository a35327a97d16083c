"""Residual recurrent networks on any skip mapping, over time and over depth.

Over time (`ResidualRNN`): a cell h_t = M(h_{t-1}) + DropPath(F(x_t, h_{t-1})) with
F(x, h) = activation(W x + U h + b), tanh by default. With M orthogonal the recurrence keeps
the norm of its state path (the invariant Lechner et al. 2022, arXiv 2206.01261, name for RNNs; the
constructions are this project's, see zoo.layers.skip).

Over depth (`ResidualStackedRNN`): stacked LSTM or GRU layers,
y_l = M(y_{l-1}) + DropPath(RNN_l(y_{l-1})), after an input projection to the hidden width.

Each model is functional: sequences (B, T, F) -> logits (B, num_classes).
"""

import keras
from keras import layers, ops

# Keras' RNN layer draws a cell's random masks before its time loop only for cells of this
# mixin (what keeps the loop body stateless, e.g. inside a JAX scan); it is not exported.
from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell

from zoo.errors import check_choice, check_range
from zoo.layers.drop_path import linear_drop_path_rates
from zoo.layers.skip import BlendSkip, Conv1x1Skip, DropoutSkip, skip_option_names
from zoo.layers.unit import BaseResidualUnit
from zoo.models.base import INPUT_NAME, ResidualModel
from zoo.registry import register_model

POOLS = ("last", "mean")
RECURRENT_LAYERS = {"lstm": layers.LSTM, "gru": layers.GRU}


def drop_path_schedule(rate, num_units):
    """p_l = rate * l / (L - 1); a single unit is the last one and gets `rate`."""
    return [float(rate)] if num_units == 1 else linear_drop_path_rates(rate, num_units)


@keras.saving.register_keras_serializable(package="zoo")
class ResidualRNNCell(DropoutRNNCell, BaseResidualUnit):
    """h_t = M(h_{t-1}) + DropPath(activation(W x_t + U h_{t-1} + b)), for `keras.layers.RNN`.

    Args:
        units: width of the hidden state h.
        activation: of F; "tanh" by default.
        skip, skip_options: the skip mapping M on h (registered name, options).
        drop_path_rate, drop_path_granularity: DropPath on F.
        index: the cell's position among its model's residual units (offsets the seeds).
        horizon: the number of steps the recurrence applies M (the sequence length): M^T is
            the cell's skip path, and the mapping scales its strength by `horizon` so that
            M^horizon stays bounded (an orthogonal M is exact at any horizon).
        kernel_initializer, recurrent_initializer, bias_initializer: of W, U, b.

    Randomness (DropPath and the `dropout` skip mapping) is drawn once per sequence, before
    the time loop, and shared by all time steps, as Keras' LSTM dropout masks (variational,
    Gal & Ghahramani 2016): the loop body stays stateless, so the cell trains on every
    backend. A dropped sample therefore runs h_t = M(h_{t-1}) for its whole sequence.

    Step: inputs (B, F), state [h (B, units)] -> (h_t, [h_t]).
    """

    def __init__(
        self,
        units,
        activation="tanh",
        horizon=1,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        **kwargs,
    ):
        horizon = int(check_range("horizon", horizon, low=1, integer=True))
        super().__init__(horizon=horizon, **kwargs)
        self.units = int(check_range("units", units, low=1, integer=True))
        self.activation = keras.activations.get(activation)
        self.horizon = horizon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        if isinstance(self.skip, BlendSkip):
            raise ValueError(
                "Received skip='blend' in a ResidualRNNCell; the warm-up counts training calls, and "
                "inside the time loop every step would count. Swap a recurrent cell's skip directly."
            )
        if isinstance(self.skip, Conv1x1Skip) and self.skip.norm:
            raise ValueError(
                "Received skip='conv1x1' with norm=True in a ResidualRNNCell; batch statistics "
                "cannot be updated inside the time loop. Use norm=False in a recurrent cell."
            )
        self.state_size = self.units
        self.output_size = self.units
        # DropoutRNNCell's protocol; the masks themselves are ours (see get_dropout_mask).
        self.dropout = 0.0
        self.recurrent_dropout = 0.0
        self._drop_path_factor = None
        self._skip_dropout_mask = None

    def build_branch(self, input_shape):
        features = input_shape[-1]
        if features is None:
            raise ValueError(f"ResidualRNNCell needs a known feature axis; received input shape {tuple(input_shape)}.")
        self.kernel = self.add_weight(name="kernel", shape=(features, self.units), initializer=self.kernel_initializer)
        self.recurrent_kernel = self.add_weight(
            name="recurrent_kernel", shape=(self.units, self.units), initializer=self.recurrent_initializer
        )
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer=self.bias_initializer)

    def residual_shape(self, input_shape):
        # The add is on the state h (B, units). Built here, not on first call: inside the
        # RNN's loop variables cannot be created.
        return (None, self.units)

    # === Per-sequence random masks (DropoutRNNCell protocol, called before the loop) ===
    def get_dropout_mask(self, step_input):
        if self._drop_path_factor is None and self.drop_path_rate > 0:
            # DropPath of ones is its keep multiplier: 0 or 1 / (1 - rate) a sample.
            self._drop_path_factor = self.drop_path(ops.ones_like(step_input[:, :1]), training=True)
        return self._drop_path_factor

    def get_recurrent_dropout_mask(self, state):
        if self._skip_dropout_mask is None and isinstance(self.skip, DropoutSkip):
            # The mapping of ones in training is its multiplier: m (or m / (1 - rate) inverted).
            self._skip_dropout_mask = self.skip(ops.ones_like(state), training=True)
        return self._skip_dropout_mask

    def reset_dropout_mask(self):
        self._drop_path_factor = None

    def reset_recurrent_dropout_mask(self):
        self._skip_dropout_mask = None

    def branch(self, inputs, h, training=None):
        """F(x_t, h_{t-1}) = activation(W x_t + U h_{t-1} + b)."""
        return self.activation(ops.matmul(inputs, self.kernel) + ops.matmul(h, self.recurrent_kernel) + self.bias)

    # === The residual add with per-sequence randomness (hooks of BaseResidualUnit.residual) ===
    def add_skip(self, h, branch, training=None):
        if isinstance(self.skip, DropoutSkip):
            mask = self.get_recurrent_dropout_mask(h) if training else None
            mapped = self.skip(h, training=False) if mask is None else h * ops.cast(mask, h.dtype)
            return mapped + branch
        return self.skip.add(h, branch, training=training)

    def apply_drop_path(self, branch, training=None):
        if training and self.drop_path_rate > 0:
            return branch * ops.cast(self.get_dropout_mask(branch), branch.dtype)
        return branch

    def call(self, inputs, states, training=None):
        h = states[0] if isinstance(states, (list, tuple)) else states
        h = self.residual(h, self.branch(inputs, h), training=training)
        return h, [h]

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "horizon": self.horizon,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }


@keras.saving.register_keras_serializable(package="zoo")
class RecurrentResidualUnit(BaseResidualUnit):
    """y = M(x) + DropPath(RNN(x)) on sequences (B, T, D), RNN an LSTM or GRU of width D
    returning its whole sequence (sublayer `rnn`). `num_units`: the units of the model's skip
    path over depth, by which the mapping scales its strength."""

    def __init__(self, units, cell="lstm", **kwargs):
        super().__init__(**kwargs)
        self.units = int(check_range("units", units, low=1, integer=True))
        self.cell = check_choice("cell", cell, tuple(RECURRENT_LAYERS))
        self.rnn = RECURRENT_LAYERS[cell](self.units, return_sequences=True, name="rnn", dtype=self.dtype_policy)

    def build_branch(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] != self.units:
            raise ValueError(
                f"RecurrentResidualUnit of width {self.units} takes sequences (batch, steps, "
                f"{self.units}); received input shape {tuple(input_shape)}."
            )
        self.rnn.build(input_shape)

    def branch(self, x, training=None):
        return self.rnn(x, training=training)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "cell": self.cell}


@keras.saving.register_keras_serializable(package="zoo")
class SequencePool(keras.layers.Layer):
    """(B, T, D) -> (B, D): the last time step ("last") or the mean over time ("mean")."""

    def __init__(self, mode="last", **kwargs):
        super().__init__(**kwargs)
        self.mode = check_choice("mode", mode, POOLS)

    def call(self, x):
        return x[:, -1] if self.mode == "last" else ops.mean(x, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _check_sequence_shape(input_shape):
    input_shape = tuple(input_shape)
    if len(input_shape) != 2 or input_shape[1] is None or int(input_shape[1]) < 1:
        raise ValueError(
            f"Received input_shape={input_shape}; a recurrent model takes rank-2 sequences "
            "(steps, features) with a known feature size, e.g. (28, 28) or (40, 1)."
        )
    if input_shape[0] is not None and int(input_shape[0]) < 1:
        raise ValueError(f"Received input_shape={input_shape}; the number of steps must be positive.")
    return input_shape


class _SequenceModelContract(ResidualModel):
    """What the two recurrent models add to the zoo's contract: their input shape's name."""

    @property
    def sequence_shape(self):
        """(steps, features): the `input_shape` argument; steps may be None."""
        return tuple(self.input_shape[1:])


@keras.saving.register_keras_serializable(package="zoo")
class ResidualRNN(_SequenceModelContract):
    """Residual recurrence over time: `num_layers` RNN layers of `ResidualRNNCell`s.

    Args:
        units: hidden width.
        num_layers: stacked recurrent layers (each returns its sequence to the next).
        activation: of F in every cell ("tanh").
        input_projection: a Dense(units) on every step before the first layer.
        skip, skip_options: the skip mapping M on h_{t-1}.
        pool: "last" (the final state) or "mean" (mean over time of the last layer's states).
        num_classes: size of the head; 0 gives the pooled features.
        input_shape: (steps, features); steps may be None.
        drop_path_rate, drop_path_granularity: DropPath on F, schedule over the cells.
        horizon: the steps over which each cell's skip path M^T is kept bounded; by default
            the number of input steps, which a model with `steps=None` and a mapping that
            scales with it (sparse, correlation) must be given.
        preprocessing, name, dtype: as every zoo model (zoo.models.base.ResidualModel).

    Call: inputs, sequences (B, T, F) -> logits (B, num_classes).
    forward_features: inputs -> the pooled features (B, units), before the head.

    The residual units are the cells (one per layer, `rnn{l}` layers' `.cell`): each is a
    unit h_t = M(h_{t-1}) + DropPath(F) applied at every time step.
    """

    # What the registered name fixes: a preset of this name must have these (zoo.presets checks it).
    ARCHITECTURE_ARGUMENTS = ("units", "num_layers")

    def __init__(
        self,
        units=64,
        num_layers=1,
        activation="tanh",
        input_projection=False,
        skip="identity",
        skip_options=None,
        pool="last",
        num_classes=10,
        input_shape=(28, 28),
        drop_path_rate=0.0,
        drop_path_granularity="sample",
        horizon=None,
        preprocessing=None,
        name=None,
        dtype=None,
        **kwargs,
    ):
        # === Validation ===
        units = int(check_range("units", units, low=1, integer=True))
        num_layers = int(check_range("num_layers", num_layers, low=1, integer=True))
        check_choice("pool", pool, POOLS)
        skip_options, num_classes, drop_path_rate = self.check_common_arguments(
            skip, skip_options, num_classes, drop_path_rate, drop_path_granularity
        )
        input_shape = _check_sequence_shape(input_shape)
        rates = drop_path_schedule(drop_path_rate, num_layers)
        if horizon is None:
            if input_shape[0] is None and "horizon" not in skip_option_names(skip):
                horizon = 1  # the mapping does not scale with the sequence length
            elif input_shape[0] is None:
                raise ValueError(
                    f"Received input_shape={input_shape} with no horizon; a recurrence over sequences of "
                    "unknown length needs horizon=T, the length over which its skip path M^T is kept "
                    "bounded (e.g. the longest sequence it will see)."
                )
            else:
                horizon = input_shape[0]
        horizon = int(check_range("horizon", horizon, low=1, integer=True))
        input_projection = bool(input_projection)

        # === Layers and functional model ===
        inputs = keras.Input(shape=input_shape, name=INPUT_NAME)
        x = layers.Dense(units, name="input_proj")(inputs) if input_projection else inputs
        common = dict(skip=skip, skip_options=skip_options, drop_path_granularity=drop_path_granularity)
        layer_names = []
        for i in range(num_layers):
            cell = ResidualRNNCell(
                units,
                **common,
                activation=activation,
                drop_path_rate=rates[i],
                index=i,
                horizon=horizon,
                name="cell",
            )
            last = i == num_layers - 1
            rnn = layers.RNN(cell, return_sequences=not last or pool == "mean", name=f"rnn{i}")
            x = rnn(x)
            layer_names.append(rnn.name)
        pooled = SequencePool(pool, name="pool")(x) if pool == "mean" else layers.Identity(name="pool")(x)

        # === Head, functional model, config: these arguments (zoo.models.base) ===
        super().__init__(
            inputs=inputs, features=pooled, head_input=pooled, residual_units=[f"{n}/cell" for n in layer_names],
            arguments=locals(), **kwargs,
        )  # the residual units are the cells, one per recurrent layer


@keras.saving.register_keras_serializable(package="zoo")
class ResidualStackedRNN(_SequenceModelContract):
    """Residual recurrence over depth: input_proj, then `depth` units
    y_l = M(y_{l-1}) + DropPath(RNN_l(y_{l-1})) of LSTM or GRU layers, then pool and head.

    Args:
        units: width of every layer (the input is projected to it by `input_proj`).
        depth: number of residual units.
        cell: "lstm" or "gru".
        skip, skip_options: the skip mapping M on the sequence features.
        pool: "last" (last time step) or "mean" (mean over time).
        num_classes, input_shape, drop_path_rate, drop_path_granularity, preprocessing, name,
            dtype: as `ResidualRNN`.

    Call: inputs, sequences (B, T, F) -> logits (B, num_classes).
    forward_features: inputs -> the pooled features (B, units), before the head.
    """

    # What the registered name fixes: a preset of this name must have these (zoo.presets checks it).
    ARCHITECTURE_ARGUMENTS = ("units", "depth", "cell")

    def __init__(
        self,
        units=64,
        depth=2,
        cell="lstm",
        skip="identity",
        skip_options=None,
        pool="last",
        num_classes=10,
        input_shape=(28, 28),
        drop_path_rate=0.0,
        drop_path_granularity="sample",
        preprocessing=None,
        name=None,
        dtype=None,
        **kwargs,
    ):
        # === Validation ===
        units = int(check_range("units", units, low=1, integer=True))
        depth = int(check_range("depth", depth, low=1, integer=True))
        check_choice("cell", cell, tuple(RECURRENT_LAYERS))
        check_choice("pool", pool, POOLS)
        skip_options, num_classes, drop_path_rate = self.check_common_arguments(
            skip, skip_options, num_classes, drop_path_rate, drop_path_granularity
        )
        input_shape = _check_sequence_shape(input_shape)
        rates = drop_path_schedule(drop_path_rate, depth)

        # === Layers and functional model ===
        inputs = keras.Input(shape=input_shape, name=INPUT_NAME)
        x = layers.Dense(units, name="input_proj")(inputs)
        common = dict(skip=skip, skip_options=skip_options, drop_path_granularity=drop_path_granularity)
        stack = [
            RecurrentResidualUnit(units, **common, cell=cell, drop_path_rate=rate, index=i, num_units=depth, name=f"unit{i}")
            for i, rate in enumerate(rates)
        ]
        x, unit_names = self.stack_units(x, stack)
        pooled = SequencePool(pool, name="pool")(x)

        # === Head, functional model, config: these arguments (zoo.models.base) ===
        super().__init__(
            inputs=inputs, features=pooled, head_input=pooled, residual_units=unit_names, arguments=locals(), **kwargs
        )


# === Presets: name -> (builder, defaults) ===
_FMNIST_ROWS = dict(input_shape=(28, 28), num_classes=10)  # Fashion-MNIST, one image row a step
_MNIST1D = dict(input_shape=(40, 1), num_classes=10)  # MNIST-1D (Greydanus 2020), 40 steps x 1
_ADDING = dict(input_shape=(None, 2), num_classes=1)  # zoo.data.synthetic.adding_problem

ADDING_HORIZON = 200  # the longest adding-problem sequences the recipes train on

RNN_PRESETS = {
    "resrnn_fmnist_rows": (ResidualRNN, dict(units=128, skip="orthogonal", **_FMNIST_ROWS)),
    "resgru_fmnist_rows": (ResidualStackedRNN, dict(units=64, depth=3, cell="gru", **_FMNIST_ROWS)),
    "resrnn_mnist1d": (ResidualRNN, dict(units=128, skip="orthogonal", **_MNIST1D)),
    "resgru_mnist1d": (ResidualStackedRNN, dict(units=64, depth=3, cell="gru", **_MNIST1D)),
    "reslstm_mnist1d": (ResidualStackedRNN, dict(units=64, depth=3, cell="lstm", **_MNIST1D)),
    "resrnn_adding": (ResidualRNN, dict(units=64, skip="orthogonal", horizon=ADDING_HORIZON, **_ADDING)),
    "reslstm_adding": (ResidualStackedRNN, dict(units=64, depth=2, cell="lstm", **_ADDING)),
}

for _name, (_builder, _defaults) in RNN_PRESETS.items():
    register_model(_name, _builder, family="rnn", **_defaults)
