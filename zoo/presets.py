"""Shipped weights: preset folders, the weights index, safe loading and fine-tuning transfer.

    model = zoo.get_model("resnet56_cifar.cifar10")                     # by arch.tag
    model = zoo.get_model("resnet56_cifar", weights="cifar10")           # the same, by tag
    model = zoo.get_model("resnet56_cifar", weights="runs/x/preset")     # a local preset folder
    model = zoo.get_model("resnet20_cifar", weights="runs/x/model.weights.h5")  # a local file
    model = zoo.get_model("resnet56_cifar.cifar10", num_classes=5, input_shape=(28, 28, 1),
                          skip="sparse", skip_options={"k": 4}, freeze_trunk=True)  # fine-tune
    zoo.save_preset(model, "my_preset", metadata={"dataset": "fashion_mnist"})
    zoo.load_weights(model, "my_preset")   # into an existing model; untouched if anything fails

A preset folder has the keras-hub layout:

    config.json        keras.saving.serialize_keras_object(model): class and constructor args
    model.weights.h5   model.save_weights(...)
    metadata.json      name, arch, dataset, accuracy, preprocessing, the command that made the
                       weights, keras/backend versions, and the sha256 and size of both files
    LICENSE            where the weights come from elsewhere

Safety. Before anything is built or loaded, both files' sizes and sha256 are checked against
metadata.json (and metadata.json's own sha256 against the index, for shipped weights). The
config is only accepted if its class is one of the zoo's registered model classes and its
arguments are that class's constructor arguments: nothing is imported by name and nothing is
unpickled (`.weights.h5` is HDF5, JSON is JSON). Weights are loaded into a fresh copy of the
model and copied over only when every variable matched, so a failed load leaves the model as
it was. Each failure has its own error class (all subclasses of `WeightsFileError`):
`TruncatedWeightsError`, `ChecksumMismatchError`, `CorruptedWeightsError`,
`ArchitectureMismatchError`, `PresetConfigError`.

Index. Each weights directory (the repository's `weights/`, then the folders of
$ZOO_WEIGHTS_PATH, separated by os.pathsep) holds preset folders named `arch.tag`; an
`index.json` there lists them with the sha256 of each metadata.json (`write_index`). A folder
without an index is scanned.
"""

import datetime
import fnmatch
import hashlib
import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np

from zoo.convert.checkpoint import CheckpointError
from zoo.convert.mapping import ArchitectureMismatchError
from zoo.errors import UnknownNameError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
INDEX_FILE = "index.json"
REPO_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


# === Errors: one class per way a file can be wrong ===
class WeightsFileError(CheckpointError):
    """A weights file or preset folder cannot be used; the model it was loaded into is unchanged."""


class TruncatedWeightsError(WeightsFileError):
    """The file is shorter than recorded (or than its own format says): an interrupted copy."""


class ChecksumMismatchError(WeightsFileError):
    """The file's sha256 differs from the one recorded in metadata.json (or the index)."""


class CorruptedWeightsError(WeightsFileError):
    """The file is not a readable weights file (not HDF5, bad JSON, unreadable data)."""


class PresetConfigError(WeightsFileError):
    """config.json or metadata.json names a class or argument the zoo does not allow."""


# Wrong-architecture errors share the importers' class (and are WeightsFileErrors too).
class WeightsArchitectureError(ArchitectureMismatchError, WeightsFileError):
    """The weights belong to another architecture than the model they are loaded into."""


