"""Filling a zoo model from a PyTorch state dict: layouts, validation, atomic assignment.

A layout knows one source's key names (the akamaster CIFAR ResNets, timm ResNets, timm ViTs):
it maps every zoo weight path to a source key and a transform, describes the architecture a
checkpoint holds, and checks that a model can take it. `load_torch_weights` computes and
checks every new value first and assigns only when all of them fit, so a failed import leaves
the model's weights untouched.
"""

import abc
import dataclasses
import re

import keras
import numpy as np

from zoo.convert.checkpoint import Checkpoint, read_checkpoint
from zoo.errors import ArchitectureMismatchError, KeyMismatchError, UnknownNameError, WeightImportError  # noqa: F401


# === Transforms: PyTorch layout -> Keras layout, and back ===
@dataclasses.dataclass(frozen=True)
class Transform:
    name: str
    forward: object
    inverse: object


SAME = Transform("same", lambda a: a, lambda a: a)
CONV = Transform("conv OIHW->HWIO", lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1))
DENSE = Transform("dense (out,in)->(in,out)", lambda a: a.T, lambda a: a.T)

BN_PARTS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def conv_entries(zoo_layer, source_module, bias=False):
    table = {f"{zoo_layer}/kernel": (f"{source_module}.weight", CONV)}
    if bias:
        table[f"{zoo_layer}/bias"] = (f"{source_module}.bias", SAME)
    return table


def dense_entries(zoo_layer, source_module):
    return {f"{zoo_layer}/kernel": (f"{source_module}.weight", DENSE), f"{zoo_layer}/bias": (f"{source_module}.bias", SAME)}


def norm_entries(zoo_layer, source_module):
    """BatchNorm: gamma/beta/moving_mean/moving_variance <- weight/bias/running_mean/running_var."""
    return {f"{zoo_layer}/{k}": (f"{source_module}.{v}", SAME) for k, v in BN_PARTS.items()}


def layer_norm_entries(zoo_layer, source_module):
    return {f"{zoo_layer}/gamma": (f"{source_module}.weight", SAME), f"{zoo_layer}/beta": (f"{source_module}.bias", SAME)}


# === Layouts ===
class Layout(abc.ABC):
    """One source's naming. Subclasses fill the methods below; `name` keys the registry."""

    name = ""
    description = ""
    ignored_suffixes = (".num_batches_tracked",)  # buffers with no counterpart in Keras

    @abc.abstractmethod
    def detect(self, keys):
        """True when `keys` (a set of checkpoint names) look like this layout."""
        ...

    @abc.abstractmethod
    def checkpoint_architecture(self, state):
        """A dict describing the architecture the checkpoint holds (compared with the model's)."""
        ...

    @abc.abstractmethod
    def model_architecture(self, model):
        """The same dict for `model`, plus a list of reasons the model cannot take this layout."""
        ...

    def describe(self, architecture):
        """Words for an architecture dict, e.g. 'timm resnet50 (bottleneck units, ...)'."""
        return ", ".join(f"{k}={v}" for k, v in architecture.items())

    @abc.abstractmethod
    def key_map(self, model):
        """{zoo weight path: (source key, Transform)} for every weight the checkpoint fills."""
        ...

    @abc.abstractmethod
    def build_model(self, architecture, **kwargs):
        """A zoo model of `architecture` (from `checkpoint_architecture`), for import_* helpers."""
        ...

    def is_ignored(self, key):
        return key.endswith(self.ignored_suffixes)


_LAYOUTS = {}


def register_layout(layout_cls):
    _LAYOUTS[layout_cls.name] = layout_cls()
    return layout_cls


def list_layouts():
    return sorted(_LAYOUTS)


def get_layout(name):
    if name not in _LAYOUTS:
        raise UnknownNameError("weight layout", name, [*_LAYOUTS, "auto"])
    return _LAYOUTS[name]


def detect_layout(state):
    """The registered layout whose key names `state` has, or None."""
    keys = set(state)
    for layout in _LAYOUTS.values():
        if layout.detect(keys):
            return layout
    return None


