"""The base of every zoo model: a functional `keras.Model` that holds the zoo's model contract
once (the keras-hub `Backbone` pattern, with timm's `forward_features` / `forward_head` /
`reset_classifier` / `pretrained_cfg`).

A family's class validates its arguments, builds its layers from `inputs` (named "inputs" in
every family: images, flattened images or sequences alike) to the pooled features, and ends with

    super().__init__(inputs=inputs, features=features, head_input=pooled,
                     residual_units=unit_names, arguments=locals(), **kwargs)

The base then gives: `residual_units`, `head`, `feature_extractor()`, `forward_features`,
`forward_head`, `reset_classifier`, `get_config` (the constructor arguments, with name,
trainable, dtype and preprocessing) and `from_config`, the input-rank check, the dtype policy
every layer is built with, and `preprocessing` (what the weights expect of an input).
"""

import contextlib
import functools
import inspect

import keras

from zoo import preprocessing as preprocessing_lib
from zoo.errors import check_choice, check_range
from zoo.layers.drop_path import GRANULARITIES
from zoo.layers.skip import get_skip_class

INPUT_NAME = "inputs"  # every model's input, and the argument of forward_features


@contextlib.contextmanager
def dtype_policy_scope(dtype):
    """Build under `dtype` (a Keras dtype policy, its name or its config): every layer takes it
    as it is created, as under keras.config.set_dtype_policy; the previous global policy comes
    back. None leaves the global policy as it is."""
    if dtype is None:
        yield
        return
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


