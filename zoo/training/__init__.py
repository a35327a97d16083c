"""Training steps that the zoo adds to Keras' own (one model API on every backend)."""

from zoo.training.drop_path_freeze import DropPathFreeze
from zoo.training.distribute import (
    DISTRIBUTE_MODES,
    configure_distribution,
    configure_vit_model_parallel,
    distribute_batches,
    distribution_scope,
    initialize_processes,
    prepare_fit,
    process_info,
    vit_layout_map,
)
from zoo.training.optimizers import SGD, Adam, CoupledWeightDecay
