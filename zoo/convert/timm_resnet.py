"""timm's ResNets (`resnet18`, `resnet34`, `resnet50`, ...: the torchvision layout).

    conv1, bn1                                  -> stem_conv, stem_bn
    layer{s}.{i}.conv{j}, .bn{j}                -> stage{s}_unit{i+1}/conv{j}, /bn{j}
    layer{s}.{i}.downsample.0, .downsample.1    -> stage{s}_unit{i+1}/projection, /projection_bn
    fc                                          -> head

The zoo model is `zoo.get_model("resnet50")`: 7x7/2 stem with symmetric padding, 3x3/2 max
pool, stride on the 3x3 of the bottleneck, projection shortcuts (1x1 conv + BN), placement
"original". Inputs are ImageNet-normalised: mean (0.485, 0.456, 0.406), std (0.229, 0.224,
0.225), NHWC (transpose timm's NCHW batches).
"""

from zoo.convert.cifar_resnet import _resnet_or_error
from zoo.convert.mapping import (
    Layout,
    conv_entries,
    count_indices,
    dense_entries,
    norm_entries,
    register_layout,
)
from zoo.preprocessing import NORMALIZATION, for_channels, named

IMAGENET_MEAN, IMAGENET_STD = NORMALIZATION["imagenet"]


@register_layout
class TimmResNetLayout(Layout):
    name = "timm_resnet"
    description = "timm/torchvision ResNet: conv1, bn1, layer1-4 with downsample.0/1, fc"

    def detect(self, keys):
        return "fc.weight" in keys and "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys)

    def checkpoint_architecture(self, state):
        depths = count_indices(state, r"layer(\d+)\.(\d+)\.")
        block = "bottleneck" if any(k.endswith(".conv3.weight") for k in state) else "basic"
        widths = [int(state[f"layer{s}.0.conv2.weight"].shape[0]) for s in depths if f"layer{s}.0.conv2.weight" in state]
        return {"block": block, "stage_depths": list(depths.values()), "stage_widths": widths}

    def describe(self, arch):
        from zoo.models.resnet import IMAGENET_DEPTHS

        name = "a ResNet"
        for depth, (block, depths) in IMAGENET_DEPTHS.items():
            if block == arch["block"] and list(depths) == arch["stage_depths"]:
                name = f"resnet{depth}"
        return f"{name} ({arch['block']} units, stage depths {arch['stage_depths']}, widths {arch['stage_widths']})"

    def model_architecture(self, model):
        _resnet_or_error(model, self)
        problems = []
        wanted = {"stem": "imagenet", "placement": "original", "downsample": "projection"}
        for attr, value in wanted.items():
            if getattr(model, attr) != value:
                problems.append(f"the model has {attr}={getattr(model, attr)!r}, timm's ResNets {attr}={value!r}")
        arch = {"block": model.block, "stage_depths": list(model.stage_depths), "stage_widths": list(model.stage_widths)}
        return arch, problems

    def key_map(self, model):
        table = {**conv_entries("stem_conv", "conv1"), **norm_entries("stem_bn", "bn1")}
        n_convs = 3 if model.block == "bottleneck" else 2
        for unit in model.residual_units:
            stage, i = (int(x) for x in unit.name.removeprefix("stage").split("_unit"))
            source = f"layer{stage}.{i - 1}"
            for j in range(1, n_convs + 1):
                table.update(conv_entries(f"{unit.name}/conv{j}", f"{source}.conv{j}"))
                table.update(norm_entries(f"{unit.name}/bn{j}", f"{source}.bn{j}"))
            if unit.projection is not None:
                table.update(conv_entries(f"{unit.name}/projection", f"{source}.downsample.0"))
            if unit.projection_norm is not None:
                table.update(norm_entries(f"{unit.name}/projection_bn", f"{source}.downsample.1"))
        if model.num_classes:
            table.update(dense_entries("head", "fc"))
        return table

    def build_model(self, arch, **kwargs):
        from zoo.models.resnet import ResNet

        kwargs.setdefault("num_classes", 1000)
        kwargs.setdefault("input_shape", (224, 224, 3))
        kwargs.setdefault("preprocessing", for_channels(named("imagenet"), kwargs["input_shape"][-1]))
        name = self.describe(arch).split(" ")[0]
        if name.startswith("resnet"):
            kwargs.setdefault("name", name)
        return ResNet(
            stage_depths=arch["stage_depths"], stage_widths=arch["stage_widths"], block=arch["block"],
            stem="imagenet", placement="original", downsample="projection", **kwargs,
        )
