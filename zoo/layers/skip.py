"""Skip mappings M for residual units y = M(x) + F(x), and the registry that names them.

Every mapping acts on the last (channel / feature) axis only, so one layer serves conv feature
maps (as a 1x1 map), ViT tokens and RNN hidden states. Definitions follow SPEC section 2:
He et al. 2016 (arXiv 1603.05027) for scaling, gating, 1x1 conv and dropout shortcuts;
Lechner et al. 2022 (arXiv 2206.01261, abstract only) for the invariants of the orthogonal, sparse and
correlation mappings (the matrices realising them are this project's; see Attribution below).

Calling convention: `skip(x)` returns M(x); `skip(x, branch)` returns the pair
`(M(x), S(x) * branch)` where S is the branch scale some mappings impose (exclusive gating,
frozen constant gating) and 1 for the rest. The residual add stays in the unit:

    mapped, branch = self.skip(shortcut, branch)
    y = mapped + self.drop_path(branch)

Network-level invariants. A signal travels the composed skip path M_L ... M_1 (and, in a
recurrent cell, M^T over T steps), so each entangled mapping keeps its promise for that
product, not only per unit. A model tells each unit's mapping how many maps its path composes
(`depth`: units with independently drawn matrices; `horizon`: steps of a recurrence applying
the same matrix) and its position `index`:

- `orthogonal`: products of orthogonal matrices are orthogonal, at any depth.
- `sparse`: one permutation shared by the units of a width, so products stay unipotent (every
  eigenvalue 1), and off-diagonal variance sigma^2 / (k depth horizon^2), so the product's
  singular values stay bounded (measured within [0.39, 2.44] from ResNet-20 to ResNet-1001,
  ViT-S and the recurrent cells, docs/results/skip_path/; tests/test_skip_path.py holds them
  to [1/5, 5]) instead of growing exponentially with depth.
- `correlation`: the AR(1) coefficient of each unit is tanh(atanh(rho) / (depth horizon)), so
  the product's singular values lie in [(1 - rho) / (1 + rho), (1 + rho) / (1 - rho)] at any
  depth, whatever the channel orders (the extreme eigenvalues of one unit multiply).

`depth_scaled=False` and `shared_permutation=False` give back the raw per-unit constructions,
whose composed path explodes with depth, to reproduce that on purpose.

Attribution. Lechner et al.'s abstract (the only part of the paper available to this project)
names the invariants: mappings that share eigenvalues (sparse), structure (correlation) or
Jacobian norm (orthogonal) with the identity. The matrices that realise them here, and their
depth scaling, are this project's constructions, not the paper's.
"""

import inspect

import keras
import numpy as np
from keras import ops

from zoo.errors import UnknownNameError, check_range
from zoo.layers import fused
from zoo.layers.norm import batch_normalization

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


# Options a model sets for each unit; a user does not pass them in `skip_options`.
UNIT_OPTIONS = ("index",)


def skip_option_names(name):
    """The keyword options a mapping takes (its constructor arguments but Layer's own and the
    unit position `index`, which the model sets)."""
    params = inspect.signature(get_skip_class(name).__init__).parameters
    return [p for p in params if p not in ("self", "kwargs", "args", "name", "dtype", *UNIT_OPTIONS)]


