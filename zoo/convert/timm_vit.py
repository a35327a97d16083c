"""timm's Vision Transformers (`vit_tiny_patch16_224`, `vit_small_...`, `vit_base_...`).

The key correspondence is the one documented in zoo/models/vit.py:

    patch_embed.proj                     -> patch_embed                (OIHW -> HWIO)
    cls_token, pos_embed                 -> cls_token/cls_token, pos_embed/pos_embed
    blocks.{i}.norm1, .attn.qkv, .proj   -> block{i}_attn/norm1, /qkv, /proj   (fused qkv)
    blocks.{i}.norm2, .mlp.fc1, .fc2     -> block{i}_mlp/norm2, /fc1, /fc2
    norm (token pooling) or fc_norm (avg) -> norm or fc_norm
    head                                 -> head

Dense kernels are transposed ((out, in) -> (in, out)); LayerNorm weight/bias are gamma/beta.
The zoo model is `zoo.get_model("vit_tiny_patch16_224")` (S, B: "vit_small_patch16_224",
"vit_base_patch16_224"). Inputs: mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5), NHWC.
"""

from zoo.convert.mapping import (
    SAME,
    ArchitectureMismatchError,
    Layout,
    conv_entries,
    dense_entries,
    layer_norm_entries,
    register_layout,
)
from zoo.preprocessing import NORMALIZATION, for_channels, named

VIT_MEAN, VIT_STD = NORMALIZATION["inception"]
SIZE_NAMES = {192: "tiny", 384: "small", 768: "base", 1024: "large"}


@register_layout
class TimmViTLayout(Layout):
    name = "timm_vit"
    description = "timm VisionTransformer: patch_embed.proj, cls_token, pos_embed, blocks.i, norm, head"

    def detect(self, keys):
        return "patch_embed.proj.weight" in keys and "pos_embed" in keys

    def checkpoint_architecture(self, state):
        patch = state["patch_embed.proj.weight"]
        embed_dim, channels, patch_size = int(patch.shape[0]), int(patch.shape[1]), int(patch.shape[2])
        depth = _count_blocks(state)
        fc1 = state.get("blocks.0.mlp.fc1.weight")
        return {
            "embed_dim": embed_dim,
            "depth": depth,
            "patch_size": patch_size,
            "channels": channels,
            "tokens": int(state["pos_embed"].shape[1]),
            "class_token": "cls_token" in state,
            "global_pool": "avg" if "fc_norm.weight" in state else "token",
            "mlp_ratio": (int(fc1.shape[0]) / embed_dim) if fc1 is not None else None,
            "norm": "layer",  # timm's ViT norms are LayerNorms (weight and bias)
        }

    def describe(self, arch):
        size = SIZE_NAMES.get(arch["embed_dim"])
        name = f"vit_{size}_patch{arch['patch_size']}" if size else "a ViT"
        return (
            f"{name} (embed_dim {arch['embed_dim']}, depth {arch['depth']}, patch {arch['patch_size']}, "
            f"{arch['tokens']} tokens, global_pool {arch['global_pool']!r})"
        )

    def model_architecture(self, model):
        from zoo.models.vit import ViT

        if not isinstance(model, ViT):
            raise ArchitectureMismatchError(
                f"A timm_vit checkpoint fills a zoo ViT; received a {type(model).__name__} ({model.name!r})."
            )
        height, width, channels = model.image_shape
        tokens = (height // model.patch_size) * (width // model.patch_size) + int(model.class_token)
        arch = {
            "embed_dim": model.embed_dim,
            "depth": model.depth,
            "patch_size": model.patch_size,
            "channels": channels,
            "tokens": tokens,
            "class_token": model.class_token,
            "global_pool": model.global_pool,
            "mlp_ratio": model.mlp_ratio,
            "norm": model.norm,
        }
        return arch, []

    def key_map(self, model):
        table = {**conv_entries("patch_embed", "patch_embed.proj", bias=True)}
        if model.class_token:
            table["cls_token/cls_token"] = ("cls_token", SAME)
        table["pos_embed/pos_embed"] = ("pos_embed", SAME)
        for i in range(model.depth):
            attn, mlp, source = f"block{i}_attn", f"block{i}_mlp", f"blocks.{i}"
            table.update(layer_norm_entries(f"{attn}/norm1", f"{source}.norm1"))
            table.update(dense_entries(f"{attn}/qkv", f"{source}.attn.qkv"))
            table.update(dense_entries(f"{attn}/proj", f"{source}.attn.proj"))
            table.update(layer_norm_entries(f"{mlp}/norm2", f"{source}.norm2"))
            table.update(dense_entries(f"{mlp}/fc1", f"{source}.mlp.fc1"))
            table.update(dense_entries(f"{mlp}/fc2", f"{source}.mlp.fc2"))
        norm = "norm" if model.global_pool == "token" else "fc_norm"
        table.update(layer_norm_entries(norm, norm))
        if model.num_classes:
            table.update(dense_entries("head", "head"))
        return table

    def build_model(self, arch, **kwargs):
        from zoo.models.vit import ViT

        grid = arch["tokens"] - int(arch["class_token"])
        side = int(round(grid**0.5))
        if side * side != grid:
            raise ArchitectureMismatchError(
                f"The checkpoint's pos_embed has {arch['tokens']} tokens, not a square grid; build the "
                "zoo ViT yourself with its input_shape and use load_torch_weights."
            )
        head_dim = 64  # timm's ViT-Ti/S/B/L all use 64-wide heads
        kwargs.setdefault("num_classes", 1000)
        kwargs.setdefault("preprocessing", for_channels(named("inception"), arch["channels"]))
        size = SIZE_NAMES.get(arch["embed_dim"])
        image = side * arch["patch_size"]
        if size:
            kwargs.setdefault("name", f"vit_{size}_patch{arch['patch_size']}_{image}")
        return ViT(
            input_shape=(image, image, arch["channels"]),
            patch_size=arch["patch_size"],
            embed_dim=arch["embed_dim"],
            depth=arch["depth"],
            num_heads=max(1, arch["embed_dim"] // head_dim),
            mlp_ratio=arch["mlp_ratio"] or 4.0,
            class_token=arch["class_token"],
            global_pool=arch["global_pool"],
            **kwargs,
        )


def _count_blocks(state):
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    return max(blocks) + 1 if blocks else 0
