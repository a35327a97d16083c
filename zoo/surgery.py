"""Model surgery: change a built model while keeping what it learned.

    sparse = zoo.swap_skip(model, "sparse", k=4, seed=0)   # another skip mapping, branches kept
    zoo.freeze_trunk(model)                                # only the classifier head trains
    skipped = transfer_weights(pretrained, new_model)      # fine-tuning: new head, adapted stem

`swap_skip` works for every zoo model class whose `get_config()` has "skip" and "skip_options"
keys and whose `from_config` rebuilds it: the new model is built from the old config with the
skip replaced, and every weight outside the skip mappings (paths without a `/skip/` part) is
copied bit-identically by weight path. `transfer_weights` copies weights by path, as timm's
pretrained loading does.
"""

import keras
import numpy as np

from zoo.errors import WeightsArchitectureError
from zoo.layers.skip import get_skip_class


def is_skip_weight(path):
    """Weights of a skip mapping live under `.../skip/...` (the units name their skip "skip")."""
    return "/skip/" in f"/{path}"


def swap_skip(model, skip, skip_options=None, **options):
    """A new model like `model` with skip mapping `skip`; branch weights copied exactly.

    Args:
        model: a zoo model whose config has "skip" and "skip_options".
        skip: the registered name of the new mapping, e.g. "orthogonal", "sparse".
        skip_options: its options as a dict, or give them as keywords (`k=4, seed=0`).

    Swapping to the model's own mapping and options reproduces its outputs exactly. The new
    mapping's weights (a matrix, a gate) are made from its options, not copied.
    """
    config = model.get_config()
    if "skip" not in config or "skip_options" not in config:
        raise ValueError(
            f"swap_skip needs a model whose get_config() has 'skip' and 'skip_options' keys; "
            f"{type(model).__name__} ({model.name!r}) has {sorted(config)}."
        )
    get_skip_class(skip)  # an unknown name says which are valid
    new_options = {**dict(skip_options or {}), **options}
    config = {**config, "skip": skip, "skip_options": new_options}
    swapped = type(model).from_config(config)

    old = {w.path: w for w in model.weights}
    new = {w.path: w for w in swapped.weights}
    if len(old) != len(model.weights) or len(new) != len(swapped.weights):
        raise RuntimeError(f"Model {model.name!r} has weights with repeated paths; swap_skip matches weights by path.")
    old_branch = [p for p in old if not is_skip_weight(p)]
    new_branch = [p for p in new if not is_skip_weight(p)]
    if sorted(old_branch) != sorted(new_branch):
        differ = sorted(set(old_branch) ^ set(new_branch))
        raise RuntimeError(f"Rebuilding {model.name!r} with skip={skip!r} changed its non-skip weights: {differ[:5]}.")
    values = []
    for path in old_branch:
        value = np.asarray(keras.ops.convert_to_numpy(old[path]))
        if value.shape != tuple(new[path].shape):
            raise RuntimeError(f"Weight {path} has shape {value.shape} in the model, {tuple(new[path].shape)} after the swap.")
        values.append((new[path], value))
    for variable, value in values:
        variable.assign(value)
    return swapped


def transfer_weights(source, target, head="head"):
    """Copy `source`'s weights into `target` by path, for fine-tuning (as timm's pretrained
    loading does): the classifier head is left at its initialization when its shape differs;
    a first conv whose input channels differ is adapted (summed to 1 channel, or repeated and
    rescaled); any other difference is an error. Returns the list of weight paths not copied."""
    src = {w.path: w for w in source.weights}
    plan, skipped = [], []
    in_src, in_tgt = source.input_shape[-1], target.input_shape[-1]
    for w in target.weights:
        s = src.get(w.path)
        value = None if s is None else keras.ops.convert_to_numpy(s)
        if value is not None and value.shape == tuple(w.shape):
            plan.append((w, value))
        elif w.path.startswith(f"{head}/"):
            skipped.append(w.path)
        elif value is not None and value.ndim == 4 and value.shape[2] == in_src and tuple(w.shape) == value.shape[:2] + (in_tgt,) + value.shape[3:]:
            plan.append((w, adapt_input_conv(value, in_tgt)))
        else:
            raise WeightsArchitectureError(
                f"Cannot transfer weight {w.path} of shape {tuple(w.shape)}: the source model has "
                f"{'no such weight' if value is None else f'shape {value.shape}'}. Only num_classes (the head), "
                "the input channels (the first conv) and the skip mapping may differ."
            )
    for w, value in plan:
        w.assign(value)
    return skipped


def adapt_input_conv(kernel, in_channels):
    """timm's adapt_input_conv for a (kh, kw, c_in, c_out) kernel: to 1 channel by summing,
    to more by repeating and scaling so the response to a gray image is unchanged."""
    c = kernel.shape[2]
    if in_channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    reps = -(-in_channels // c)
    return np.tile(kernel, (1, 1, reps, 1))[:, :, :in_channels] * (c / in_channels)


def freeze_trunk(model, head="head"):
    """Make every layer but the classifier head non-trainable (BatchNorm then runs in inference
    mode, as when fine-tuning a frozen backbone)."""
    found = False
    for layer in model.layers:
        layer.trainable = layer.name == head
        found |= layer.name == head
    if not found:
        raise ValueError(f"Model {model.name!r} has no layer named {head!r} (num_classes=0?); nothing would train.")
    return model
