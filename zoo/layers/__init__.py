"""Backend-agnostic building blocks shared by every model family."""

from zoo.layers.drop_path import DropPath, linear_drop_path_rates
from zoo.layers.residual import PLACEMENTS, ResidualUnit, SymmetricConv2D
from zoo.layers.skip import (
    Conv1x1Skip,
    CorrelationSkip,
    DropoutSkip,
    ExclusiveGateSkip,
    IdentitySkip,
    MatrixSkip,
    NoSkip,
    OrthogonalSkip,
    ScaleSkip,
    ShortcutGateSkip,
    SkipMapping,
    SparseSkip,
    get_skip_class,
    list_skips,
    make_skip,
    register_skip,
    skip_option_names,
)
