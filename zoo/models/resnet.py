"""ResNets on any skip mapping and activation placement.

CIFAR-style (He et al. 2015/2016): 3x3 stem, three stages of widths 16/32/64, depth 6n+2
(basic units) or 9n+2 (bottleneck units). ImageNet-style: 7x7/2 stem and max-pool, four
stages of widths 64/128/256/512, stride on the 3x3 of the bottleneck (as timm and
torchvision). Channels-last throughout.
"""

import keras
from keras import layers

from zoo.errors import check_choice, check_range
from zoo.layers.drop_path import linear_drop_path_rates
from zoo.layers.residual import (
    BLOCKS,
    DOWNSAMPLES,
    PLACEMENTS,
    PREACT_PLACEMENTS,
    ResidualUnit,
    SymmetricConv2D,
    batch_norm,
    conv2d,
)
from zoo.models.base import INPUT_NAME, ResidualModel
from zoo.registry import register_model

STEMS = ("cifar", "imagenet")


@keras.saving.register_keras_serializable(package="zoo")
class ResNet(ResidualModel):
    """A residual network whose every unit is y = M(x) + DropPath(F(x)).

    Args:
        stage_depths: units per stage, e.g. (18, 18, 18) for CIFAR ResNet-110.
        stage_widths: the 3x3 width of each stage (bottleneck stages output 4x that).
        block: "basic" or "bottleneck".
        stem: "cifar" (3x3 conv, stride 1) or "imagenet" (7x7/2 conv, 3x3/2 max-pool).
        placement: activation placement, one of PLACEMENTS (He et al. 2016 Fig. 4).
        skip, skip_options: the skip mapping of every unit, by registered name, and options.
        downsample: "projection" (option B) or "pad" (option A) where the shape changes.
        num_classes: size of the classification head; 0 gives the pooled features.
        input_shape: (H, W, C), channels last.
        drop_path_rate: DropPath rate of the last unit; unit l gets rate * l / (L - 1).
        drop_path_granularity: "sample" or "batch".
        zero_init_last: zero the last scale of every residual branch.
        shared_first_preact: in a pre-activation placement, the first unit's pre-activation
            comes before the split, so its shortcut starts from it too (He et al. 2016,
            appendix: the first unit follows the stem conv, which has no activation of its
            own). Off by default, which keeps the weights trained without it; the
            pre-activation presets of the paper (`resnet164_cifar`, `resnet1001_cifar`) and
            its experiment configs turn it on.
        preprocessing, name, dtype: as every zoo model (zoo.models.base.ResidualModel).

    Call: inputs, images (B, H, W, C) -> logits (B, num_classes).
    forward_features: inputs -> the final feature map (B, h, w, C), before pooling.
    """

    # What the registered name fixes: a preset of this name must have these (zoo.presets checks it).
    ARCHITECTURE_ARGUMENTS = ("stage_depths", "stage_widths", "block", "stem")

    def __init__(
        self,
        stage_depths=(3, 3, 3),
        stage_widths=(16, 32, 64),
        block="basic",
        stem="cifar",
        placement="original",
        skip="identity",
        skip_options=None,
        downsample="projection",
        num_classes=10,
        input_shape=(32, 32, 3),
        drop_path_rate=0.0,
        drop_path_granularity="sample",
        zero_init_last=False,
        shared_first_preact=False,
        preprocessing=None,
        name=None,
        dtype=None,
        **kwargs,
    ):
        # === Validation ===
        stage_depths = [int(check_range("stage_depths[i]", d, low=1, integer=True)) for d in stage_depths]
        stage_widths = [int(check_range("stage_widths[i]", w, low=1, integer=True)) for w in stage_widths]
        if len(stage_depths) != len(stage_widths):
            raise ValueError(
                f"Received {len(stage_depths)} stage_depths and {len(stage_widths)} stage_widths; "
                "they must have the same length (one entry per stage)."
            )
        check_choice("block", block, BLOCKS)
        check_choice("stem", stem, STEMS)
        check_choice("placement", placement, PLACEMENTS)
        check_choice("downsample", downsample, DOWNSAMPLES)
        skip_options, num_classes, drop_path_rate = self.check_common_arguments(
            skip, skip_options, num_classes, drop_path_rate, drop_path_granularity
        )
        input_shape = tuple(input_shape)
        if len(input_shape) != 3 or any(d is not None and int(d) < 1 for d in input_shape):
            raise ValueError(
                f"Received input_shape={input_shape}; a ResNet takes rank-3 images "
                "(height, width, channels), channels last, e.g. (32, 32, 3) or (28, 28, 1)."
            )
        zero_init_last, shared_first_preact = bool(zero_init_last), bool(shared_first_preact)
        rates = linear_drop_path_rates(drop_path_rate, sum(stage_depths))
        preact = placement in PREACT_PLACEMENTS

        # === Layers and functional model ===
        inputs = keras.Input(shape=input_shape, name=INPUT_NAME)
        if stem == "cifar":
            x = conv2d(stage_widths[0], 3, name="stem_conv")(inputs)
            if placement != "full_preact":
                x = batch_norm("stem_bn")(x)
            if not preact:
                x = layers.ReLU(name="stem_relu")(x)
        else:
            x = SymmetricConv2D(64, 7, strides=2, use_bias=False, kernel_initializer="he_normal", name="stem_conv")(inputs)
            x = batch_norm("stem_bn")(x)
            x = layers.ReLU(name="stem_relu")(x)
            # Zero padding equals PyTorch's -inf padding here: the input is post-ReLU.
            x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
            x = layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)

        common = dict(skip=skip, skip_options=skip_options, drop_path_granularity=drop_path_granularity)
        unit_names = []
        index = 0
        for stage, (depth, width) in enumerate(zip(stage_depths, stage_widths)):
            for i in range(depth):
                unit = ResidualUnit(
                    width,
                    **common,
                    block=block,
                    stride=2 if (i == 0 and stage > 0) else 1,
                    placement=placement,
                    downsample=downsample,
                    drop_path_rate=rates[index],
                    zero_init_last=zero_init_last,
                    index=index,
                    num_units=sum(stage_depths),
                    shared_preact=bool(shared_first_preact) and index == 0,
                    name=f"stage{stage + 1}_unit{i + 1}",
                )
                x = unit(x)
                unit_names.append(unit.name)
                index += 1
        if placement == "full_preact":
            x = batch_norm("final_bn")(x)
        if preact:
            x = layers.ReLU(name="final_relu")(x)
        features = x
        pooled = layers.GlobalAveragePooling2D(name="pool")(features)

        # === Head, functional model, config: these arguments (zoo.models.base) ===
        super().__init__(
            inputs=inputs, features=features, head_input=pooled, residual_units=unit_names, arguments=locals(), **kwargs
        )

    @property
    def image_shape(self):
        """(H, W, C): the `input_shape` argument."""
        return tuple(self.input_shape[1:])


