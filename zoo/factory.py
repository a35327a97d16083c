"""The factory: `get_model("arch.tag", **overrides)` and `list_models(pattern)`, as timm's.

It sits above the pure registry (names to builders), the model modules (which register
themselves on import) and the presets (shipped and local weights):

    registry  <-  models  <-  factory  ->  presets  ->  surgery
"""

from zoo import models  # noqa: F401  (importing the model modules registers them)
from zoo import presets
from zoo.errors import UnknownNameError
from zoo.models.base import dtype_policy_scope
from zoo.registry import get_model_entry, registered_entries, registered_models
from zoo.surgery import freeze_trunk as _freeze_trunk


def list_models(pattern="*", family=None, pretrained=False):
    """Registered model names matching the shell-style `pattern` (as timm's list_models);
    `pretrained=True` lists the `arch.tag` names that have shipped weights instead."""
    if not pretrained:
        return registered_models(pattern, family)
    entries = registered_entries()
    names = presets.list_pretrained(pattern)
    return [n for n in names if family is None or getattr(entries.get(n.split(".")[0]), "family", None) == family]


def get_model(name, weights=None, freeze_trunk=False, dtype=None, **overrides):
    """Build a registered model; keyword arguments override the preset's defaults.

    >>> model = zoo.get_model("resnet56_cifar", skip="sparse", skip_options={"k": 4})
    >>> model = zoo.get_model("resnet56_cifar.cifar10")                 # shipped weights
    >>> model = zoo.get_model("resnet56_cifar", weights="path/to/preset_or.weights.h5")

    With weights, the model is the one stored in the preset folder; `num_classes` (a new head),
    the input channels (an adapted stem), `skip`/`skip_options` (swapped, branches kept) and
    training-only arguments may still be overridden. `freeze_trunk=True` leaves only the head
    trainable. `dtype` (e.g. "mixed_bfloat16") is the Keras dtype policy every layer is built
    with; mixed policies keep float32 variables, so weights load as they are. See zoo.presets
    for the checks made before anything is loaded.
    """
    if not isinstance(name, str):
        raise TypeError(
            f"Received name={name!r} of type {type(name).__name__}; get_model takes a registered model name "
            "(a str such as 'resnet20_cifar', or 'resnet20_cifar.cifar10' with shipped weights; see "
            "zoo.list_models())."
        )
    arch, _, tag = name.partition(".")
    entry = get_model_entry(arch)
    allowed = entry.allowed_arguments()
    for key in overrides:
        if key not in allowed:
            raise UnknownNameError(f"argument of model {arch!r}", key, allowed)
    if tag and weights is not None:
        raise ValueError(f"Received {name!r} and weights={weights!r}; give the weights either as the tag or as weights=.")
    if tag:
        weights = name
    with dtype_policy_scope(dtype):
        if weights is None:
            model = entry.builder(**{**entry.defaults, **overrides})
        else:
            kind, path, meta_sha = presets.resolve_weights(arch, weights)
            if kind == "preset":
                model = presets.load_preset(arch, path, overrides, meta_sha)
            else:
                model = entry.builder(**{**entry.defaults, **overrides})
                presets.load_weights(model, path)
    if freeze_trunk:
        _freeze_trunk(model)
    return model
