"""What a model's weights expect of its inputs (as timm's `pretrained_cfg`), and the one place
the normalisation constants of the zoo's data sets and weight sources are written.

A preprocessing config is a dict {"rescale": r, "mean": [...], "std": [...]}: raw inputs x
become (x * r - mean) / std, channel by channel on the last axis (one value for every channel,
or one per channel). `zoo.models.base.ResidualModel.preprocessing` holds it with the model, so
it survives get_config/from_config and `.keras` files; presets fill it from their metadata.
"""

import math

import numpy as np

# (mean, std) on [0, 1] pixels, by where they come from.
NORMALIZATION = {
    # ImageNet (torchvision, timm's ResNets; also the CIFAR ResNets of akamaster/pytorch_resnet_cifar10)
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # timm's ViTs (the Inception convention: [-1, 1])
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    # the training sets' own statistics (zoo.data)
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "digits": ((0.3,), (0.38,)),
    "image_folder": ((0.5,), (0.25,)),
    # float data used as loaded (MNIST-1D, the adding problem)
    "none": ((0.0,), (1.0,)),
}

KEYS = ("rescale", "mean", "std")


def preprocessing_config(rescale=1.0, mean=(0.0,), std=(1.0,), channels=None):
    """A checked preprocessing config; `channels` (the input's last axis), when given, must
    take the mean and std (one value, or one per channel)."""
    def numbers(key, values, positive):
        values = [values] if isinstance(values, (int, float)) else values
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            values = None
        if not values or any(not math.isfinite(v) or (positive and v <= 0) for v in values):
            raise ValueError(
                f"Received {key}={values if values is None else list(values)!r}; expected a list of finite "
                f"numbers{' > 0' if positive else ''}, one value or one per channel."
            )
        if channels is not None and len(values) not in (1, channels):
            raise ValueError(
                f"Received {key} of {len(values)} values for inputs of {channels} channels; expected 1 or {channels}."
            )
        return values

    try:
        rescale = float(rescale)
    except (TypeError, ValueError):
        rescale = float("nan")
    if not math.isfinite(rescale) or rescale <= 0:
        raise ValueError(f"Received rescale={rescale!r}; expected a finite number > 0 (e.g. 1 / 255 for uint8 images).")
    return {"rescale": rescale, "mean": numbers("mean", mean, False), "std": numbers("std", std, True)}


def from_dict(config, channels=None):
    """A checked config from a dict with the keys rescale, mean, std (as in `metadata.json`;
    other keys there, e.g. "note", are not part of it)."""
    if not isinstance(config, dict) or not set(KEYS) & set(config):
        raise ValueError(f"Received preprocessing={config!r}; expected a dict with keys {list(KEYS)}, or None.")
    return preprocessing_config(**{k: config[k] for k in KEYS if k in config}, channels=channels)


def named(name, rescale=1 / 255):
    """The config of a named normalisation (see NORMALIZATION), for inputs scaled by `rescale`."""
    if name not in NORMALIZATION:
        raise ValueError(f"Received {name!r}; known normalisations: {', '.join(NORMALIZATION)}.")
    mean, std = NORMALIZATION[name]
    return preprocessing_config(rescale, mean, std)


def for_channels(config, channels):
    """`config` for inputs of `channels` channels: per-channel values of another count become
    their average (a model whose stem was adapted to gray images, or from gray to colour)."""
    if config is None:
        return None
    return {
        **config,
        **{k: (config[k] if len(config[k]) in (1, channels) else [float(np.mean(config[k]))]) for k in ("mean", "std")},
    }


def apply(config, x):
    """(x * rescale - mean) / std as float32 numpy; `x` e.g. uint8 images (B, H, W, C)."""
    x = np.asarray(x).astype("float32")
    return ((x * np.float32(config["rescale"]) - np.float32(config["mean"])) / np.float32(config["std"])).astype("float32")
