"""Model surgery: change a built model while keeping what it learned.

    sparse = zoo.swap_skip(model, "sparse", k=4, seed=0)   # another skip mapping, branches kept
    warm = zoo.swap_skip(model, "orthogonal", warmup_steps=200)  # moves there over 200 steps
    ... train warm ...; done = zoo.finish_skip_warmup(warm)   # the new mapping alone
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

from zoo.errors import WeightsArchitectureError, check_range
from zoo.layers.skip import get_skip_class


def is_skip_weight(path):
    """Weights of a skip mapping live under `.../skip/...` (the units name their skip "skip")."""
    return "/skip/" in f"/{path}"


def _skip_config(model, caller):
    config = model.get_config()
    if "skip" not in config or "skip_options" not in config:
        raise ValueError(
            f"{caller} needs a model whose get_config() has 'skip' and 'skip_options' keys; "
            f"{type(model).__name__} ({model.name!r}) has {sorted(config)}."
        )
    return config


def swap_skip(model, skip, skip_options=None, warmup_steps=0, **options):
    """A new model like `model` with skip mapping `skip`; branch weights copied exactly.

    Args:
        model: a zoo model whose config has "skip" and "skip_options".
        skip: the registered name of the new mapping, e.g. "orthogonal", "sparse".
        skip_options: its options as a dict, or give them as keywords (`k=4, seed=0`).
        warmup_steps: 0 swaps at once. N > 0 swaps gradually: every unit's skip becomes
            (1 - a) M_old + a M_new (the "blend" mapping, old skip weights copied), a going
            from 0 to 1 over the first N training steps, so training starts from exactly the
            trained model instead of a jolt; `finish_skip_warmup(model)` then returns the model
            with the new mapping alone.

    Swapping to the model's own mapping and options reproduces its outputs exactly. The new
    mapping's weights (a matrix, a gate) are made from its options, not copied.
    """
    config = _skip_config(model, "swap_skip")
    get_skip_class(skip)  # an unknown name says which are valid
    new_options = {**dict(skip_options or {}), **options}
    warmup_steps = int(check_range("warmup_steps", warmup_steps, low=0, integer=True))
    if warmup_steps:
        if config["skip"] == "blend":
            raise ValueError("The model is warming up a swapped skip already; finish_skip_warmup(model) first.")
        blend = {"start": config["skip"], "start_options": dict(config["skip_options"] or {}),
                 "end": skip, "end_options": new_options, "steps": warmup_steps}
        return _rebuild(model, {**config, "skip": "blend", "skip_options": blend},
                        skip_paths=lambda path: path.replace("/skip/start/", "/skip/", 1))
    return _rebuild(model, {**config, "skip": skip, "skip_options": new_options})


def finish_skip_warmup(model):
    """The model with the warmed-up mapping alone (end of `swap_skip(..., warmup_steps=N)`): the
    branch weights and the new mapping's weights copied, the blend and its counter gone. The
    outputs equal the blended model's once its warm-up is complete (a = 1)."""
    config = _skip_config(model, "finish_skip_warmup")
    if config["skip"] != "blend":
        raise ValueError(f"Model {model.name!r} has skip={config['skip']!r}, not a warm-up ('blend'); nothing to finish.")
    blend = config["skip_options"]
    units = getattr(model, "residual_units", [])
    alphas = {float(keras.ops.convert_to_numpy(u.skip.alpha())) for u in units if hasattr(u.skip, "alpha")}
    if alphas and min(alphas) < 1.0:
        raise ValueError(
            f"The warm-up of {model.name!r} is not complete (a = {min(alphas):.3f} of 1 in some unit); train "
            f"{blend['steps']} steps first, or swap_skip(model, ...) at once from the start."
        )
    return _rebuild(model, {**config, "skip": blend["end"], "skip_options": blend["end_options"]},
                    skip_paths=lambda path: path.replace("/skip/", "/skip/end/", 1))


def _rebuild(model, config, skip_paths=None):
    """`model` rebuilt from `config`: every non-skip weight copied by path; each skip weight
    copied from `skip_paths(new_path)` in the old model when given (else made anew)."""
    swapped = type(model).from_config(config)

    old = {w.path: w for w in model.weights}
    new = {w.path: w for w in swapped.weights}
    if len(old) != len(model.weights) or len(new) != len(swapped.weights):
        raise RuntimeError(f"Model {model.name!r} has weights with repeated paths; swap_skip matches weights by path.")
    old_branch = [p for p in old if not is_skip_weight(p)]
    new_branch = [p for p in new if not is_skip_weight(p)]
    if sorted(old_branch) != sorted(new_branch):
        differ = sorted(set(old_branch) ^ set(new_branch))
        raise RuntimeError(f"Rebuilding {model.name!r} with skip={config['skip']!r} changed its non-skip weights: {differ[:5]}.")
    values = []
    for path in old_branch:
        value = np.asarray(keras.ops.convert_to_numpy(old[path]))
        if value.shape != tuple(new[path].shape):
            raise RuntimeError(f"Weight {path} has shape {value.shape} in the model, {tuple(new[path].shape)} after the swap.")
        values.append((new[path], value))
    if skip_paths is not None:
        for path in new:
            if is_skip_weight(path) and skip_paths(path) in old:
                value = np.asarray(keras.ops.convert_to_numpy(old[skip_paths(path)]))
                if value.shape != tuple(new[path].shape):
                    raise RuntimeError(f"Skip weight {skip_paths(path)} has shape {value.shape}; its place "
                                       f"{path} after the rebuild has {tuple(new[path].shape)}.")
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
