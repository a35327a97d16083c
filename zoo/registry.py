"""The model registry: `get_model("arch.tag", **overrides)`, `list_models(pattern)`.

A preset is data: a registered name, the builder (a model class or function) and a dict of
default arguments. `arch.tag` names pick an architecture and, through the tag, which
weights it carries (the tag part is resolved by the weights index once weights ship).
"""

import contextlib
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


def list_models(pattern="*", family=None, pretrained=False):
    """Registered model names matching the shell-style `pattern` (as timm's list_models);
    `pretrained=True` lists the `arch.tag` names that have shipped weights instead."""
    if pretrained:
        from zoo.presets import list_pretrained

        names = list_pretrained(pattern)
        return [n for n in names if family is None or getattr(_MODELS.get(n.split(".")[0]), "family", None) == family]
    return sorted(
        n for n, e in _MODELS.items() if fnmatch.fnmatch(n, pattern) and (family is None or e.family == family)
    )


def get_model_entry(name):
    if not isinstance(name, str):
        raise TypeError(f"Received model name {name!r} of type {type(name).__name__}; expected a str (see zoo.list_models()).")
    arch = name.split(".", 1)[0]
    if arch not in _MODELS:
        raise UnknownNameError("model", arch, _MODELS)
    return _MODELS[arch]


@contextlib.contextmanager
def _dtype_policy(dtype):
    """Build under `dtype` (a Keras dtype policy or its name): every layer takes it as it is
    created, as under keras.config.set_dtype_policy; the previous global policy comes back."""
    if dtype is None:
        yield
        return
    import keras

    try:
        policy = keras.dtype_policies.get(dtype)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"Received dtype={dtype!r}; expected a Keras dtype policy or its name, e.g. 'float32', "
            f"'mixed_bfloat16', 'mixed_float16', 'bfloat16' ({e})."
        ) from None
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


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
    from zoo import presets

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
    with _dtype_policy(dtype):
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
        presets.freeze_trunk(model)
    return model
