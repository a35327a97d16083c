"""Training steps that the zoo adds to Keras' own (one model API on every backend)."""

from zoo.training.drop_path_freeze import DropPathFreeze
from zoo.training.distribute import (
    DISTRIBUTE_MODES,
    configure_distribution,
    configure_vit_model_parallel,
    initialize_processes,
    process_info,
    vit_layout_map,
)
from zoo.training.optimizers import SGD, Adam, CoupledWeightDecay
