"""The model registry: names to builders, and nothing else.

An entry is data: a registered name, the builder (a model class or a factory function that
`forwards_to` one) and a dict of default arguments. Model modules register themselves here;
the registry imports nothing of the zoo but its errors. Building, weights and `arch.tag`
names are the factory's (`zoo.factory.get_model`).
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

    def model_class(self):
        """The model class the builder ends in (a class, or a factory's `forwards_to`)."""
        builder = self.builder
        while builder is not None and not isinstance(builder, type):
            builder = getattr(builder, "forwards_to", None)
        return builder

    def builder_arguments(self, kwargs):
        """The entries of `kwargs` that only the builder takes, not the model class (a CIFAR
        ResNet's `depth`): with weights they select the architecture to check against."""
        own = set(inspect.signature(self.model_class().__init__).parameters)
        return {k: v for k, v in kwargs.items() if k not in own}

    def class_arguments(self, **overrides):
        """The constructor arguments of `model_class()` that `get_model(name, **overrides)`
        passes, without building anything: a factory states them through its `arguments`."""
        kwargs = {**self.defaults, **overrides}
        builder = self.builder
        while not isinstance(builder, type):
            kwargs = builder.arguments(**kwargs)
            builder = builder.forwards_to
        return kwargs


_MODELS = {}


def register_model(name, builder, family, description="", **defaults):
    """Register preset `name`: `get_model(name, **kw)` calls `builder(**{**defaults, **kw})`."""
    if "." in name:
        raise ValueError(f"Model names may not contain '.', which separates the weights tag: {name!r}.")
    _MODELS[name] = ModelEntry(name, builder, dict(defaults), family, description)
    return _MODELS[name]


def registered_models(pattern="*", family=None):
    """Registered model names matching the shell-style `pattern`, optionally of one family."""
    return sorted(
        n for n, e in _MODELS.items() if fnmatch.fnmatch(n, pattern) and (family is None or e.family == family)
    )


def registered_entries():
    """{name: ModelEntry} of every registered model (a copy)."""
    return dict(_MODELS)


def get_model_entry(name):
    if not isinstance(name, str):
        raise TypeError(f"Received model name {name!r} of type {type(name).__name__}; expected a str (see zoo.list_models()).")
    arch = name.split(".", 1)[0]
    if arch not in _MODELS:
        raise UnknownNameError("model", arch, _MODELS)
    return _MODELS[arch]