def make_skip(skip, options=None, index=0, depth=None, horizon=None, **layer_kwargs):
    """Build the registered mapping `skip` (a name) with `options`.

    `index` is the unit's position in its model. A mapping that takes an `index` argument
    receives it (and draws its per-unit randomness from (seed, index) itself); for any other
    mapping with a `seed` option the index is added to the seed, so that every unit draws its
    own matrix or mask while the model as a whole stays reproducible.

    `depth` (units composed on the model's skip path) and `horizon` (steps a recurrence applies
    the same mapping) go to mappings that take them, unless `options` sets them already.
    """
    cls = get_skip_class(skip)
    options = dict(options or {})
    allowed = skip_option_names(skip)
    for key in options:
        if key not in allowed:
            raise UnknownNameError(f"option of skip mapping {skip!r}", key, allowed)
    params = inspect.signature(cls.__init__).parameters
    if "index" in params:
        options["index"] = int(index)
    elif "seed" in allowed:
        options["seed"] = int(options.get("seed", 0)) + int(index)
    for key, value in (("depth", depth), ("horizon", horizon)):
        if key in allowed and value is not None:
            options.setdefault(key, int(value))
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

    def linear_kernel(self, channels):
        """K (channels x channels, float32) with M(x) = x @ K where M is a fixed linear map of
        the channels and leaves the branch unscaled; None for every other mapping. A blend of
        two such mappings is one matmul by the blended K."""
        return None

    def call(self, x, branch=None):
        mapped = self.map(x)
        return mapped if branch is None else (mapped, branch)

    def summed_kernel(self, channels):
        """K (channels x channels) with M(x) = x K and the branch unscaled, which `add` may
        compute as one matmul with the branch as its addend (torch: `fused.linear_sum`); None
        where `add` adds what `call` returns. Unlike `linear_kernel` it may be trainable
        (conv1x1), and identity has none (its sum needs no matmul)."""
        return None

    def add(self, x, branch, training=None):
        """The residual sum M(x) + branch, the branch scaled as M imposes: what a residual unit
        computes, with its branch after DropPath. The default adds what `call` returns, the add
        a kernel of its own (zoo.layers.fused), or on torch, for a mapping with a
        `summed_kernel`, one matmul with the branch as its addend; the gates compute their mix
        and the sum in one."""
        if fused.SUMS_IN_MATMUL:
            x = ops.convert_to_tensor(x)
            kernel = self.summed_kernel(x.shape[-1])
            if kernel is not None:
                return fused.linear_sum(x, ops.cast(kernel, x.dtype), ops.convert_to_tensor(branch))
        mapped, branch = self(x, branch, training=training)
        return fused.add(mapped, branch)

    def compute_output_shape(self, x_shape, branch_shape=None):  # names match call(x, branch)
        return x_shape if branch_shape is None else (x_shape, branch_shape)

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
    backend); `matrix()` returns M for analysis and tests. A unit's matrix is drawn from
    `unit_rng()`, seeded by seed + index (`index`: the unit's position, set by the model).

    Entries that a float32 weight could hold only as subnormal numbers (below 1.2e-38 in
    magnitude) are stored as 0. They occur in the far corners of a deep network's correlation
    matrices (r^|i-j| with r ~ 0.06 over 64 channels), and a subnormal operand costs a
    microcode assist per operation on x86 CPUs wherever the backend does not flush it to zero:
    jax and TensorFlow flush them on a CPU, torch does not. ResNet-20 with correlation skips
    (16 px, batch 32) trained at 0.67x identity's speed on the torch backend on an Intel Xeon,
    at 0.91x with these entries zeroed (bench/, 2026-12-05). A weight file keeps what it holds.
    """

    def __init__(self, seed=0, index=0, **kwargs):
        super().__init__(**kwargs)
        self.seed = int(check_range("seed", seed, low=0, integer=True))
        self.index = int(check_range("index", index, low=0, integer=True))

    def unit_rng(self):
        """The generator of this unit's own draws."""
        return np.random.default_rng(self.seed + self.index)

    def make_matrix(self, channels, rng):
        raise NotImplementedError(f"{type(self).__name__} must implement make_matrix().")

    def build(self, input_shape):
        channels = self._channels(input_shape)
        matrix = np.asarray(self.make_matrix(channels, self.unit_rng()), dtype="float64")
        matrix = np.where(np.abs(matrix) < np.finfo(np.float32).tiny, 0.0, matrix)  # no subnormals
        self.kernel = self.add_weight(
            name="kernel",
            shape=(channels, channels),
            initializer=array_initializer(matrix.T),
            trainable=False,
        )

    def matrix(self):
        return ops.transpose(self.kernel)

    def linear_kernel(self, channels):
        return self.kernel

    def map(self, x):
        return ops.matmul(x, ops.cast(self.linear_kernel(x.shape[-1]), x.dtype))

    def summed_kernel(self, channels):
        return self.linear_kernel(channels)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed, "index": self.index}