def count_indices(keys, pattern):
    """{group: number of distinct indices} for keys matching `pattern` with groups (group, index)."""
    found = {}
    for key in keys:
        m = re.match(pattern, key)
        if m:
            found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return {g: max(ix) + 1 for g, ix in sorted(found.items())}


# === The report ===
@dataclasses.dataclass
class ImportReport:
    """What `load_torch_weights` did: every list names the keys or weight paths concerned."""

    layout: str
    source: str
    checkpoint_architecture: str
    loaded: list = dataclasses.field(default_factory=list)  # (zoo path, source key)
    missing: list = dataclasses.field(default_factory=list)  # (source key, zoo path): not in the checkpoint
    unexpected: list = dataclasses.field(default_factory=list)  # source keys nothing uses
    mismatched: list = dataclasses.field(default_factory=list)  # (source key, zoo path, source shape, model shape)
    ignored: list = dataclasses.field(default_factory=list)  # source buffers without a Keras counterpart
    kept: list = dataclasses.field(default_factory=list)  # model weights no checkpoint key fills (skip, drop path)
    notes: list = dataclasses.field(default_factory=list)  # architecture differences accepted by strict=False
    metadata: dict = dataclasses.field(default_factory=dict)

    @property
    def skipped(self):
        """Every problem a non-strict import stepped over (empty after a strict import)."""
        return [*(k for k, _ in self.missing), *self.unexpected, *(m[0] for m in self.mismatched)]

    def __str__(self):
        lines = [
            f"Imported {len(self.loaded)} weights from {self.source} (layout {self.layout}; "
            f"checkpoint: {self.checkpoint_architecture})."
        ]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  skipped missing key {k!r} (model weight {p} keeps its value)" for k, p in self.missing]
        lines += [f"  skipped unexpected key {k!r}" for k in self.unexpected]
        lines += [
            f"  skipped key {k!r}: shape {s} after transposition, model weight {p} has {t}" for k, p, s, t in self.mismatched
        ]
        if self.kept:
            lines.append(f"  kept {len(self.kept)} model weights the checkpoint has no key for: {', '.join(self.kept[:6])}"
                         + (", ..." if len(self.kept) > 6 else ""))
        return "\n".join(lines)


def _problem_message(model, layout, source, missing, unexpected, mismatched, limit=8):
    parts = []
    for key, path in missing[:limit]:
        parts.append(f"missing key {key!r} (for model weight {path})")
    for key in unexpected[:limit]:
        parts.append(f"unexpected key {key!r}")
    for key, path, got, want in mismatched[:limit]:
        parts.append(f"key {key!r} has shape {got} after transposition but model weight {path} has {want}")
    more = len(missing) + len(unexpected) + len(mismatched) - len(parts)
    text = "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
    return (
        f"Checkpoint {source} does not fit model {model.name!r} (layout {layout.name}): {text}. "
        "No weight was changed; pass strict=False to load the rest and list what was skipped."
    )


