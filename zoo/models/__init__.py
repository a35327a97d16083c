"""Model families, each a ResidualModel (zoo.models.base). Importing this package registers every preset."""

from zoo.models.base import ResidualModel
from zoo.models.resnet import RESNET_PRESETS, ResNet, cifar_resnet, imagenet_resnet
from zoo.models.vit import VIT_PRESETS, ViT, vit_by_size
from zoo.models.rnn import RNN_PRESETS, ResidualRNN, ResidualRNNCell, ResidualStackedRNN
from zoo.models.mlp import MLP_PRESETS, ResidualMLP, ResidualMLPUnit