class PathScaledSkip(MatrixSkip):
    """A matrix mapping whose strength is scaled by the length of the skip path it sits on.

    Args:
        depth: units with independently drawn matrices composed on the path (a model sets it
            to its number of residual units).
        horizon: times a recurrence applies the same matrix (a recurrent cell sets it to its
            sequence length).
        depth_scaled: scale the strength by `depth` and `horizon` (the default). `False` gives
            the raw per-unit construction whose composed path explodes with depth.
    """

    def __init__(self, depth=1, horizon=1, depth_scaled=True, seed=0, index=0, **kwargs):
        super().__init__(seed=seed, index=index, **kwargs)
        self.depth = int(check_range("depth", depth, low=1, integer=True))
        self.horizon = int(check_range("horizon", horizon, low=1, integer=True))
        self.depth_scaled = bool(depth_scaled)

    def get_config(self):
        return {
            **super().get_config(),
            "depth": self.depth,
            "horizon": self.horizon,
            "depth_scaled": self.depth_scaled,
        }


@register_skip("identity")
@keras.saving.register_keras_serializable(package="zoo")
class IdentitySkip(SkipMapping):
    """M(x) = x, the identity shortcut of He et al."""

    def map(self, x):
        return x

    def linear_kernel(self, channels):
        return ops.eye(channels, dtype="float32")


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

    `bias_init`: b_g at initialisation; -6 is He et al.'s working setting (g ~ 0.0025).
    `kernel_initializer`: W's initializer. He et al. fix only b_g and He-initialise W, as every
    conv of their networks: `kernel_initializer="he_normal"` is that. The default, "zeros",
    makes g = sigmoid(b_g) exactly at initialisation, so b_g alone sets where the unit starts
    (the quantity the paper's b_g sweep varies) and, with b_g = -6, the stream starts within a
    fraction of a percent of the identity model's; with He-initialised W the gate at
    initialisation also depends on the input's scale, which grows along a residual stream.
    """

    scales_branch = False

    def __init__(self, bias_init=-6.0, kernel_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.bias_init = float(check_range("bias_init", bias_init))
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        channels = self._channels(input_shape)
        self.gate_kernel = self.add_weight(
            name="gate_kernel", shape=(channels, channels), initializer=self.kernel_initializer
        )
        self.gate_bias = self.add_weight(
            name="gate_bias",
            shape=(channels,),
            initializer=keras.initializers.Constant(self.bias_init),
        )

    def gate(self, x):
        return ops.sigmoid(fused.channel_matmul(x, self.gate_kernel) + self.gate_bias)

    def call(self, x, branch=None):
        g = self.gate(x)
        mapped = (1.0 - g) * x
        if branch is None:
            return mapped
        return mapped, (g * branch if self.scales_branch else branch)

    def add(self, x, branch, training=None):
        # one fused kernel for the mix and the sum (zoo.layers.fused)
        x, branch = ops.convert_to_tensor(x), ops.convert_to_tensor(branch)
        kernel, bias = ops.cast(self.gate_kernel, x.dtype), ops.cast(self.gate_bias, x.dtype)
        return fused.gated_sum(x, kernel, bias, branch, self.scales_branch, training=bool(training))

    def get_config(self):
        return {
            **super().get_config(),
            "bias_init": self.bias_init,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }


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
    """M(x) = W x, a learned 1x1 convolution on the shortcut (He et al. Fig. 2e); with
    `norm=True`, M(x) = BN(W x), the conv followed by batch normalisation.

    `kernel_initializer`: W's initializer. The default, "identity", starts the shortcut as the
    identity, so the model starts as the identity model and only what training makes of W
    differs. "he_normal" is the initializer He et al. use for every conv (the paper does not
    state the shortcut's): it doubles the energy of the shortcut in expectation, which a ReLU
    after the addition (`placement="original"`) halves again but a pre-activation stream
    compounds over the units. He et al.'s configs use "he_normal" with `norm=True`.
    """

    def __init__(self, kernel_initializer="identity", norm=False, **kwargs):
        super().__init__(**kwargs)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.norm = bool(norm)
        self.batch_norm = (
            batch_normalization(momentum=0.9, epsilon=1e-5, name="bn", dtype=self.dtype_policy)
            if self.norm
            else None
        )

    def build(self, input_shape):
        channels = self._channels(input_shape)
        self.kernel = self.add_weight(
            name="kernel", shape=(channels, channels), initializer=self.kernel_initializer
        )
        if self.batch_norm is not None:
            self.batch_norm.build(tuple(input_shape))

    def call(self, x, branch=None, training=None):
        mapped = fused.channel_matmul(x, self.kernel)
        if self.batch_norm is not None:
            mapped = self.batch_norm(mapped, training=training)
        return mapped if branch is None else (mapped, branch)

    def summed_kernel(self, channels):
        return self.kernel if self.batch_norm is None else None

    def get_config(self):
        return {
            **super().get_config(),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "norm": self.norm,
        }


@register_skip("dropout")
@keras.saving.register_keras_serializable(package="zoo")
class DropoutSkip(SkipMapping):
    """Dropout on the shortcut alone (He et al. Fig. 2f), rate 0.5 by default.

    Default (`inverted=False`), as the paper describes it: in training M(x) = m * x with
    m ~ Bernoulli(1 - rate) per element, unscaled, and (1 - rate) * x at inference, so
    E[M(x)] = (1 - rate) x: the shortcut is attenuated, the failure the paper explains by an
    expected shortcut scale of 0.5. `inverted=True` is Keras' inverted dropout (m / (1 - rate)
    in training, the identity at inference): the same mask, but its variance grows the stream
    instead (its RMS compounds by sqrt(1 / (1 - rate)) a unit at initialisation).
    """

    def __init__(self, rate=0.5, inverted=False, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(check_range("rate", rate, low=0.0, high=1.0, high_open=True))
        self.inverted = bool(inverted)
        self.seed = check_range("seed", seed, low=0, integer=True)
        self.dropout = keras.layers.Dropout(self.rate, seed=self.seed, name="dropout", dtype=self.dtype_policy)

    def call(self, x, branch=None, training=None):
        mapped = self.dropout(x, training=training)
        if not self.inverted:  # m x / (1 - rate) in training, x at inference: rescale both
            mapped = mapped * ops.cast(1.0 - self.rate, mapped.dtype)
        return mapped if branch is None else (mapped, branch)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "inverted": self.inverted, "seed": self.seed}


def haar_orthogonal(channels, rng):
    """A Haar-distributed random orthogonal matrix (QR of a Gaussian, signs fixed by diag R)."""
    q, r = np.linalg.qr(rng.standard_normal((channels, channels)))
    return q * np.sign(np.diag(r))


@register_skip("orthogonal")
@keras.saving.register_keras_serializable(package="zoo")
class OrthogonalSkip(MatrixSkip):
    """M(x) = Q x with Q^T Q = I: the Jacobian norm of the identity (the invariant Lechner et
    al. name; the Haar and Cayley constructions are this project's). Products of orthogonal
    matrices are orthogonal, so the composed skip path keeps every singular value at 1 at any
    depth, and each unit draws its own Q (from seed + index).

    In a post-activation network (`placement="original"`) the ReLU after the addition zeroes
    the negative half of a rotated non-negative input, so the stream loses about half its
    energy a unit where the identity keeps it: a property of the construction, not a defect.

    `mode="fixed"`: Q Haar-random from `seed`, a non-trainable weight.
    `mode="learned"`: Cayley map Q = (I - A)(I + A)^-1, A = W - W^T, W trainable from 0, so Q
    starts at I and stays orthogonal through training.
    """

    def __init__(self, mode="fixed", seed=0, index=0, **kwargs):
        super().__init__(seed=seed, index=index, **kwargs)
        if mode not in ("fixed", "learned"):
            raise ValueError(f"Received mode={mode!r}; allowed values are 'fixed', 'learned'.")
        self.mode = mode

    def make_matrix(self, channels, rng):
        return haar_orthogonal(channels, rng)

    def build(self, input_shape):
        if self.mode == "fixed":
            return super().build(input_shape)
        channels = self._channels(input_shape)
        # Read in float32 under a mixed policy too: the solve has no half-precision kernel.
        self.cayley = self.add_weight(
            name="cayley", shape=(channels, channels), initializer="zeros", autocast=False
        )

    def matrix(self):
        if self.mode == "fixed":
            return super().matrix()
        # In float32 whatever the dtype policy: ops.solve has no bfloat16 / float16 kernel on
        # every backend, and Q is cast to the input's dtype where it is applied.
        w = ops.cast(self.cayley, "float32")
        a = w - ops.transpose(w)
        eye = ops.eye(a.shape[0], dtype="float32")
        # (I - A) and (I + A)^-1 commute, so Q = (I + A)^-1 (I - A) = solve(I + A, I - A).
        return ops.solve(eye + a, eye - a)

    def linear_kernel(self, channels):
        return self.kernel if self.mode == "fixed" else ops.transpose(self.matrix())

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@register_skip("sparse")
@keras.saving.register_keras_serializable(package="zoo")
class SparseSkip(PathScaledSkip):
    """M = P (I + N) P^T: N strictly upper triangular with `k` nonzeros a row (fewer in the
    last k rows, which have fewer slots), P a permutation. M is unipotent: every eigenvalue is
    exactly 1, the identity's spectrum (the invariant Lechner et al. name; the construction is
    this project's).

    Network level (the defaults): P is drawn from (seed, width) alone, so every unit of one
    width shares it and the product of the units' matrices is P (prod (I + N_l)) P^T, still
    unipotent; and the nonzeros of N are drawn N(0, sigma^2 / (k depth horizon^2)), so the
    off-diagonal part of the whole composed path has an RMS row norm of about `sigma`
    whatever the depth. With the default sigma = 0.5 the product's singular values were
    measured within [0.39, 2.44] from ResNet-20 to ResNet-1001, ViT-S (24 units of width 384)
    and the recurrent cells over their sequence length (docs/results/skip_path/); the tests
    hold them to [1/5, 5]. The bound widens slowly with the width of one stretch of units
    (sigma = 1 reaches about 7 at width 384), hence the default.

    `shared_permutation=False` draws P per unit (products are then no longer unipotent) and
    `depth_scaled=False` draws N(0, sigma^2 / k) per unit: together, with sigma=1, they are the
    raw construction whose composed path explodes with depth (largest singular value ~1e4
    over the 27 units of ResNet-56). `trainable_values=True` lets the nonzeros of N train
    while the sparsity pattern (and so the spectrum) stays fixed.
    """

    def __init__(
        self,
        k=4,
        sigma=0.5,
        trainable_values=False,
        shared_permutation=True,
        depth=1,
        horizon=1,
        depth_scaled=True,
        seed=0,
        index=0,
        **kwargs,
    ):
        super().__init__(depth=depth, horizon=horizon, depth_scaled=depth_scaled, seed=seed, index=index, **kwargs)
        self.k = int(check_range("k", k, low=1, integer=True))
        self.sigma = float(check_range("sigma", sigma, low=0.0))
        self.trainable_values = bool(trainable_values)
        self.shared_permutation = bool(shared_permutation)

    @property
    def value_std(self):
        """The standard deviation of the nonzeros of N."""
        std = self.sigma / np.sqrt(self.k)
        if self.depth_scaled:
            std /= np.sqrt(self.depth) * self.horizon
        return std

    def sparse_parts(self, channels, rng):
        """The permutation matrix, the mask of N and N itself; the unit's own draws from `rng`."""
        if self.k >= channels:
            raise ValueError(
                f"Received k={self.k} for {channels} channels; the sparse mapping needs "
                f"1 <= k < channels (k nonzeros a row above the diagonal)."
            )
        perm = rng.permutation(channels)  # drawn in both modes: the unit's later draws stay put
        if self.shared_permutation:
            perm = np.random.default_rng((self.seed, channels)).permutation(channels)
        mask = np.zeros((channels, channels))
        for i in range(channels - 1):
            cols = rng.choice(np.arange(i + 1, channels), size=min(self.k, channels - 1 - i), replace=False)
            mask[i, cols] = 1.0
        values = rng.normal(0.0, 1.0, size=(channels, channels)) * self.value_std * mask
        return np.eye(channels)[perm], mask, values

    def make_matrix(self, channels, rng):
        p, _, n = self.sparse_parts(channels, rng)
        return p @ (np.eye(channels) + n) @ p.T

    def build(self, input_shape):
        if not self.trainable_values:
            return super().build(input_shape)
        channels = self._channels(input_shape)
        p, mask, n = self.sparse_parts(channels, self.unit_rng())
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

    def linear_kernel(self, channels):
        return self.kernel if not self.trainable_values else ops.transpose(self.matrix())

    def get_config(self):
        return {
            **super().get_config(),
            "k": self.k,
            "sigma": self.sigma,
            "trainable_values": self.trainable_values,
            "shared_permutation": self.shared_permutation,
        }


@register_skip("correlation")
@keras.saving.register_keras_serializable(package="zoo")
class CorrelationSkip(PathScaledSkip):
    """M = C_r, the AR(1) correlation matrix r^|i-j| over a random channel order (a structural
    correlation: the invariant of shared structure is Lechner et al.'s, this matrix is this
    project's): symmetric positive definite, unit diagonal, trace C, eigenvalues in
    [(1 - r) / (1 + r), (1 + r) / (1 - r)] (the extremes of the AR(1) spectrum; not
    1 + r (C - 1), which is the equicorrelation matrix's). `block=b` makes it block-diagonal
    with groups of b channels. Each unit draws its own channel order (seed + index).

    Network level (the default): a unit's coefficient is r = tanh(atanh(rho) / (depth
    horizon)), so (1 + r) / (1 - r) = ((1 + rho) / (1 - rho))^(1 / (depth horizon)): the
    extreme eigenvalues of the units multiply to those of one rho-matrix, and the composed
    path's singular values lie in [(1 - rho) / (1 + rho), (1 + rho) / (1 - rho)] ([1/3, 3] at
    the default rho = 0.5) at any depth, whatever the channel orders. `rho` is the correlation
    strength of the whole path. `depth_scaled=False` uses rho in every unit, the raw
    construction: the channel-mean direction grows about (1 + rho) / (1 - rho) = 3x a unit.
    """

    def __init__(self, rho=0.5, block=None, depth=1, horizon=1, depth_scaled=True, seed=0, index=0, **kwargs):
        super().__init__(depth=depth, horizon=horizon, depth_scaled=depth_scaled, seed=seed, index=index, **kwargs)
        self.rho = float(check_range("rho", rho, low=-1.0, high=1.0, low_open=True, high_open=True))
        if block is not None:
            block = int(check_range("block", block, low=1, integer=True))
        self.block = block

    @property
    def unit_rho(self):
        """The AR(1) coefficient of this unit's matrix."""
        if not self.depth_scaled:
            return self.rho
        return float(np.tanh(np.arctanh(self.rho) / (self.depth * self.horizon)))

    def make_matrix(self, channels, rng):
        block = self.block or channels
        if block > channels:
            raise ValueError(
                f"Received block={block} for {channels} channels; block must be in [1, {channels}]."
            )
        idx = np.arange(channels)
        corr = self.unit_rho ** np.abs(idx[:, None] - idx[None, :]).astype("float64")
        same_block = (idx[:, None] // block) == (idx[None, :] // block)
        corr = np.where(same_block, corr, 0.0)
        perm = np.eye(channels)[rng.permutation(channels)]
        return perm @ corr @ perm.T

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "block": self.block}


def _lerp(start, end, a):
    """(1 - a) start + a end, exact at a = 0 and a = 1; one tensor for both (a branch neither
    mapping scales) is returned as it is."""
    if start is end:
        return start
    return (1 - a) * start + a * end


@register_skip("blend")
@keras.saving.register_keras_serializable(package="zoo")
class BlendSkip(SkipMapping):
    """(1 - a) M_start + a M_end with a = min(1, t / steps), t the training calls so far.

    What `zoo.swap_skip(model, new, warmup_steps=N)` puts in every unit, so that a skip swapped
    into a trained model moves there gradually: at t = 0 the model is exactly the trained one,
    after N training steps its skip is the new mapping (then `zoo.finish_skip_warmup(model)`
    gives the model with the new mapping alone). Both mappings receive the unit's index,
    depth and horizon, as they would in the unit directly; a branch scale they impose (the
    gates') is blended the same way.

    Args:
        start, start_options: the mapping at t = 0 (a registered name and its options).
        end, end_options: the mapping from t = steps on.
        steps: training steps of the warm-up (each training call counts one; a DropPathFreeze
            step that freezes the unit leaves its count as it is, as every other variable).
    """

    def __init__(self, start="identity", start_options=None, end="identity", end_options=None, steps=100,
                 index=0, depth=None, horizon=None, **kwargs):
        super().__init__(**kwargs)
        if "blend" in (start, end):
            raise ValueError("Received a 'blend' skip inside a 'blend' skip; start and end are plain mappings.")
        self.steps = int(check_range("steps", steps, low=1, integer=True))
        self.index, self.depth, self.horizon = int(index), depth, horizon
        self.start, self.start_options = start, dict(start_options or {})
        self.end, self.end_options = end, dict(end_options or {})
        place = dict(index=index, depth=depth, horizon=horizon)
        self.start_skip = make_skip(start, self.start_options, **place, name="start", dtype=self.dtype_policy)
        self.end_skip = make_skip(end, self.end_options, **place, name="end", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.start_skip.build(input_shape)
        self.end_skip.build(input_shape)
        self.count = self.add_weight(name="count", shape=(), initializer="zeros", trainable=False, dtype="float32")

    def alpha(self):
        """The weight of the end mapping now, in [0, 1]."""
        return ops.minimum(ops.convert_to_tensor(self.count, "float32") / float(self.steps), 1.0)

    def _advance(self, training):
        """The end mapping's weight for this call; a training call counts one step."""
        alpha = self.alpha()
        if training:
            self.count.assign(self.count + 1.0)
        return alpha

    def _kernels(self, x, summed=False):
        """(K0, K1) where both mappings are linear in the channels (identity, the matrix
        mappings): their blend is one matmul by the blended matrix instead of two maps and a
        mix (exact at a = 0 and a = 1). Else None.

        With `summed` (torch's sum), each mapping's own sum kernel is taken first where it has
        one (its `summed_kernel`: the sum is one matmul by K with the branch unscaled, a learned
        conv1x1's included), its `linear_kernel` else. The blend's sum is then one `addmm` by
        lerp(K0, K1, a), which is at a = 0 the trained model's own sum, rounding included: a
        matmul followed by an add rounds differently from one `addmm` on some CPUs (AMD EPYC,
        torch 2.13: 1 ulp in 11 of 24 logits of a conv1x1 model). `call` keeps the
        `linear_kernel`s alone, which jax and tensorflow need to be exact at a = 0 and 1."""
        channels = self._channels(x.shape)
        kernels = []
        for skip in (self.start_skip, self.end_skip):
            kernel = skip.summed_kernel(channels) if summed else None
            kernel = skip.linear_kernel(channels) if kernel is None else kernel
            if kernel is None:
                return None
            kernels.append(ops.cast(kernel, "float32"))
        return tuple(kernels)

    def _blended_kernel(self, x, alpha):
        kernels = self._kernels(x)
        if kernels is None:
            return None
        return ops.cast((1.0 - alpha) * kernels[0] + alpha * kernels[1], x.dtype)

    def add(self, x, branch, training=None):
        if not fused.SUMS_IN_MATMUL:
            return super().add(x, branch, training=training)
        # torch: one addmm by the blended matrix, the matrix in torch ops (as Keras ops, about
        # ten at ~15 us each, they took 1.2 ms of a 43 ms ResNet-20 step); the count through
        # `assign`, so that a StatelessScope sees it as any variable's update
        import torch

        x, branch = ops.convert_to_tensor(x), ops.convert_to_tensor(branch)
        kernels = self._kernels(x, summed=True)
        if kernels is None:
            return fused.add(*self._mix(x, branch, self._advance(training), training))
        count = self.count.value
        with torch.no_grad():
            alpha = torch.clamp(count / float(self.steps), max=1.0)
        if training:
            self.count.assign(count + 1.0)
        return fused.linear_sum(x, torch.lerp(*kernels, alpha).to(x.dtype), branch)

    def call(self, x, branch=None, training=None):
        alpha = self._advance(training)
        kernel = self._blended_kernel(x, alpha)
        if kernel is not None:
            mapped = ops.matmul(x, kernel)
            return mapped if branch is None else (mapped, branch)
        return self._mix(x, branch, alpha, training)

    def _mix(self, x, branch, alpha, training):
        """Both mappings applied, their outputs (and branches) mixed by alpha."""
        a = ops.cast(alpha, x.dtype)
        if branch is None:
            return _lerp(self.start_skip(x, training=training), self.end_skip(x, training=training), a)
        m0, b0 = self.start_skip(x, branch, training=training)
        m1, b1 = self.end_skip(x, branch, training=training)
        return _lerp(m0, m1, a), _lerp(b0, b1, a)

    def get_config(self):
        return {
            **super().get_config(),
            "start": self.start, "start_options": self.start_options,
            "end": self.end, "end_options": self.end_options,
            "steps": self.steps, "index": self.index, "depth": self.depth, "horizon": self.horizon,
        }
