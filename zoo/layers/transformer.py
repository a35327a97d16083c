"""Pre-norm transformer residual units on token sequences, with the numerics of timm's ViT.

A timm `Block` is two residual units, each y = M(x) + DropPath(F(LN(x))) here:

    AttentionUnit:  F = proj(softmax(q k^T / sqrt(head_dim)) v), q, k, v from one fused qkv
    MLPUnit:        F = fc2(GELU(fc1(x)))   (exact GELU, as torch's nn.GELU)

With M the identity these are timm's `x = x + drop_path1(attn(norm1(x)))` and
`x = x + drop_path2(mlp(norm2(x)))` (Dosovitskiy et al. 2020, arXiv 2010.11929). The fused
qkv output is ordered as timm's: reshape (B, N, 3, heads, head_dim).

Also here: the class token and the learned position embedding, each a layer owning its one
weight under timm's name (`cls_token`, `pos_embed`).
"""

import keras
from keras import layers, ops

from zoo.errors import check_choice, check_range
from zoo.layers.unit import BaseResidualUnit

LAYER_NORM_EPSILON = 1e-6  # timm's ViT norm_layer: partial(nn.LayerNorm, eps=1e-6)


def trunc_normal(stddev=0.02):
    """timm's default ViT weight init: truncated normal, std 0.02."""
    return keras.initializers.TruncatedNormal(stddev=stddev)


NORMS = ("layer", "rms")


def layer_norm(name, dtype=None, norm="layer"):
    """timm's LayerNorm (eps 1e-6), or with norm="rms" RMSNorm (no mean subtraction, no bias)."""
    check_choice("norm", norm, NORMS)
    if norm == "rms":
        return layers.RMSNormalization(epsilon=LAYER_NORM_EPSILON, name=name, dtype=dtype)
    return layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=name, dtype=dtype)


def dense(units, name, dtype=None):
    return layers.Dense(units, kernel_initializer=trunc_normal(), bias_initializer="zeros", name=name, dtype=dtype)


