"""What every zoo model class shares, as a mixin placed before `keras.Model`.

For now: inputs of the wrong rank are refused before any layer sees them. Keras' functional
models otherwise "adjust" an input that is one axis short when the last axis is 1 (an
unbatched (40, 1) sequence becomes a batch of 40 one-step sequences), or fail deep inside a
layer with a message about convolution padding.
"""


class InputRankCheck:
    """Refuse a tensor input whose rank differs from the model's (batch axis included)."""

    def __call__(self, *args, **kwargs):
        inputs = args[0] if args else kwargs.get("inputs")
        shape = getattr(inputs, "shape", None)
        expected = getattr(self, "_zoo_input_shape", None)
        if shape is not None and expected is not None and len(shape) != len(expected):
            example = ", ".join("batch" if d is None and i == 0 else str(d) for i, d in enumerate(expected))
            hint = " For one example, add the batch axis (x[None])." if len(shape) == len(expected) - 1 else ""
            raise ValueError(
                f"Received an input of shape {tuple(shape)} (rank {len(shape)}); model {self.name!r} takes "
                f"inputs of rank {len(expected)}, ({example}).{hint}"
            )
        return super().__call__(*args, **kwargs)
