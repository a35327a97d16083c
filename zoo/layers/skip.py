"""Skip mappings M for residual units y = M(x) + F(x), and the registry that names them.

Every mapping acts on the last (channel / feature) axis only, so one layer serves conv feature
maps (as a 1x1 map), ViT tokens and RNN hidden states. Definitions follow SPEC section 2:
He et al. 2016 (arXiv 1603.05027) for scaling, gating, 1x1 conv and dropout shortcuts;
Lechner et al. 2022 (arXiv 2206.01261) for orthogonal, sparse and correlation mappings.

Calling convention: `skip(x)` returns M(x); `skip(x, branch)` returns the pair
`(M(x), S(x) * branch)` where S is the branch scale some mappings impose (exclusive gating,
frozen constant gating) and 1 for the rest. The residual add stays in the unit:

    mapped, branch = self.skip(shortcut, branch)
    y = mapped + self.drop_path(branch)
"""

import inspect

import keras
import numpy as np
from keras import ops

from zoo.errors import UnknownNameError, check_range

_SKIPS = {}


def register_skip(name, cls=None):
    """Register a skip-mapping layer class under `name` (usable as a decorator).

    The class must be a `keras.layers.Layer` whose `call(x, branch=None)` follows the calling
    convention of this module (subclassing `SkipMapping` gives it for free). Once registered,
    `skip=name` works in every model family, and the class is registered with Keras so that
    `.keras` files holding it load again.
    """

    def decorator(cls):
        if not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)):
            raise TypeError(f"register_skip expects a keras.layers.Layer subclass, got {cls!r}.")
        if not isinstance(name, str) or not name:
            raise ValueError(f"A skip mapping name must be a non-empty string, got {name!r}.")
        registered = keras.saving.get_registered_name(cls)
        if registered == cls.__name__:  # not yet known to Keras' serialization
            keras.saving.register_keras_serializable(package="zoo_skip")(cls)
        _SKIPS[name] = cls
        cls.skip_name = name
        return cls

    return decorator if cls is None else decorator(cls)


def list_skips():
    """Names of the registered skip mappings, sorted."""
    return sorted(_SKIPS)


def get_skip_class(name):
    if name not in _SKIPS:
        raise UnknownNameError("skip mapping", name, _SKIPS)
    return _SKIPS[name]


def skip_option_names(name):
    """The keyword options a mapping takes (its constructor arguments but Layer's own)."""
    params = inspect.signature(get_skip_class(name).__init__).parameters
    return [p for p in params if p not in ("self", "kwargs", "args", "name", "dtype")]


def make_skip(skip, options=None, index=0, **layer_kwargs):
    """Build the registered mapping `skip` (a name) with `options`.

    `index` is the unit's position in its model: it is added to the `seed` option so that
    every unit of a model draws its own matrix while the model as a whole stays reproducible.
    """
    cls = get_skip_class(skip)
    options = dict(options or {})
    allowed = skip_option_names(skip)
    for key in options:
        if key not in allowed:
            raise UnknownNameError(f"option of skip mapping {skip!r}", key, allowed)
    if "seed" in allowed:
        options["seed"] = int(options.get("seed", 0)) + int(index)
    return cls(**options, **layer_kwargs)


def array_initializer(array):
    """An initializer returning `array`: seeded matrices made with numpy at build time.

    (Assigning after `add_weight` is lost when the layer is built inside a functional model
    whose variables are initialised lazily, so the value must come from the initializer.)
    """
    array = np.asarray(array, dtype="float32")

    def initialize(shape, dtype=None):
        if tuple(shape) != array.shape:
            raise ValueError(f"Initializer made for shape {array.shape}, asked for {tuple(shape)}.")
        return ops.convert_to_tensor(array, dtype=dtype or "float32")

    return initialize


