"""The model registry: `get_model("arch.tag", **overrides)`, `list_models(pattern)`.

A preset is data: a registered name, the builder (a model class or function) and a dict of
default arguments. `arch.tag` names pick an architecture and, through the tag, which
weights it carries (the tag part is resolved by the weights index once weights ship).
"""

import dataclasses
import fnmatch
import inspect

from zoo.errors import UnknownNameError


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: object
    defaults: dict
    family: str
    description: str = ""

    def allowed_arguments(self):
        names = []
        builder = self.builder
        while builder is not None:  # a factory function documents where its **kwargs go
            target = builder.__init__ if isinstance(builder, type) else builder
            params = inspect.signature(target).parameters
            names += [n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
            builder = getattr(builder, "forwards_to", None)
        return list(dict.fromkeys(names))


_MODELS = {}
_WEIGHT_TAGS = {}  # arch -> {tag: loader}, filled by the weights index


def register_model(name, builder, family, description="", **defaults):
    """Register preset `name`: `get_model(name, **kw)` calls `builder(**{**defaults, **kw})`."""
    if "." in name:
        raise ValueError(f"Model names may not contain '.', which separates the weights tag: {name!r}.")
    _MODELS[name] = ModelEntry(name, builder, dict(defaults), family, description)
    return _MODELS[name]


def list_models(pattern="*", family=None):
    """Registered model names matching the shell-style `pattern` (as timm's list_models)."""
    return sorted(
        n for n, e in _MODELS.items() if fnmatch.fnmatch(n, pattern) and (family is None or e.family == family)
    )


def get_model_entry(name):
    arch = name.split(".", 1)[0]
    if arch not in _MODELS:
        raise UnknownNameError("model", arch, _MODELS)
    return _MODELS[arch]


def get_model(name, **overrides):
    """Build a registered model; keyword arguments override the preset's defaults.

    >>> model = zoo.get_model("resnet56_cifar", skip="sparse", skip_options={"k": 4})
    """
    arch, _, tag = name.partition(".")
    entry = get_model_entry(arch)
    allowed = entry.allowed_arguments()
    for key in overrides:
        if key not in allowed:
            raise UnknownNameError(f"argument of model {arch!r}", key, allowed)
    if tag:
        tags = _WEIGHT_TAGS.get(arch, {})
        if tag not in tags:
            if not tags:
                raise UnknownNameError(f"weights tag of {arch!r} (it has none yet)", tag, [])
            raise UnknownNameError(f"weights tag of {arch!r}", tag, tags)
        return tags[tag](entry, overrides)
    return entry.builder(**{**entry.defaults, **overrides})
