"""Model families. Importing this package registers every preset."""

from zoo.models.resnet import RESNET_PRESETS, ResNet, cifar_resnet, imagenet_resnet
from zoo.models.mlp import MLP_PRESETS, ResidualMLP, ResidualMLPUnit