# === The importer ===
def load_torch_weights(model, path, layout="auto", strict=True):
    """Fill `model` with the weights of a PyTorch checkpoint; return an `ImportReport`.

    Args:
        model: a built zoo model of the checkpoint's architecture.
        path: a torch file (.th/.pt, read with `weights_only=True`), a .safetensors file, a
            sharded `*.safetensors.index.json`, or an already read `Checkpoint` / dict.
        layout: "cifar_resnet", "timm_resnet", "timm_vit" or "auto" (from the key names).
        strict: raise on any missing, unexpected or mis-shaped key (naming it) and on any
            architecture difference; with False, load every key that fits and list the rest
            in the report.

    Raises (all `WeightImportError`, a ValueError; the model is untouched when one is raised):
        CheckpointError: the file or a shard is missing, truncated or corrupted.
        ArchitectureMismatchError: the checkpoint holds another architecture or layout.
        KeyMismatchError: a key is missing, unexpected or of the wrong shape.
    """
    if isinstance(path, dict):
        state, source = path, "<state dict>"
        if not isinstance(path, Checkpoint):
            state = Checkpoint({k: np.asarray(v) for k, v in path.items()})
    else:
        state, source = read_checkpoint(path), repr(str(path))

    detected = detect_layout(state)
    if layout == "auto":
        if detected is None:
            raise ArchitectureMismatchError(
                f"Checkpoint {source} matches no known layout ({', '.join(list_layouts())}); its first keys: "
                f"{', '.join(list(state)[:5])}. Pass layout=... or add a layout with register_layout."
            )
        chosen = detected
    else:
        chosen = get_layout(layout)
        if not chosen.detect(set(state)):
            looks = f"it looks like a {detected.name} checkpoint" if detected else "its key names match no known layout"
            raise ArchitectureMismatchError(
                f"Checkpoint {source} is not a {chosen.name} checkpoint ({chosen.description}): {looks}; "
                f"first keys: {', '.join(list(state)[:5])}."
            )

    source_arch = chosen.checkpoint_architecture(state)
    model_arch, model_problems = chosen.model_architecture(model)
    report = ImportReport(chosen.name, source, chosen.describe(source_arch), metadata=dict(state.metadata))
    differences = [k for k in source_arch if k in model_arch and source_arch[k] != model_arch[k]]
    notes = list(model_problems)
    if differences:
        notes.insert(
            0,
            f"the checkpoint holds {chosen.describe(source_arch)}, the model {model.name!r} is "
            f"{chosen.describe(model_arch)} (they differ in {', '.join(differences)})",
        )
    if notes and strict:
        raise ArchitectureMismatchError(
            f"Checkpoint {source} does not hold the architecture of model {model.name!r}: {'; '.join(notes)}. "
            "No weight was changed."
        )
    report.notes = notes

    table = chosen.key_map(model)
    variables = {v.path: v for v in model.weights}
    unknown = [p for p in table if p not in variables]
    if unknown:  # a layout bug, not a user error
        raise RuntimeError(f"Layout {chosen.name} maps weights model {model.name!r} lacks: {unknown[:5]}.")

    updates, used = [], set()
    for zoo_path, (key, transform) in table.items():
        variable = variables[zoo_path]
        if key not in state:
            report.missing.append((key, zoo_path))
            continue
        used.add(key)
        value = np.asarray(transform.forward(np.asarray(state[key], dtype=np.float32)))
        want = tuple(int(d) for d in variable.shape)
        if value.shape != want:
            report.mismatched.append((key, zoo_path, tuple(value.shape), want))
            continue
        updates.append((variable, np.ascontiguousarray(value, dtype=variable.dtype), key))
    for key in state:
        if key in used:
            continue
        (report.ignored if chosen.is_ignored(key) else report.unexpected).append(key)
    report.kept = [p for p in variables if p not in table]

    if strict and (report.missing or report.unexpected or report.mismatched):
        raise KeyMismatchError(
            _problem_message(model, chosen, source, report.missing, report.unexpected, report.mismatched),
            report.missing,
            report.unexpected,
            report.mismatched,
        )
    for variable, value, key in updates:  # everything checked: now assign
        variable.assign(value)
        report.loaded.append((variable.path, key))
    return report


def export_state_dict(model, layout):
    """The inverse of `load_torch_weights`: the model's weights as a PyTorch-layout state dict."""
    chosen = get_layout(layout)
    variables = {v.path: v for v in model.weights}
    return {
        key: np.ascontiguousarray(transform.inverse(np.asarray(keras.ops.convert_to_numpy(variables[path]))))
        for path, (key, transform) in chosen.key_map(model).items()
    }


def import_checkpoint(path, layout="auto", strict=True, **model_kwargs):
    """Build the zoo model a checkpoint holds and fill it; returns (model, report)."""
    state = read_checkpoint(path) if not isinstance(path, dict) else path
    chosen = detect_layout(state) if layout == "auto" else get_layout(layout)
    if chosen is None:
        raise ArchitectureMismatchError(f"Checkpoint {str(path)!r} matches no known layout ({', '.join(list_layouts())}).")
    model = chosen.build_model(chosen.checkpoint_architecture(state), **model_kwargs)
    report = load_torch_weights(model, state, layout=chosen.name, strict=strict)
    report.source = repr(str(path))
    return model, report