class SkipMapping(keras.layers.Layer):
    """Base class: M(x) on the last axis; subclasses implement `map(x)`.

    Override `call(x, branch=None)` instead when M and the branch scale share a computation
    (the gates do).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def map(self, x):
        raise NotImplementedError(f"{type(self).__name__} must implement map(x).")

    def call(self, x, branch=None):
        mapped = self.map(x)
        return mapped if branch is None else (mapped, branch)

    def compute_output_shape(self, input_shape, branch_shape=None):
        return input_shape if branch_shape is None else (input_shape, branch_shape)

    def _channels(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                f"{type(self).__name__} needs a known last (channel) axis; received input shape "
                f"{tuple(input_shape)}."
            )
        return int(channels)


class MatrixSkip(SkipMapping):
    """M(x) = x @ M^T with a C x C matrix made once, from a seed, by `make_matrix`.

    The matrix is a non-trainable weight (so it is saved, and loads bit-identically on every
    backend); `matrix()` returns M for analysis and tests.
    """

    def __init__(self, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.seed = check_range("seed", seed, low=0, integer=True)

    def make_matrix(self, channels, rng):
        raise NotImplementedError(f"{type(self).__name__} must implement make_matrix().")

    def build(self, input_shape):
        channels = self._channels(input_shape)
        matrix = self.make_matrix(channels, np.random.default_rng(self.seed))
        self.kernel = self.add_weight(
            name="kernel",
            shape=(channels, channels),
            initializer=array_initializer(np.asarray(matrix, dtype="float64").T),
            trainable=False,
        )

    def matrix(self):
        return ops.transpose(self.kernel)

    def map(self, x):
        return ops.matmul(x, ops.cast(self.kernel, x.dtype))

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@register_skip("identity")
@keras.saving.register_keras_serializable(package="zoo")
class IdentitySkip(SkipMapping):
    """M(x) = x, the identity shortcut of He et al."""

    def map(self, x):
        return x


@register_skip("none")
@keras.saving.register_keras_serializable(package="zoo")
class NoSkip(SkipMapping):
    """M(x) = 0: a plain network, the control of every experiment."""

    def map(self, x):
        return ops.zeros_like(x)


@register_skip("scale")
@keras.saving.register_keras_serializable(package="zoo")
class ScaleSkip(SkipMapping):
    """M(x) = lambda * x. With `scale_branch=True` the branch is scaled by (1 - lambda) too,
    He et al.'s constant ("frozen") gating; lambda = 0.5 on both is their Table 1 row."""

    def __init__(self, lambda_=0.5, scale_branch=False, **kwargs):
        super().__init__(**kwargs)
        self.lambda_ = float(check_range("lambda_", lambda_))
        self.scale_branch = bool(scale_branch)

    def call(self, x, branch=None):
        mapped = x * ops.cast(self.lambda_, x.dtype)
        if branch is None:
            return mapped
        if self.scale_branch:
            branch = branch * ops.cast(1.0 - self.lambda_, branch.dtype)
        return mapped, branch

    def get_config(self):
        return {**super().get_config(), "lambda_": self.lambda_, "scale_branch": self.scale_branch}


class _GateSkip(SkipMapping):
    """g = sigmoid(W x + b_g) per channel (a 1x1 conv on the shortcut), M(x) = (1 - g) * x.

    W starts at zero, so at initialisation g = sigmoid(b_g) exactly; b_g = -6 is He et al.'s
    working setting (g ~ 0.0025: the unit starts close to an identity shortcut).
    """

    scales_branch = False

    def __init__(self, bias_init=-6.0, **kwargs):
        super().__init__(**kwargs)
        self.bias_init = float(check_range("bias_init", bias_init))

    def build(self, input_shape):
        channels = self._channels(input_shape)
        self.gate_kernel = self.add_weight(
            name="gate_kernel", shape=(channels, channels), initializer="zeros"
        )
        self.gate_bias = self.add_weight(
            name="gate_bias",
            shape=(channels,),
            initializer=keras.initializers.Constant(self.bias_init),
        )

    def gate(self, x):
        return ops.sigmoid(ops.matmul(x, self.gate_kernel) + self.gate_bias)

    def call(self, x, branch=None):
        g = self.gate(x)
        mapped = (1.0 - g) * x
        if branch is None:
            return mapped
        return mapped, (g * branch if self.scales_branch else branch)

    def get_config(self):
        return {**super().get_config(), "bias_init": self.bias_init}


