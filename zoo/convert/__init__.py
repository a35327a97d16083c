"""Importing PyTorch weights into zoo models, and swapping the skip of a trained model.

    model = zoo.get_model("resnet56_cifar", downsample="pad")
    report = zoo.convert.load_torch_weights(model, "resnet56.th")           # layout="auto"
    model, report = zoo.convert.import_timm("resnet50.safetensors.index.json")
    sparse = zoo.swap_skip(model, "sparse", k=4, seed=0)                     # branches kept

Checkpoints are read without unpickling (torch.load(weights_only=True), or safetensors parsed
here), strictly by default: a missing, unexpected or mis-shaped key raises naming it, and a
failed import leaves the model's weights unchanged.
"""

from zoo.convert import cifar_resnet, timm_resnet, timm_vit  # noqa: F401  (register the layouts)
from zoo.convert.checkpoint import (
    Checkpoint,
    CheckpointError,
    SafetensorsHeaderError,
    UnsafePathError,
    WeightImportError,
    read_checkpoint,
    write_safetensors,
    write_sharded_safetensors,
)
from zoo.convert.cifar_resnet import CIFAR_MEAN, CIFAR_STD, import_cifar_resnet
from zoo.convert.mapping import (
    ArchitectureMismatchError,
    ImportReport,
    KeyMismatchError,
    Layout,
    export_state_dict,
    import_checkpoint,
    list_layouts,
    load_torch_weights,
    register_layout,
)


def import_timm(path, arch=None, strict=True, **model_kwargs):
    """Build the zoo model a timm checkpoint holds (ResNet or ViT) and fill it.

    `arch` (e.g. "resnet50"), when given, is checked against what the checkpoint holds.
    Returns `(model, report)`.
    """
    state = read_checkpoint(path)
    model, report = import_checkpoint(state, layout="auto", strict=strict, **model_kwargs)
    if not report.layout.startswith("timm_"):
        raise ArchitectureMismatchError(f"Checkpoint {str(path)!r} is a {report.layout} checkpoint, not a timm one.")
    if arch is not None and model.name != arch:
        raise ArchitectureMismatchError(
            f"Received arch={arch!r}, but checkpoint {str(path)!r} holds {report.checkpoint_architecture}."
        )
    report.source = repr(str(path))
    return model, report
