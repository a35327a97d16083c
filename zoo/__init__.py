"""zoo: a Keras 3 model zoo whose subject is the skip connection.

    import zoo
    model = zoo.get_model("resnet56_cifar", skip="sparse", skip_options={"k": 4, "seed": 0})
    model = zoo.get_model("resnet56_cifar.cifar10")       # with shipped weights (zoo.presets)

Runs unchanged on JAX, TensorFlow and PyTorch (set KERAS_BACKEND).
"""

from zoo import data, layers, models
from zoo.errors import UnknownNameError
from zoo.layers import DropPath, ResidualUnit, SkipMapping, list_skips, make_skip, register_skip
from zoo.models import ResidualModel, ResNet
from zoo.models import ViT
from zoo.models import ResidualRNN, ResidualRNNCell, ResidualStackedRNN
from zoo.models import ResidualMLP, ResidualMLPUnit
from zoo.registry import register_model
from zoo.factory import get_model, list_models
from zoo import convert, presets, registry
from zoo.presets import get_preset_metadata, load_weights, save_preset
from zoo.surgery import finish_skip_warmup, freeze_trunk, swap_skip
from zoo.version import __version__

__all__ = [
    "DropPath",
    "ResNet",
    "ResidualMLP",
    "ResidualMLPUnit",
    "ResidualModel",
    "ResidualRNN",
    "ResidualRNNCell",
    "ResidualStackedRNN",
    "ResidualUnit",
    "SkipMapping",
    "UnknownNameError",
    "ViT",
    "freeze_trunk",
    "get_model",
    "get_preset_metadata",
    "list_models",
    "list_skips",
    "load_weights",
    "make_skip",
    "register_model",
    "register_skip",
    "save_preset",
    "swap_skip",
    "finish_skip_warmup",
]
