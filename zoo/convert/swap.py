"""Swapping the skip mapping of a trained model, every branch weight kept.

    sparse = zoo.swap_skip(model, "sparse", k=4, seed=0)

Works for every zoo model class whose `get_config()` has "skip" and "skip_options" keys and
whose `from_config` rebuilds it (ResNet, ViT, residual RNN): the new model is built from the
old config with the skip replaced, and every weight outside the skip mappings (paths without a
`/skip/` part) is copied bit-identically by weight path.
"""

import keras
import numpy as np

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