class PreNormResidualUnit(BaseResidualUnit):
    """y = M(x) + DropPath(F(LN(x))) on tokens (B, N, D); subclasses define F in `branch`
    (on the normalised tokens) and build it in `build_tokens_branch`.

    Args:
        skip, skip_options: the skip mapping M (registered name, options), on the D axis.
        drop_path_rate, drop_path_granularity: DropPath on F.
        index: the unit's position in its model; offsets the seeds of M and DropPath.
        num_units: residual units on the model's skip path; the skip mapping scales its
            strength by it (`depth` of zoo.layers.skip), so the composed path stays bounded.
        norm: "layer" (LayerNorm, timm's) or "rms" (RMSNorm: it keeps the token's mean, the
            direction a LayerNorm removes before F).
    """

    norm_name = "norm"

    def __init__(self, norm="layer", **kwargs):
        super().__init__(**kwargs)
        self.norm_kind = check_choice("norm", norm, NORMS)
        self.norm = layer_norm(self.norm_name, dtype=self.dtype_policy, norm=norm)

    def build_branch(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(
                f"{type(self).__name__} takes tokens (batch, tokens, dim) with a known dim; "
                f"received input shape {tuple(input_shape)}."
            )
        self.norm.build(input_shape)
        self.build_tokens_branch(input_shape)

    def build_tokens_branch(self, input_shape):  # extension hook: each unit kind builds its F
        raise NotImplementedError(f"{type(self).__name__} must implement build_tokens_branch(input_shape).")

    def branch_and_shortcut(self, x, training=None):
        return self.branch(self.norm(x), training=training), x

    def shortcut_only(self, x, training=None):
        return x

    def get_config(self):
        return {**super().get_config(), "norm": self.norm_kind}


@keras.saving.register_keras_serializable(package="zoo")
class AttentionUnit(PreNormResidualUnit):
    """Multi-head self-attention unit: y = M(x) + DropPath(Attn(LN(x))), timm's attention.

    Sublayers: `norm1` (timm blocks.i.norm1), `qkv` (blocks.i.attn.qkv, D -> 3D with bias),
    `proj` (blocks.i.attn.proj, D -> D). Input and output (B, N, D); D divisible by num_heads.
    """

    norm_name = "norm1"

    def __init__(self, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(check_range("num_heads", num_heads, low=1, integer=True))
        self.qkv = None
        self.proj = None

    def build_tokens_branch(self, input_shape):
        dim = int(input_shape[-1])
        if dim % self.num_heads:
            raise ValueError(
                f"Received embed dim {dim} with num_heads={self.num_heads}; the dim must be "
                "divisible by the number of heads."
            )
        self.head_dim = dim // self.num_heads
        self.qkv = dense(3 * dim, "qkv", dtype=self.dtype_policy)
        self.proj = dense(dim, "proj", dtype=self.dtype_policy)
        self.qkv.build(input_shape)
        self.proj.build(input_shape)

    def branch(self, x, training=None):
        tokens, dim = x.shape[1], x.shape[2]
        qkv = ops.reshape(self.qkv(x), (-1, tokens, 3, self.num_heads, self.head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # (3, B, heads, N, head_dim), as timm
        q, k, v = qkv[0], qkv[1], qkv[2]
        scale = ops.cast(self.head_dim**-0.5, q.dtype)
        attn = ops.softmax(ops.matmul(q * scale, ops.transpose(k, (0, 1, 3, 2))), axis=-1)
        out = ops.transpose(ops.matmul(attn, v), (0, 2, 1, 3))  # (B, N, heads, head_dim)
        return self.proj(ops.reshape(out, (-1, tokens, dim)))

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads}


@keras.saving.register_keras_serializable(package="zoo")
class MLPUnit(PreNormResidualUnit):
    """MLP unit: y = M(x) + DropPath(fc2(GELU(fc1(LN(x))))), GELU exact (erf).

    Sublayers: `norm2` (timm blocks.i.norm2), `fc1` (blocks.i.mlp.fc1, D -> hidden_dim),
    `fc2` (blocks.i.mlp.fc2, hidden_dim -> D). Input and output (B, N, D).
    """

    norm_name = "norm2"

    def __init__(self, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = int(check_range("hidden_dim", hidden_dim, low=1, integer=True))
        self.fc1 = None
        self.fc2 = None

    def build_tokens_branch(self, input_shape):
        dim = int(input_shape[-1])
        self.fc1 = dense(self.hidden_dim, "fc1", dtype=self.dtype_policy)
        self.fc2 = dense(dim, "fc2", dtype=self.dtype_policy)
        self.fc1.build(input_shape)
        self.fc2.build((*input_shape[:-1], self.hidden_dim))

    def branch(self, x, training=None):
        return self.fc2(ops.gelu(self.fc1(x), approximate=False))

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim}


@keras.saving.register_keras_serializable(package="zoo")
class ClassToken(keras.layers.Layer):
    """Prepend a learned token (weight `cls_token`, shape (1, 1, D), timm init N(0, 1e-6^2)):
    (B, N, D) -> (B, N + 1, D)."""

    def build(self, input_shape):
        self.cls_token = self.add_weight(
            name="cls_token",
            shape=(1, 1, input_shape[-1]),
            initializer=keras.initializers.RandomNormal(stddev=1e-6),
        )

    def call(self, x):
        token = ops.broadcast_to(ops.cast(self.cls_token, x.dtype), (ops.shape(x)[0], 1, x.shape[-1]))
        return ops.concatenate([token, x], axis=1)

    def compute_output_shape(self, input_shape):
        tokens = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], tokens, input_shape[2])


@keras.saving.register_keras_serializable(package="zoo")
class PositionEmbedding(keras.layers.Layer):
    """Add a learned position embedding (weight `pos_embed`, shape (1, N, D), std 0.02)."""

    def build(self, input_shape):
        if input_shape[1] is None:
            raise ValueError(f"PositionEmbedding needs a known number of tokens; received {tuple(input_shape)}.")
        self.pos_embed = self.add_weight(
            name="pos_embed", shape=(1, input_shape[1], input_shape[2]), initializer=trunc_normal()
        )

    def call(self, x):
        return x + ops.cast(self.pos_embed, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="zoo")
class TokenPool(keras.layers.Layer):
    """Tokens (B, N, D) -> (B, D): the class token (`mode="token"`, token 0) or the mean of the
    tokens after the first `num_prefix_tokens` (`mode="avg"`, timm's global_pool="avg")."""

    def __init__(self, mode="token", num_prefix_tokens=1, **kwargs):
        super().__init__(**kwargs)
        self.mode = check_choice("mode", mode, ("token", "avg"))
        self.num_prefix_tokens = int(check_range("num_prefix_tokens", num_prefix_tokens, low=0, integer=True))

    def call(self, x):
        if self.mode == "token":
            return x[:, 0]
        return ops.mean(x[:, self.num_prefix_tokens:], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "num_prefix_tokens": self.num_prefix_tokens}
