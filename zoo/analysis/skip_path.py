"""The composed skip path of a model, and the stream it carries at initialisation.

A signal that bypasses every branch travels M_L T_L ... M_1 T_1, where M_l is unit l's skip
mapping and T_l its shortcut (the identity, or He et al.'s option A where the shape changes:
every s-th pixel, zero-padded channels). Depth-stable mappings keep their promise for this
product (zoo.layers.skip), which is what these functions measure:

    skip_matrix(unit)               # M of one unit, (C, C) numpy float64
    skip_path(model)                # the whole path, (C_L, C_0), transitions included
    skip_path(model, width=64)      # the units of one width, (64, 64)
    recurrent_skip_path(cell)       # M^T of a recurrent cell over its horizon
    stream_rms(model, x)            # RMS of every unit's output, train-mode BatchNorm

Only fixed linear mappings have a matrix (identity, none, scale, conv1x1 without `norm`,
orthogonal, sparse, correlation); gates and dropout depend on the input or a random draw.
"""

import keras
import numpy as np
from keras import ops

from zoo.layers.skip import (
    Conv1x1Skip,
    IdentitySkip,
    MatrixSkip,
    NoSkip,
    ScaleSkip,
)


def _units(model):
    units = getattr(model, "residual_units", None)
    if not units:
        raise ValueError(f"{type(model).__name__} has no residual_units; pass a zoo model.")
    return list(units)


def _out_channels(unit):
    for attr in ("out_channels", "units", "width"):
        if isinstance(getattr(unit, attr, None), int):
            return getattr(unit, attr)
    return int(unit.output.shape[-1])


def skip_matrix(unit):
    """M of `unit`'s skip mapping as a (C, C) float64 array, acting as y = M @ x on channels."""
    skip = unit.skip
    channels = _out_channels(unit)
    if isinstance(skip, MatrixSkip):
        return np.asarray(keras.ops.convert_to_numpy(skip.matrix()), dtype="float64")
    if isinstance(skip, IdentitySkip):
        return np.eye(channels)
    if isinstance(skip, NoSkip):
        return np.zeros((channels, channels))
    if isinstance(skip, ScaleSkip):
        return skip.lambda_ * np.eye(channels)
    if isinstance(skip, Conv1x1Skip) and not skip.norm:
        return np.asarray(keras.ops.convert_to_numpy(skip.kernel), dtype="float64").T
    raise ValueError(
        f"The skip mapping {getattr(skip, 'skip_name', type(skip).__name__)!r} of unit {unit.name!r} "
        "is not a fixed linear map (gates depend on the input, dropout on a random draw, a 1x1 conv "
        "with norm=True on batch statistics); skip_matrix covers identity, none, scale, conv1x1, "
        "orthogonal, sparse and correlation."
    )


def _transition(unit, in_channels):
    """T of the unit's shortcut on channels: (C_out, C_in)."""
    out = _out_channels(unit)
    if not getattr(unit, "needs_shortcut_change", False):
        return None
    if unit.downsample != "pad":
        raise ValueError(
            f"Unit {unit.name!r} changes shape through a learned projection, which is no fixed part "
            "of the skip path; use skip_path(model, width=...) for the units of one width, or "
            "downsample='pad' (option A) for a path through the whole network."
        )
    extra = out - in_channels
    embed = np.zeros((out, in_channels))
    embed[extra // 2 : extra // 2 + in_channels] = np.eye(in_channels)
    return embed


def skip_path(model, width=None):
    """The product of the skip maps of `model`'s residual units, input to output.

    `width=None`: the whole path M_L T_L ... M_1 T_1, shape (C_L, C_0), with option A
    transitions (a projection raises: it is learned). `width=C`: the product of the mappings of
    the units that output C channels, (C, C), transitions left out (the path within a stage).
    """
    product = None
    for unit in _units(model):
        matrix = skip_matrix(unit)
        if width is not None:
            if matrix.shape[0] == width:
                product = matrix if product is None else matrix @ product
            continue
        if product is not None:
            transition = _transition(unit, product.shape[0])
            if transition is not None:
                product = transition @ product
        product = matrix if product is None else matrix @ product
    if product is None:
        raise ValueError(f"No residual unit of {type(model).__name__} outputs {width} channels.")
    return product


def recurrent_skip_path(cell, steps=None):
    """M^steps for a recurrent cell applying M at every step (`steps` defaults to its horizon)."""
    steps = int(cell.horizon if steps is None else steps)
    return np.linalg.matrix_power(skip_matrix(cell), steps)


def stream_rms(model, inputs, training=True):
    """The root mean square of every residual unit's output on `inputs`, input to output.

    `training=True` runs BatchNorm on the batch statistics, as in the first training step
    (moving statistics are updated by the call; use a throwaway model). Functional zoo
    models only (ResNet, ViT, ResidualMLP, ResidualStackedRNN).
    """
    units = _units(model)
    probe = keras.Model(model.input, [unit.output for unit in units])
    outputs = probe(inputs, training=training)
    return [float(ops.convert_to_numpy(ops.sqrt(ops.mean(ops.square(y))))) for y in outputs]