# === Files ===
def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_json(path, what):
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise WeightsFileError(f"{what} {str(path)!r} does not exist.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptedWeightsError(f"{what} {str(path)!r} is not valid JSON ({e}).") from None
    if not isinstance(value, dict):
        raise CorruptedWeightsError(f"{what} {str(path)!r} must hold a JSON object, found {type(value).__name__}.")
    return value


def verify_file(path, sha256, size=None):
    """Refuse a file whose size or sha256 differs from the recorded ones."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{str(path)!r} does not exist.")
    actual = path.stat().st_size
    if size is not None and actual != size:
        kind = TruncatedWeightsError if actual < size else ChecksumMismatchError
        raise kind(
            f"{str(path)!r} has {actual} bytes, {size} were recorded: the file is "
            f"{'truncated (an interrupted download or copy?)' if actual < size else 'not the recorded one'}; "
            "refusing to load it."
        )
    digest = sha256_file(path)
    if sha256 is not None and digest != sha256:
        raise ChecksumMismatchError(
            f"{str(path)!r} has sha256 {digest}, {sha256} was recorded: the file was altered or "
            "replaced; refusing to load it."
        )
    return digest


def _h5_variables(path):
    """Shapes of the variables stored in a Keras `.weights.h5`, read with h5py."""
    import h5py

    path = Path(path)
    shapes = []
    try:
        with h5py.File(path, "r") as f:
            def visit(name, obj):
                # the model's own variables; an optimizer saved beside them ("optimizer/...") is not part of it
                if isinstance(obj, h5py.Dataset) and "/vars/" in f"/{name}" and not name.startswith("optimizer/"):
                    shapes.append((name, tuple(obj.shape)))
            f.visititems(visit)
    except OSError as e:
        msg = str(e)
        if "truncated" in msg or "eof" in msg.lower():
            raise TruncatedWeightsError(f"{str(path)!r} is truncated ({msg}); refusing to load it.") from None
        raise CorruptedWeightsError(f"{str(path)!r} is not a readable .weights.h5 file ({msg}).") from None
    return shapes


# === Loading into a model, all or nothing ===
def _fresh_copy(model):
    try:
        return type(model).from_config(model.get_config())
    except (TypeError, NotImplementedError):
        return keras.models.clone_model(model)


def load_weights(model, source):
    """Load `source` (a `.weights.h5` file, a preset folder or a registered `arch.tag`) into
    `model`. Checks sizes and checksums first (presets), loads into a fresh copy, and copies
    the values over only if every variable matched: on any error `model` is unchanged."""
    path = _weights_file(source)
    stored = _h5_variables(path)
    expected = [tuple(w.shape) for w in model.weights]
    if sorted(s for _, s in stored) != sorted(expected):
        have = {}
        for _, s in stored:
            have[s] = have.get(s, 0) + 1
        for s in expected:
            have[s] = have.get(s, 0) - 1
        extra = [f"{s} x{n}" for s, n in have.items() if n > 0][:4]
        missing = [f"{s} x{-n}" for s, n in have.items() if n < 0][:4]
        raise WeightsArchitectureError(
            f"{str(path)!r} holds {len(stored)} variables, model {model.name!r} has {len(expected)}; "
            f"shapes only in the file: {extra or 'none'}, only in the model: {missing or 'none'}. "
            "The weights are for another architecture (or another num_classes / input shape: "
            "get_model(..., weights=preset_folder, num_classes=...) drops and adapts what differs)."
        )
    copy = _fresh_copy(model)
    try:
        copy.load_weights(path)
    except ValueError as e:
        raise WeightsArchitectureError(f"{str(path)!r} does not fit model {model.name!r}: {e}") from None
    except OSError as e:
        raise CorruptedWeightsError(f"{str(path)!r} could not be read ({e}).") from None
    values = [keras.ops.convert_to_numpy(w) for w in copy.weights]
    for w, value in zip(model.weights, values):
        w.assign(value)
    return model


def _weights_file(source):
    """A .weights.h5 path from a file, a verified preset folder or a registered name."""
    path = Path(str(source))
    if path.is_file():
        if not path.name.endswith(".weights.h5"):
            raise WeightsFileError(f"Received {str(path)!r}; expected a Keras '.weights.h5' file or a preset folder.")
        return path
    folder = path if path.is_dir() else preset_folder(str(source))
    return verify_preset(folder)["weights"]


# === Preset folders ===
def save_preset(model, folder, metadata=None, overwrite=False, extra_files=None):
    """Write `model` as a preset folder (config.json, model.weights.h5, metadata.json).

    The folder is written beside its destination and renamed into place, so a crash leaves
    either the old folder or the new one, never a half-written one. `metadata` adds entries
    (arch: the registered name it loads under, default `model.name`; dataset, accuracy,
    preprocessing, command, ...); sizes, sha256 and versions are filled in.
    `extra_files` ({name: source path}, e.g. a LICENSE) are copied in and checksummed too.
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"Preset folder {str(folder)!r} exists; pass overwrite=True to replace it.")
    _model_class_key(model)  # only zoo model classes can be loaded back
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        config = keras.saving.serialize_keras_object(model)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1))
        bare = _fresh_copy(model)  # the weights alone: no optimizer state rides along
        for w, value in zip(bare.weights, [keras.ops.convert_to_numpy(v) for v in model.weights]):
            w.assign(value)
        bare.save_weights(tmp / WEIGHTS_FILE)
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        files = [CONFIG_FILE, WEIGHTS_FILE, *(extra_files or {})]
        meta = {
            "name": folder.name,
            "arch": model.name,
            "class": config["registered_name"],
            "num_classes": getattr(model, "num_classes", None),
            "input_shape": list(model.input_shape[1:]),
            **(metadata or {}),
            "versions": {**_versions(), **(metadata or {}).get("versions", {})},
            "created": datetime.date.today().isoformat(),
        }
        meta["sha256"] = {n: sha256_file(tmp / n) for n in files}
        meta["bytes"] = {n: (tmp / n).stat().st_size for n in files}
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _versions():
    import zoo

    return {"keras": keras.__version__, "backend": keras.backend.backend(), "numpy": np.__version__, "zoo": zoo.__version__}


