"""Training steps that the zoo adds to Keras' own (one model API on every backend)."""

from zoo.training.drop_path_freeze import DropPathFreeze
from zoo.training.distribute import DISTRIBUTE_MODES, configure_distribution, initialize_processes, process_info
from zoo.training.optimizers import SGD, Adam, CoupledWeightDecay
