"""Vision Transformers (Dosovitskiy et al. 2020, arXiv 2010.11929) on any skip mapping.

Structure and numerics mirror timm's `VisionTransformer` (class token, no pre-norm, no layer
scale), so timm weights import by renaming keys. Every residual add is a unit
y = M(x) + DropPath(F(LN(x))), two per block, with its own skip-mapping instance.

Layer names and their timm keys (torch Linear weights are (out, in): transpose them; the
patch conv's (D, C, p, p) kernel becomes (p, p, C, D); LayerNorm weight/bias = gamma/beta):

    patch_embed                  patch_embed.proj          Conv2D(D, p, stride p, with bias)
    cls_token/cls_token          cls_token                 (1, 1, D)
    pos_embed/pos_embed          pos_embed                 (1, N + 1, D)
    block{i}_attn/norm1          blocks.{i}.norm1
    block{i}_attn/qkv            blocks.{i}.attn.qkv       D -> 3D, output (3, heads, head_dim)
    block{i}_attn/proj           blocks.{i}.attn.proj
    block{i}_mlp/norm2           blocks.{i}.norm2
    block{i}_mlp/fc1             blocks.{i}.mlp.fc1
    block{i}_mlp/fc2             blocks.{i}.mlp.fc2
    norm                         norm                      global_pool="token"
    fc_norm                      fc_norm                   global_pool="avg" (timm: norm after pooling)
    head                         head

Blocks are numbered from 0, as timm's. Images are channels last; tokens are flattened row by
row, as timm's `flatten(2).transpose(1, 2)`.
"""

import keras
from keras import layers

from zoo.errors import check_choice, check_range
from zoo.layers.drop_path import linear_drop_path_rates
from zoo.layers.transformer import (
    NORMS,
    AttentionUnit,
    ClassToken,
    MLPUnit,
    PositionEmbedding,
    TokenPool,
    dense,
    layer_norm,
)
from zoo.models.base import INPUT_NAME, ResidualModel
from zoo.registry import register_model

GLOBAL_POOLS = ("token", "avg")