def read_metadata(folder):
    return _read_json(Path(folder) / METADATA_FILE, "Preset metadata")


def verify_preset(folder, metadata_sha256=None):
    """Check a preset folder's files against metadata.json; returns paths and parsed JSON."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsFileError(f"Preset folder {str(folder)!r} does not exist.")
    if metadata_sha256 is not None:
        verify_file(folder / METADATA_FILE, metadata_sha256)
    meta = read_metadata(folder)
    sums, sizes = meta.get("sha256"), meta.get("bytes", {})
    if not isinstance(sums, dict) or not all(n in sums for n in (CONFIG_FILE, WEIGHTS_FILE)):
        raise PresetConfigError(
            f"{str(folder / METADATA_FILE)!r} has no sha256 of {CONFIG_FILE} and {WEIGHTS_FILE}; "
            "a preset is only loaded after its checksums are verified (write it with zoo.save_preset)."
        )
    for n in sums:
        if Path(n).name != n:
            raise PresetConfigError(f"{str(folder / METADATA_FILE)!r} lists {n!r}; preset files are plain names inside the folder.")
        verify_file(folder / n, sums[n], sizes.get(n))
    return {"folder": folder, "metadata": meta, "config": _read_json(folder / CONFIG_FILE, "Preset config"),
            "weights": folder / WEIGHTS_FILE}


def _model_classes():
    """'zoo>ClassName' -> class for every class the registry's presets build."""
    from zoo.registry import _MODELS

    out = {}
    for entry in _MODELS.values():
        builder = entry.builder
        while builder is not None:
            if isinstance(builder, type):
                out[f"zoo>{builder.__name__}"] = builder
                break
            builder = getattr(builder, "forwards_to", None)
    return out


def _model_class_key(model):
    key = f"zoo>{type(model).__name__}"
    if _model_classes().get(key) is not type(model):
        raise PresetConfigError(
            f"{type(model).__name__} is not a registered zoo model class; presets hold zoo models "
            f"({', '.join(sorted(_model_classes()))})."
        )
    return key


def model_from_config(config, overrides=None, source="config"):
    """Build a model from a serialized config, accepting only registered zoo classes and
    their constructor arguments (no import by name, no code)."""
    classes = _model_classes()
    key = config.get("registered_name")
    if key not in classes or config.get("class_name") != key.split(">", 1)[1]:
        raise PresetConfigError(
            f"{source} names class {config.get('registered_name') or config.get('class_name')!r}, which is not "
            f"a zoo model class; allowed: {', '.join(sorted(classes))}. Nothing was imported."
        )
    cls = classes[key]
    args = config.get("config")
    if not isinstance(args, dict):
        raise PresetConfigError(f"{source} has no 'config' object of constructor arguments.")
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"} | {"name", "trainable", "dtype"}
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise PresetConfigError(f"{source}: {unknown} are not arguments of {cls.__name__}; allowed: {sorted(allowed)}.")
    try:
        return cls.from_config({**args, **(overrides or {})})
    except (TypeError, ValueError) as e:
        raise PresetConfigError(f"{source} does not build a {cls.__name__}: {e}") from None


