"""The CIFAR ResNets of github.com/akamaster/pytorch_resnet_cifar10 (BSD-2-Clause).

Source layout (He et al. 2015 CIFAR ResNet, post-activation units, option A shortcuts):

    conv1, bn1                      -> stem_conv, stem_bn
    layer{s}.{i}.conv{j}, .bn{j}    -> stage{s}_unit{i+1}/conv{j}, /bn{j}      (j = 1, 2)
    linear                          -> head

The zoo model is `zoo.get_model("resnet56_cifar", downsample="pad")` (placement "original",
the default): option A keeps every second pixel and pads planes // 4 zero channels on each
side, as `pad_shortcut` does, so the shortcut has no weights. Inputs: x / 255, then
(x - mean) / std with mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
"""

from zoo.convert.mapping import (
    ArchitectureMismatchError,
    Layout,
    conv_entries,
    count_indices,
    dense_entries,
    norm_entries,
    register_layout,
)
from zoo.preprocessing import NORMALIZATION, named

CIFAR_MEAN, CIFAR_STD = NORMALIZATION["imagenet"]  # what the source trained with
REPORTED_ACCURACY = {20: 0.9178, 32: 0.9278, 44: 0.9314, 56: 0.9362}  # best_prec1 in the files


def _resnet_or_error(model, layout):
    from zoo.models.resnet import ResNet

    if not isinstance(model, ResNet):
        raise ArchitectureMismatchError(
            f"A {layout.name} checkpoint fills a zoo ResNet; received a {type(model).__name__} ({model.name!r})."
        )


@register_layout
class CifarResNetLayout(Layout):
    name = "cifar_resnet"
    description = "akamaster/pytorch_resnet_cifar10: conv1, bn1, layer1-3, linear"

    def detect(self, keys):
        return "linear.weight" in keys and "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys)

    def checkpoint_architecture(self, state):
        depths = count_indices(state, r"layer(\d+)\.(\d+)\.")
        widths = [int(state[f"layer{s}.0.conv1.weight"].shape[0]) for s in depths if f"layer{s}.0.conv1.weight" in state]
        return {"stage_depths": list(depths.values()), "stage_widths": widths}

    def describe(self, arch):
        depths = arch["stage_depths"]
        if len(set(depths)) == 1 and len(depths) == 3:
            name = f"resnet{6 * depths[0] + 2}_cifar"
        else:
            name = "a CIFAR ResNet"
        return f"{name} (basic units, stage depths {depths}, widths {arch['stage_widths']})"

    def model_architecture(self, model):
        _resnet_or_error(model, self)
        problems = []
        wanted = {"stem": "cifar", "block": "basic", "placement": "original", "downsample": "pad"}
        for attr, value in wanted.items():
            if getattr(model, attr) != value:
                problems.append(
                    f"the model has {attr}={getattr(model, attr)!r}, the akamaster ResNets {attr}={value!r} "
                    "(build it with zoo.get_model('resnet20_cifar', downsample='pad'))"
                )
        return {"stage_depths": list(model.stage_depths), "stage_widths": list(model.stage_widths)}, problems

    def key_map(self, model):
        table = {**conv_entries("stem_conv", "conv1"), **norm_entries("stem_bn", "bn1")}
        for s, depth in enumerate(model.stage_depths, start=1):
            for i in range(depth):
                unit, source = f"stage{s}_unit{i + 1}", f"layer{s}.{i}"
                for j in (1, 2):
                    table.update(conv_entries(f"{unit}/conv{j}", f"{source}.conv{j}"))
                    table.update(norm_entries(f"{unit}/bn{j}", f"{source}.bn{j}"))
        if model.num_classes:
            table.update(dense_entries("head", "linear"))
        return table

    def build_model(self, arch, **kwargs):
        from zoo.models.resnet import ResNet

        depths = arch["stage_depths"]
        kwargs.setdefault("num_classes", 10)
        kwargs.setdefault("preprocessing", named("imagenet"))
        if len(set(depths)) == 1 and len(depths) == 3:
            kwargs.setdefault("name", f"resnet{6 * depths[0] + 2}_cifar")
        return ResNet(
            stage_depths=depths, stage_widths=arch["stage_widths"], block="basic", stem="cifar",
            placement="original", downsample="pad", **kwargs,
        )


def import_cifar_resnet(path, strict=True, **model_kwargs):
    """Build the zoo ResNet an akamaster CIFAR checkpoint (.th) holds and fill it.

    Returns `(model, report)`; `report.metadata["best_prec1"]` is the reported test accuracy.
    """
    from zoo.convert.mapping import import_checkpoint

    return import_checkpoint(path, layout="cifar_resnet", strict=strict, **model_kwargs)