def cifar_resnet(depth=20, block=None, **kwargs):
    """CIFAR ResNet of `depth` = 6n+2 (basic units) or 9n+2 (bottleneck units).

    `block=None` picks basic for 6n+2 depths and bottleneck otherwise (164, 1001).
    `stage_widths` (16, 32, 64 by default) may be given for a wide or a narrow variant.
    """
    return ResNet(**cifar_resnet_arguments(depth, block, **kwargs))


def cifar_resnet_arguments(depth=20, block=None, **kwargs):
    """The `ResNet` arguments of `cifar_resnet(depth, block, **kwargs)`."""
    depth = int(check_range("depth", depth, low=8, integer=True))
    fits = {"basic": (depth - 2) % 6 == 0, "bottleneck": (depth - 2) % 9 == 0}
    if block is None:
        if not any(fits.values()):
            raise ValueError(
                f"Received depth={depth}; a CIFAR ResNet needs depth = 6n + 2 (basic units: 20, 32, "
                "44, 56, 110, ...) or 9n + 2 (bottleneck units: 29, 164, 1001, ...)."
            )
        block = "basic" if fits["basic"] and depth < 164 else "bottleneck"
    check_choice("block", block, BLOCKS)
    per_unit = 2 if block == "basic" else 3
    if not fits[block]:
        raise ValueError(
            f"Received depth={depth} with block={block!r}; a CIFAR ResNet of {block} units needs depth = "
            f"{3 * per_unit}n + 2 ({'20, 32, 44, 56, 110' if block == 'basic' else '29, 164, 1001'}, ...)."
        )
    n = (depth - 2) // (3 * per_unit)
    if "stage_depths" in kwargs:
        raise ValueError(
            f"Received stage_depths={kwargs['stage_depths']!r} for a CIFAR ResNet of depth {depth}, which "
            "sets them; use zoo.ResNet(stage_depths=...) for other stage depths."
        )
    kwargs.setdefault("name", f"resnet{depth}_cifar")
    kwargs.setdefault("stage_widths", (16, 32, 64))
    return dict(stage_depths=(n, n, n), block=block, stem="cifar", **kwargs)


IMAGENET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}


def imagenet_resnet(depth=50, **kwargs):
    """ImageNet ResNet-18/34/50/101/152/200 (He et al.; 200 as in the pre-activation paper)."""
    return ResNet(**imagenet_resnet_arguments(depth, **kwargs))


def imagenet_resnet_arguments(depth=50, **kwargs):
    """The `ResNet` arguments of `imagenet_resnet(depth, **kwargs)`."""
    if depth not in IMAGENET_DEPTHS:
        raise ValueError(f"Received depth={depth!r}; ImageNet ResNets have depth in {sorted(IMAGENET_DEPTHS)}.")
    block, depths = IMAGENET_DEPTHS[depth]
    kwargs.setdefault("name", f"resnet{depth}")
    kwargs.setdefault("num_classes", 1000)
    kwargs.setdefault("input_shape", (224, 224, 3))
    return dict(stage_depths=depths, stage_widths=(64, 128, 256, 512), block=block, stem="imagenet", **kwargs)


cifar_resnet.forwards_to = imagenet_resnet.forwards_to = ResNet
cifar_resnet.arguments, imagenet_resnet.arguments = cifar_resnet_arguments, imagenet_resnet_arguments

# === Presets: name -> (builder, defaults) ===
RESNET_PRESETS = {
    "resnet20_cifar": (cifar_resnet, dict(depth=20)),
    "resnet32_cifar": (cifar_resnet, dict(depth=32)),
    "resnet44_cifar": (cifar_resnet, dict(depth=44)),
    "resnet56_cifar": (cifar_resnet, dict(depth=56)),
    "resnet110_cifar": (cifar_resnet, dict(depth=110)),
    "resnet164_cifar": (cifar_resnet, dict(depth=164, placement="full_preact", shared_first_preact=True)),
    "resnet1001_cifar": (cifar_resnet, dict(depth=1001, placement="full_preact", shared_first_preact=True)),
    "resnet18": (imagenet_resnet, dict(depth=18)),
    "resnet34": (imagenet_resnet, dict(depth=34)),
    "resnet50": (imagenet_resnet, dict(depth=50)),
    "resnet101": (imagenet_resnet, dict(depth=101)),
    "resnet152": (imagenet_resnet, dict(depth=152)),
    "resnet200": (imagenet_resnet, dict(depth=200)),
}

for _name, (_builder, _defaults) in RESNET_PRESETS.items():
    register_model(_name, _builder, family="resnet", **_defaults)