@keras.saving.register_keras_serializable(package="zoo")
class ViT(ResidualModel):
    """A Vision Transformer whose every residual add is y = M(x) + DropPath(F(LN(x))).

    Args:
        input_shape: (height, width, channels), channels last; height and width divisible by
            patch_size (the name every zoo model uses; `image_size` is its former name, still
            read from old configs).
        patch_size: side of the square patches.
        embed_dim, depth, num_heads, mlp_ratio: width D, number of blocks, attention heads,
            MLP hidden width / D (timm Ti/S/B/L: 192/384/768/1024, 12/12/12/24, 3/6/12/16, 4).
        class_token: prepend a learned class token.
        global_pool: "token" (head on the class token, after the final LayerNorm `norm`) or
            "avg" (mean of the patch tokens, then LayerNorm `fc_norm`, as timm).
        norm: "layer" (timm's LayerNorm, in every unit and at the end) or "rms" (RMSNorm, which
            keeps the token mean that a LayerNorm removes: the control for skip mappings whose
            strongest direction is near the mean, e.g. `correlation`).
        skip, skip_options: the skip mapping M of every residual unit (on the D axis).
        num_classes: size of the head; 0 gives the pooled features.
        drop_path_rate: DropPath rate of the last unit; unit l of L = 2 * depth gets
            rate * l / (L - 1).
        drop_path_granularity: "sample" or "batch".
        preprocessing, name, dtype: as every zoo model (zoo.models.base.ResidualModel).

    Call: inputs, images (B, H, W, C) -> logits (B, num_classes).
    forward_features: inputs -> tokens (B, N + 1, D) after the last block (and the final
    `norm` with global_pool="token").
    """

    # What the registered name fixes: a preset of this name must have these (zoo.presets checks it).
    ARCHITECTURE_ARGUMENTS = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")

    def __init__(
        self,
        input_shape=(224, 224, 3),
        patch_size=16,
        embed_dim=192,
        depth=12,
        num_heads=3,
        mlp_ratio=4.0,
        class_token=True,
        global_pool="token",
        norm="layer",
        skip="identity",
        skip_options=None,
        num_classes=1000,
        drop_path_rate=0.0,
        drop_path_granularity="sample",
        preprocessing=None,
        name=None,
        dtype=None,
        **kwargs,
    ):
        # === Validation ===
        if "image_size" in kwargs:  # the former name (configs and .keras files written before)
            input_shape = kwargs.pop("image_size")
        input_shape = tuple(input_shape)
        if len(input_shape) != 3 or any(not isinstance(d, int) or d < 1 for d in input_shape):
            raise ValueError(
                f"Received input_shape={input_shape}; a ViT takes rank-3 images (height, width, "
                "channels) with known positive sizes, e.g. (224, 224, 3) or (28, 28, 1)."
            )
        patch_size = int(check_range("patch_size", patch_size, low=1, integer=True))
        if input_shape[0] % patch_size or input_shape[1] % patch_size:
            raise ValueError(
                f"Received input_shape={input_shape} with patch_size={patch_size}; height and "
                "width must be divisible by the patch size."
            )
        embed_dim = int(check_range("embed_dim", embed_dim, low=1, integer=True))
        depth = int(check_range("depth", depth, low=1, integer=True))
        num_heads = int(check_range("num_heads", num_heads, low=1, integer=True))
        if embed_dim % num_heads:
            raise ValueError(
                f"Received embed_dim={embed_dim} with num_heads={num_heads}; embed_dim must be "
                "divisible by num_heads."
            )
        mlp_ratio = float(check_range("mlp_ratio", mlp_ratio, low=0.0, low_open=True))
        class_token = bool(class_token)
        check_choice("global_pool", global_pool, GLOBAL_POOLS)
        check_choice("norm", norm, NORMS)
        if global_pool == "token" and not class_token:
            raise ValueError("Received global_pool='token' with class_token=False; pooling on the "
                             "class token needs one (use global_pool='avg').")
        skip_options, num_classes, drop_path_rate = self.check_common_arguments(
            skip, skip_options, num_classes, drop_path_rate, drop_path_granularity
        )
        rates = linear_drop_path_rates(drop_path_rate, 2 * depth)
        prefix = 1 if class_token else 0

        # === Layers and functional model ===
        inputs = keras.Input(shape=input_shape, name=INPUT_NAME)
        x = layers.Conv2D(
            embed_dim, patch_size, strides=patch_size, kernel_initializer="lecun_normal", name="patch_embed"
        )(inputs)
        grid = (input_shape[0] // patch_size) * (input_shape[1] // patch_size)
        x = layers.Reshape((grid, embed_dim), name="patch_tokens")(x)
        if class_token:
            x = ClassToken(name="cls_token")(x)
        x = PositionEmbedding(name="pos_embed")(x)

        unit_names = []
        common = dict(skip=skip, skip_options=skip_options, drop_path_granularity=drop_path_granularity, norm=norm)
        for i in range(depth):
            for kind, unit_cls, arg in (("attn", AttentionUnit, dict(num_heads=num_heads)),
                                        ("mlp", MLPUnit, dict(hidden_dim=int(embed_dim * mlp_ratio)))):
                index = len(unit_names)
                unit = unit_cls(
                    **arg, **common, drop_path_rate=rates[index], index=index, num_units=2 * depth,
                    name=f"block{i}_{kind}",
                )
                x = unit(x)
                unit_names.append(unit.name)
        if global_pool == "token":
            features = layer_norm("norm", norm=norm)(x)
            pooled = TokenPool("token", name="pool")(features)
        else:
            features = x
            pooled = TokenPool("avg", num_prefix_tokens=prefix, name="pool")(features)
            pooled = layer_norm("fc_norm", norm=norm)(pooled)

        # === Head, functional model, config: these arguments (zoo.models.base) ===
        super().__init__(
            inputs=inputs, features=features, head_input=pooled, residual_units=unit_names, arguments=locals(), **kwargs
        )

    def make_head(self, num_classes):
        return dense(num_classes, "head")  # timm's initialization

    @property
    def image_shape(self):
        """(H, W, C): the `input_shape` argument."""
        return tuple(self.input_shape[1:])


# timm's sizes: (embed_dim, depth, num_heads), MLP ratio 4.
VIT_SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}


def vit_by_size(size="tiny", **kwargs):
    """A ViT of timm's `size` ("tiny", "small", "base", "large"); kwargs go to `ViT`."""
    return ViT(**vit_by_size_arguments(size, **kwargs))


def vit_by_size_arguments(size="tiny", **kwargs):
    """The `ViT` arguments of `vit_by_size(size, **kwargs)`."""
    check_choice("size", size, tuple(VIT_SIZES))
    embed_dim, depth, num_heads = VIT_SIZES[size]
    return {"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads, **kwargs}


vit_by_size.forwards_to, vit_by_size.arguments = ViT, vit_by_size_arguments

_IMAGENET = dict(input_shape=(224, 224, 3), patch_size=16, num_classes=1000)
# Small-image presets stay small (4 blocks of width 192, 3 heads) so that they train on a CPU.
_SMALL = dict(size="tiny", depth=4)

# === Presets: name -> (builder, defaults) ===
VIT_PRESETS = {
    "vit_tiny_patch16_224": (vit_by_size, dict(size="tiny", **_IMAGENET)),
    "vit_small_patch16_224": (vit_by_size, dict(size="small", **_IMAGENET)),
    "vit_base_patch16_224": (vit_by_size, dict(size="base", **_IMAGENET)),
    "vit_large_patch16_224": (vit_by_size, dict(size="large", **_IMAGENET)),
    "vit_tiny_patch4_32": (vit_by_size, dict(**_SMALL, input_shape=(32, 32, 3), patch_size=4, num_classes=10)),
    "vit_tiny_patch4_28": (vit_by_size, dict(**_SMALL, input_shape=(28, 28, 1), patch_size=4, num_classes=10)),
    "vit_tiny_patch2_28": (vit_by_size, dict(**_SMALL, input_shape=(28, 28, 1), patch_size=2, num_classes=10)),
}

for _name, (_builder, _defaults) in VIT_PRESETS.items():
    register_model(_name, _builder, family="vit", **_defaults)