@register_skip("gate_exclusive")
@keras.saving.register_keras_serializable(package="zoo")
class ExclusiveGateSkip(_GateSkip):
    """Exclusive gating: y = (1 - g) * x + g * F(x) (He et al. Fig. 2c)."""

    scales_branch = True


@register_skip("gate_shortcut")
@keras.saving.register_keras_serializable(package="zoo")
class ShortcutGateSkip(_GateSkip):
    """Shortcut-only gating: y = (1 - g) * x + F(x) (He et al. Fig. 2d)."""

    scales_branch = False


@register_skip("conv1x1")
@keras.saving.register_keras_serializable(package="zoo")
class Conv1x1Skip(SkipMapping):
    """M(x) = W x, a learned 1x1 convolution (He init) on the shortcut (He et al. Fig. 2e)."""

    def build(self, input_shape):
        channels = self._channels(input_shape)
        self.kernel = self.add_weight(
            name="kernel", shape=(channels, channels), initializer="he_normal"
        )

    def map(self, x):
        return ops.matmul(x, self.kernel)


@register_skip("dropout")
@keras.saving.register_keras_serializable(package="zoo")
class DropoutSkip(SkipMapping):
    """M(x) = dropout(x, rate) on the shortcut alone (He et al. Fig. 2f); identity at inference."""

    def __init__(self, rate=0.5, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(check_range("rate", rate, low=0.0, high=1.0, high_open=True))
        self.seed = check_range("seed", seed, low=0, integer=True)
        self.dropout = keras.layers.Dropout(self.rate, seed=self.seed, name="dropout")

    def call(self, x, branch=None, training=None):
        mapped = self.dropout(x, training=training)
        return mapped if branch is None else (mapped, branch)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def haar_orthogonal(channels, rng):
    """A Haar-distributed random orthogonal matrix (QR of a Gaussian, signs fixed by diag R)."""
    q, r = np.linalg.qr(rng.standard_normal((channels, channels)))
    return q * np.sign(np.diag(r))


@register_skip("orthogonal")
@keras.saving.register_keras_serializable(package="zoo")
class OrthogonalSkip(MatrixSkip):
    """M(x) = Q x with Q^T Q = I (Lechner et al.): same Jacobian norm as the identity.

    `mode="fixed"`: Q Haar-random from `seed`, a non-trainable weight.
    `mode="learned"`: Cayley map Q = (I - A)(I + A)^-1, A = W - W^T, W trainable from 0, so Q
    starts at I and stays orthogonal through training.
    """

    def __init__(self, mode="fixed", seed=0, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if mode not in ("fixed", "learned"):
            raise ValueError(f"Received mode={mode!r}; allowed values are 'fixed', 'learned'.")
        self.mode = mode

    def make_matrix(self, channels, rng):
        return haar_orthogonal(channels, rng)

    def build(self, input_shape):
        if self.mode == "fixed":
            return super().build(input_shape)
        channels = self._channels(input_shape)
        self.cayley = self.add_weight(
            name="cayley", shape=(channels, channels), initializer="zeros"
        )

    def matrix(self):
        if self.mode == "fixed":
            return super().matrix()
        a = self.cayley - ops.transpose(self.cayley)
        eye = ops.eye(a.shape[0], dtype=a.dtype)
        # (I - A) and (I + A)^-1 commute, so Q = (I + A)^-1 (I - A) = solve(I + A, I - A).
        return ops.solve(eye + a, eye - a)

    def map(self, x):
        if self.mode == "fixed":
            return super().map(x)
        q = self.matrix()
        return ops.matmul(x, ops.cast(ops.transpose(q), x.dtype))

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@register_skip("sparse")
@keras.saving.register_keras_serializable(package="zoo")
class SparseSkip(MatrixSkip):
    """M = P (I + N) P^T (Lechner et al.): N strictly upper triangular with `k` nonzeros a row
    (fewer in the last k rows, which have fewer slots), drawn N(0, sigma^2 / k); P a random
    permutation. M is unipotent: every eigenvalue is exactly 1, the identity's spectrum.

    `trainable_values=True` lets the nonzeros of N train while the sparsity pattern (and so
    the spectrum) stays fixed.
    """

    def __init__(self, k=4, sigma=1.0, trainable_values=False, seed=0, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.k = check_range("k", k, low=1, integer=True)
        self.k = int(self.k)
        self.sigma = float(check_range("sigma", sigma, low=0.0))
        self.trainable_values = bool(trainable_values)

    def sparse_parts(self, channels, rng):
        """The permutation, the mask of N and N itself, all from `rng`."""
        if self.k >= channels:
            raise ValueError(
                f"Received k={self.k} for {channels} channels; the sparse mapping needs "
                f"1 <= k < channels (k nonzeros a row above the diagonal)."
            )
        perm = rng.permutation(channels)
        mask = np.zeros((channels, channels))
        for i in range(channels - 1):
            cols = rng.choice(np.arange(i + 1, channels), size=min(self.k, channels - 1 - i), replace=False)
            mask[i, cols] = 1.0
        values = rng.normal(0.0, self.sigma / np.sqrt(self.k), size=(channels, channels)) * mask
        return np.eye(channels)[perm], mask, values

    def make_matrix(self, channels, rng):
        p, _, n = self.sparse_parts(channels, rng)
        return p @ (np.eye(channels) + n) @ p.T

    def build(self, input_shape):
        if not self.trainable_values:
            return super().build(input_shape)
        channels = self._channels(input_shape)
        p, mask, n = self.sparse_parts(channels, np.random.default_rng(self.seed))
        shape = (channels, channels)
        self.permutation = self.add_weight(
            name="permutation", shape=shape, initializer=array_initializer(p), trainable=False
        )
        self.mask = self.add_weight(name="mask", shape=shape, initializer=array_initializer(mask), trainable=False)
        self.values = self.add_weight(name="values", shape=shape, initializer=array_initializer(n))

    def matrix(self):
        if not self.trainable_values:
            return super().matrix()
        eye = ops.eye(self.mask.shape[0], dtype=self.mask.dtype)
        inner = eye + self.values * self.mask
        return ops.matmul(ops.matmul(self.permutation, inner), ops.transpose(self.permutation))

    def map(self, x):
        if not self.trainable_values:
            return super().map(x)
        return ops.matmul(x, ops.cast(ops.transpose(self.matrix()), x.dtype))

    def get_config(self):
        return {
            **super().get_config(),
            "k": self.k,
            "sigma": self.sigma,
            "trainable_values": self.trainable_values,
        }


@register_skip("correlation")
@keras.saving.register_keras_serializable(package="zoo")
class CorrelationSkip(MatrixSkip):
    """M = C_rho, the AR(1) correlation matrix rho^|i-j| over a random channel order
    (Lechner et al.'s structural correlation): symmetric positive definite, unit diagonal,
    trace C. `block=b` makes it block-diagonal with groups of b channels."""

    def __init__(self, rho=0.5, block=None, seed=0, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.rho = float(check_range("rho", rho, low=-1.0, high=1.0, low_open=True, high_open=True))
        if block is not None:
            block = int(check_range("block", block, low=1, integer=True))
        self.block = block

    def make_matrix(self, channels, rng):
        block = self.block or channels
        if block > channels:
            raise ValueError(
                f"Received block={block} for {channels} channels; block must be in [1, {channels}]."
            )
        idx = np.arange(channels)
        corr = self.rho ** np.abs(idx[:, None] - idx[None, :]).astype("float64")
        same_block = (idx[:, None] // block) == (idx[None, :] // block)
        corr = np.where(same_block, corr, 0.0)
        perm = np.eye(channels)[rng.permutation(channels)]
        return perm @ corr @ perm.T

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "block": self.block}