# === The index ===
def weights_dirs():
    extra = [Path(p) for p in os.environ.get("ZOO_WEIGHTS_PATH", "").split(os.pathsep) if p]
    return [d for d in [REPO_WEIGHTS, *extra] if d.is_dir()]


def _index_of(directory):
    index_path = directory / INDEX_FILE
    if index_path.is_file():
        index = _read_json(index_path, "Weights index")
        return {name: (directory / e["folder"], e.get("metadata_sha256")) for name, e in index.get("presets", {}).items()}
    return {p.name: (p, None) for p in sorted(directory.iterdir()) if (p / METADATA_FILE).is_file() and "." in p.name}


def weights_index():
    """name ('arch.tag') -> (folder, sha256 of its metadata.json or None), over weights_dirs()."""
    out = {}
    for d in weights_dirs():
        for name, value in _index_of(d).items():
            out.setdefault(name, value)
    return out


def list_pretrained(pattern="*"):
    return sorted(n for n in weights_index() if fnmatch.fnmatch(n, pattern))


def preset_folder(name):
    index = weights_index()
    if name not in index:
        raise UnknownNameError("pretrained weights", name, index)
    return index[name][0]


def get_preset_metadata(name_or_folder):
    """metadata.json of a registered `arch.tag` or a preset folder (verified against the index)."""
    path = Path(name_or_folder)
    if path.is_dir():
        return read_metadata(path)
    folder, meta_sha = weights_index().get(name_or_folder, (preset_folder(name_or_folder), None))
    if meta_sha:
        verify_file(folder / METADATA_FILE, meta_sha)
    return read_metadata(folder)


def write_index(directory=REPO_WEIGHTS):
    """Write `directory/index.json`: every preset folder there, its metadata's sha256, dataset
    and recorded accuracy (the table the README shows)."""
    directory = Path(directory)
    presets = {}
    for folder in sorted(p for p in directory.iterdir() if (p / METADATA_FILE).is_file()):
        meta = verify_preset(folder)["metadata"]
        presets[folder.name] = {
            "folder": folder.name,
            "arch": meta.get("arch"),
            "dataset": meta.get("dataset"),
            "accuracy": meta.get("accuracy"),
            "metadata_sha256": sha256_file(folder / METADATA_FILE),
        }
    text = json.dumps({"presets": presets}, indent=1) + "\n"
    tmp = directory / f".{INDEX_FILE}.tmp"
    tmp.write_text(text)
    os.replace(tmp, directory / INDEX_FILE)
    return presets


# === Resolving get_model(..., weights=...) ===
def resolve_weights(arch, weights):
    """`weights` (a tag, an arch.tag, a preset folder or a .weights.h5 file) -> ("preset", folder,
    metadata sha or None) or ("file", path)."""
    path = Path(str(weights))
    if path.is_dir():
        return "preset", path, None
    if path.is_file() or str(weights).endswith(".h5"):
        if not path.is_file():
            raise WeightsFileError(f"Weights file {str(path)!r} does not exist.")
        return "file", path, None
    index = weights_index()
    name = str(weights) if str(weights) in index else f"{arch}.{weights}"
    if name not in index:
        tags = [n.split(".", 1)[1] for n in index if n.split(".", 1)[0] == arch]
        if not tags:
            raise UnknownNameError(f"weights of {arch!r} (it has no shipped weights; pretrained: {', '.join(sorted(index))})", weights, [])
        raise UnknownNameError(f"weights tag of {arch!r}", weights, tags)
    folder, meta_sha = index[name]
    return "preset", folder, meta_sha