class ResidualModel(keras.Model):
    """A functional residual network with an optional classification head.

    Args (of every family, besides its own):
        preprocessing: what the weights expect of a raw input, {"rescale", "mean", "std"}
            (see zoo.preprocessing), or None when unknown (a model not trained yet). Presets
            fill it from their metadata.
        name: the model's name.
        dtype: a Keras dtype policy (e.g. "mixed_bfloat16") every layer is built with; None
            uses the global policy. Kept in get_config, so a `.keras` file reloads with it.

    Call: inputs (B, *input_shape) -> logits (B, num_classes), or the pooled features when
    num_classes is 0. An input of another rank is refused (ValueError) on every backend.
    """

    def __init_subclass__(cls, **kwargs):
        # Layers are created in a family's __init__ before keras.Model.__init__ runs, so the
        # `dtype` argument is applied around the whole constructor: it reaches every sublayer.
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_zoo_dtype_scoped", False):
            return

        @functools.wraps(init)
        def __init__(self, *args, **kw):
            with dtype_policy_scope(kw.get("dtype")):
                init(self, *args, **kw)

        __init__.__signature__ = inspect.signature(init)  # what Keras' auto-config reads
        __init__._zoo_dtype_scoped = True
        cls.__init__ = __init__

    def __init__(self, inputs, features, head_input, residual_units, arguments, **kwargs):
        """Called at the end of a family's __init__ with its graph and its arguments.

        Args:
            inputs: the keras.Input (named INPUT_NAME).
            features: the tensor `forward_features` returns.
            head_input: the tensor the head takes (the pooled features); with num_classes 0 it
                is the output.
            residual_units: the names of the residual unit layers, input to output;
                "layer/attribute" for a unit held by a layer (a recurrent layer's cell).
            arguments: the family's constructor arguments after validation (its locals()): the
                parameters of its __init__ are taken from it, and get_config returns them.
        """
        parameters = [p for p in inspect.signature(type(self).__init__).parameters if p not in ("self", "kwargs")]
        arguments = {p: arguments[p] for p in parameters}
        name, dtype, preprocessing = (arguments.pop(k) for k in ("name", "dtype", "preprocessing"))
        num_classes = arguments["num_classes"]
        outputs = self.make_head(num_classes)(head_input) if num_classes else head_input
        super().__init__(inputs=inputs, outputs=outputs, name=name, dtype=dtype, **kwargs)
        self._arguments = arguments
        for key, value in arguments.items():
            if not hasattr(type(self), key):  # input_shape is Keras' own (batch axis included)
                setattr(self, key, value)
        self._features_name = features._keras_history.operation.name
        self._residual_unit_paths = list(residual_units)
        self.preprocessing = preprocessing

    @staticmethod
    def check_common_arguments(skip, skip_options, num_classes, drop_path_rate, drop_path_granularity):
        """Check what every family takes; returns skip_options (a dict), num_classes (an int)
        and drop_path_rate (a float)."""
        get_skip_class(skip)  # an unknown name says which are valid
        check_choice("drop_path_granularity", drop_path_granularity, GRANULARITIES)
        num_classes = int(check_range("num_classes", num_classes, low=0, integer=True))
        return dict(skip_options or {}), num_classes, float(drop_path_rate)

    @staticmethod
    def stack_units(x, units):
        """Call `units` one after the other on x: (the last output, the units' names)."""
        for unit in units:
            x = unit(x)
        return x, [unit.name for unit in units]

    def make_head(self, num_classes):
        """The classifier layer, named "head" (a family may initialise it its own way)."""
        return keras.layers.Dense(num_classes, name="head")

    # === Preprocessing ===
    @property
    def preprocessing(self):
        """What the weights expect of a raw input, as timm's `pretrained_cfg`: {"rescale",
        "mean", "std", "input_shape"} (a raw x becomes (x * rescale - mean) / std, and has
        shape (batch, *input_shape)), or None when unknown. Set it with a dict of rescale,
        mean and std; see `preprocess`."""
        if self._preprocessing is None:
            return None
        return {**self._preprocessing, "input_shape": list(self.input_shape[1:])}

    @preprocessing.setter
    def preprocessing(self, value):
        if value is not None:
            value = preprocessing_lib.from_dict(value, channels=self.input_shape[-1])
        # a plain attribute Keras does not track: the config is data, not state
        object.__setattr__(self, "_preprocessing", value)

    def preprocess(self, x):
        """Raw inputs (e.g. uint8 images) -> what the model takes, float32 numpy."""
        if self._preprocessing is None:
            raise ValueError(
                f"Model {self.name!r} has no preprocessing config (it was not loaded from weights that "
                "record one); set model.preprocessing = {'rescale': ..., 'mean': [...], 'std': [...]}."
            )
        return preprocessing_lib.apply(self._preprocessing, x)

    # === Inputs ===
    def check_input_rank(self, x):
        """Refuse an input whose rank differs from the model's (batch axis included). Keras'
        functional models otherwise "adjust" an input one axis short when its last axis is 1
        (an unbatched (40, 1) sequence becomes 40 one-step sequences) or fail deep inside a
        layer."""
        shape = getattr(x, "shape", None)
        expected = self.input_shape
        if shape is not None and len(shape) != len(expected):
            example = ", ".join("batch" if i == 0 else str(d) for i, d in enumerate(expected))
            hint = " For one example, add the batch axis (x[None])." if len(shape) == len(expected) - 1 else ""
            raise ValueError(
                f"Received an input of shape {tuple(shape)} (rank {len(shape)}); model {self.name!r} takes "
                f"inputs of rank {len(expected)}, ({example}).{hint}"
            )

    def __call__(self, *args, **kwargs):
        self.check_input_rank(args[0] if args else kwargs.get("inputs"))
        return super().__call__(*args, **kwargs)

    def call(self, inputs, training=None, mask=None, **kwargs):
        # fit/evaluate/predict reach `call` without `__call__` on some backends (JAX's stateless_call)
        self.check_input_rank(inputs)
        return super().call(inputs, training=training, mask=mask, **kwargs)

    # === The zoo's model contract ===
    @property
    def residual_units(self):
        """The residual units, input to output (for DropPathFreeze and analysis)."""
        units = []
        for path in self._residual_unit_paths:
            name, *attributes = path.split("/")
            unit = self.get_layer(name)
            for attribute in attributes:  # "rnn0/cell": the cell of a recurrent layer
                unit = getattr(unit, attribute)
            units.append(unit)
        return units

    @property
    def head(self):
        """The classifier (the Dense layer "head"), or None when num_classes is 0."""
        return self.get_layer("head") if self.num_classes else None

    def _features(self):
        return self.get_layer(self._features_name).output

    def feature_extractor(self):
        """A model sharing this one's layers: inputs -> the features `forward_features` gives."""
        return keras.Model(self.input, self._features(), name=f"{self.name}_features")

    def forward_features(self, inputs, training=False):
        """inputs -> the features before the head's pooling (see the family's docstring)."""
        self.check_input_rank(inputs)
        return self.feature_extractor()(inputs, training=training)

    def forward_head(self, features, training=False):
        """Features (from `forward_features`) -> logits: the pooling and the head."""
        features_tensor = self._features()
        if self.output is features_tensor:  # nothing between the features and the output
            return features
        head = keras.Model(features_tensor, self.output, name=f"{self.name}_head")
        return head(features, training=training)

    def reset_classifier(self, num_classes):
        """A new model like this one with a new head of `num_classes` outputs (as timm's
        reset_classifier, which Keras' functional models cannot do in place): every trunk weight
        is copied, the head is freshly initialized; 0 drops the head, so the model returns the
        pooled features. This model is left unchanged."""
        config = {**self.get_config(), "num_classes": num_classes}
        model = type(self).from_config(config)
        old = {w.path: w for w in self.weights}
        for w in model.weights:
            if w.path.startswith("head/"):
                continue
            if w.path not in old or tuple(old[w.path].shape) != tuple(w.shape):
                raise RuntimeError(f"reset_classifier: weight {w.path} of {self.name!r} has no counterpart to copy.")
            w.assign(old[w.path])
        return model

    # === Config ===
    def get_config(self):
        """The constructor arguments: the family's own, name, trainable, dtype, preprocessing."""
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": self.dtype_policy.name,
            **{k: _plain(v) for k, v in self._arguments.items()},
            "preprocessing": None if self._preprocessing is None else dict(self._preprocessing),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _plain(value):
    """A config value as JSON has it: tuples become lists, at any depth."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