def load_preset(arch, folder, overrides=None, metadata_sha256=None):
    """Build the model stored in a preset folder, verified; `overrides` may change the head
    (`num_classes`: the head is dropped), the input (`input_shape`/`image_size` channels: the
    stem is adapted as timm does), the skip (`skip`, `skip_options`: swapped, branches kept)
    or training-only arguments (e.g. `drop_path_rate`)."""
    checked = verify_preset(folder, metadata_sha256)
    meta, config = checked["metadata"], checked["config"]
    if arch is not None and meta.get("arch") not in (None, arch):
        raise WeightsArchitectureError(
            f"Preset {str(folder)!r} holds {meta.get('arch')!r} weights; model {arch!r} was asked for. "
            f"Use get_model({meta.get('arch')!r}, weights=...) or another preset."
        )
    source = model_from_config(config, source=str(Path(folder) / CONFIG_FILE))
    load_weights(source, checked["weights"])
    overrides = dict(overrides or {})
    skip = {k: overrides.pop(k) for k in ("skip", "skip_options") if k in overrides}
    model = source
    if overrides:
        stored = config["config"]
        unknown = [k for k in overrides if k not in stored]
        if unknown:
            raise ValueError(
                f"Received {', '.join(f'{k}={overrides[k]!r}' for k in unknown)} with weights from {str(folder)!r}: "
                f"with weights the architecture is the stored {type(source).__name__} config, so only its own "
                f"arguments can be overridden ({', '.join(sorted(stored))}); drop the others."
            )
        if any(_differs(stored[k], v) for k, v in overrides.items()):
            model = model_from_config(config, overrides, source=str(Path(folder) / CONFIG_FILE))
            transfer_weights(source, model)
    if skip:
        from zoo.convert.swap import swap_skip

        cfg = model.get_config()
        new_skip, new_opts = skip.get("skip", cfg["skip"]), skip.get("skip_options", cfg["skip_options"])
        if new_skip != cfg["skip"] or _differs(new_opts or {}, cfg["skip_options"] or {}):
            model = swap_skip(model, new_skip, new_opts)
    return model


def _differs(a, b):
    """Config values differ (as JSON: tuples and lists compare equal)."""
    return json.loads(json.dumps(a, default=list)) != json.loads(json.dumps(b, default=list))


def transfer_weights(source, target, head="head"):
    """Copy `source`'s weights into `target` by path, for fine-tuning (as timm's pretrained
    loading does): the classifier head is left at its initialization when its shape differs;
    a first conv whose input channels differ is adapted (summed to 1 channel, or repeated and
    rescaled); any other difference is an error. Returns the list of weight paths not copied."""
    src = {w.path: w for w in source.weights}
    plan, skipped = [], []
    in_src, in_tgt = source.input_shape[-1], target.input_shape[-1]
    for w in target.weights:
        s = src.get(w.path)
        value = None if s is None else keras.ops.convert_to_numpy(s)
        if value is not None and value.shape == tuple(w.shape):
            plan.append((w, value))
        elif w.path.startswith(f"{head}/"):
            skipped.append(w.path)
        elif value is not None and value.ndim == 4 and value.shape[2] == in_src and tuple(w.shape) == value.shape[:2] + (in_tgt,) + value.shape[3:]:
            plan.append((w, adapt_input_conv(value, in_tgt)))
        else:
            raise WeightsArchitectureError(
                f"Cannot transfer weight {w.path} of shape {tuple(w.shape)}: the source model has "
                f"{'no such weight' if value is None else f'shape {value.shape}'}. Only num_classes (the head), "
                "the input channels (the first conv) and the skip mapping may differ."
            )
    for w, value in plan:
        w.assign(value)
    return skipped


def adapt_input_conv(kernel, in_channels):
    """timm's adapt_input_conv for a (kh, kw, c_in, c_out) kernel: to 1 channel by summing,
    to more by repeating and scaling so the response to a gray image is unchanged."""
    c = kernel.shape[2]
    if in_channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    reps = -(-in_channels // c)
    return np.tile(kernel, (1, 1, reps, 1))[:, :, :in_channels] * (c / in_channels)


def freeze_trunk(model, head="head"):
    """Make every layer but the classifier head non-trainable (BatchNorm then runs in inference
    mode, as when fine-tuning a frozen backbone)."""
    found = False
    for layer in model.layers:
        layer.trainable = layer.name == head
        found |= layer.name == head
    if not found:
        raise ValueError(f"Model {model.name!r} has no layer named {head!r} (num_classes=0?); nothing would train.")
    return model
