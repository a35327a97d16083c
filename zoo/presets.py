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

Safety. Every loading path goes through `verify_preset`: before anything is built or loaded,
metadata.json's sha256 is checked against the index for any folder the index lists (reached by
name or by path), then every file's size and sha256 against metadata.json; every file name is
resolved inside the folder first (no `..`, no absolute path, no symlink out). With
`get_model(arch, weights=...)` the folder's config.json must also be `arch` (its class and
ARCHITECTURE_ARGUMENTS; the head, input, skip and training arguments may differ). The
config is only accepted if its class is one of the zoo's registered model classes and its
arguments are that class's constructor arguments: nothing is imported by name and nothing is
unpickled (`.weights.h5` is HDF5, JSON is JSON). Weights are loaded into a fresh copy of the
model and copied over only when every variable matched, so a failed load leaves the model as
it was. Each failure has its own error class (all subclasses of `WeightsFileError`):
`TruncatedWeightsError`, `ChecksumMismatchError`, `CorruptedWeightsError`,
`WeightsArchitectureError`, `PresetConfigError`, `WeightsPathError` (a path that names no
usable file), `WeightsIndexError` (a malformed index.json), `UnsafePresetPathError`.

Writing. `save_preset` moves a fully written, fsynced folder into place in one atomic step
(renameat2 exchange or no-replace), creating it with the process umask; see its docstring.

Index. Each weights directory (the shipped `zoo/weights/`, package data of the wheel, then the
folders of $ZOO_WEIGHTS_PATH, separated by os.pathsep) holds preset folders named `arch.tag`; an
`index.json` there lists them with the sha256 of each metadata.json (`write_index`). A folder
without an index is scanned.
"""

import ctypes
import datetime
import errno
import fnmatch
import glob
import hashlib
import inspect
import json
import os
import re
import secrets
import shutil
import warnings
from pathlib import Path

import keras
import numpy as np

from zoo.convert.checkpoint import resolve_inside
from zoo import models  # noqa: F401  (registers the model classes a config may name)
from zoo import preprocessing
from zoo.registry import get_model_entry, registered_entries
from zoo.surgery import swap_skip, transfer_weights
from zoo.version import __version__
from zoo.errors import (  # noqa: F401  (the errors of this module, defined with every other)
    ChecksumMismatchError,
    CorruptedWeightsError,
    PresetConfigError,
    TruncatedWeightsError,
    UnknownNameError,
    UnsafePresetPathError,
    WeightsArchitectureError,
    WeightsFileError,
    WeightsIndexError,
    WeightsPathError,
)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
INDEX_FILE = "index.json"
# The shipped presets: package data (zoo/weights/), the same folder in a checkout, an editable
# install and an installed wheel; recipes.ship writes new ones here.
REPO_WEIGHTS = Path(__file__).resolve().parent / "weights"


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
    kind, path, meta_sha = locate_weights(source)
    return path if kind == "file" else verify_preset(path, meta_sha)["weights"]


def _path_problem(path):
    """Why an existing path that is neither a file nor a folder cannot be read, or None."""
    if not os.path.lexists(path) or path.is_file() or path.is_dir():
        return None
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python 3.11 reports a loop this way
            return "is a symlink loop"
        except OSError as e:
            if e.errno == errno.ELOOP:
                return "is a symlink loop"
            return f"is a symlink to {os.readlink(path)!r}, which does not exist"
        return "is a symlink loop"
    return "is not a regular file (a device, a pipe or a socket)"


def locate_weights(source, arch=None):
    """Where weights `source` lives: ("file", path, None) for a `.weights.h5` file, or
    ("preset", folder, sha256 of its metadata.json from the index, or None) for a preset folder
    or a registered name (`arch.tag`, or `tag` when `arch` is given).

    A source that is a path but names no usable file says so (WeightsPathError); an unknown name
    lists the closest registered ones (UnknownNameError).
    """
    if isinstance(source, os.PathLike):
        text, is_path = os.fspath(source), True
    elif isinstance(source, str):
        text, is_path = source, False
    else:
        raise TypeError(
            f"Received weights={source!r} of type {type(source).__name__}; expected a registered 'arch.tag', "
            "a preset folder or a '.weights.h5' file (a str or a path)."
        )
    path = Path(text)
    if path.is_dir():
        return "preset", path, indexed_metadata_sha256(path)
    if path.is_file():
        if not path.name.endswith(".weights.h5"):
            raise WeightsFileError(f"Received {text!r}; expected a Keras '.weights.h5' file or a preset folder.")
        return "file", path, None
    problem = _path_problem(path)
    if problem:
        raise WeightsPathError(f"Weights path {text!r} {problem}; expected a '.weights.h5' file or a preset folder.")
    index = weights_index() if not is_path else {}
    for name in (text, f"{arch}.{text}" if arch else None):
        if name in index:
            folder, meta_sha = index[name]
            return "preset", folder, meta_sha
    if is_path or os.sep in text or (os.altsep and os.altsep in text) or text.endswith((".h5", ".keras", ".json")):
        registered = ", ".join(sorted(weights_index())) or "none are registered"
        hint = _interrupted_hint(path) or (
            f" Expected a '.weights.h5' file, a preset folder or a registered 'arch.tag' ({registered})."
        )
        raise WeightsPathError(f"Weights path {text!r}: no such file or directory.{hint}")
    if arch is None:
        raise UnknownNameError("pretrained weights", text, weights_index())
    tags = [n.split(".", 1)[1] for n in index if n.split(".", 1)[0] == arch]
    if not tags:
        raise UnknownNameError(f"weights of {arch!r} (it has no shipped weights; pretrained: {', '.join(sorted(index))})", text, [])
    raise UnknownNameError(f"weights tag of {arch!r}", text, tags)


# === Preset folders ===
def save_preset(model, folder, metadata=None, overwrite=False, extra_files=None):
    """Write `model` as a preset folder (config.json, model.weights.h5, metadata.json).

    The folder is written beside its destination and moved into place in one atomic step, so a
    crash at any point leaves either the old folder or the new one at the destination:
    `overwrite=True` exchanges the two folders (Linux renameat2 RENAME_EXCHANGE); without it the
    move refuses a destination that appeared meanwhile (RENAME_NOREPLACE), so of two processes
    saving to the same new folder exactly one succeeds and the other raises FileExistsError.
    Where renameat2 is missing the old folder is first moved to `.NAME.old`, and a call
    interrupted between the two moves is repaired by the next `save_preset` to that folder.
    The folder is created with the process umask, as `mkdir` would.

    `metadata` adds entries (arch: the registered name it loads under, default `model.name`;
    dataset, accuracy, preprocessing, command, ...); sizes, sha256 and versions are filled in.
    `extra_files` ({name: source path}, e.g. a LICENSE) are copied in and checksummed too.
    """
    folder = Path(folder)
    recover_interrupted_save(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"Preset folder {str(folder)!r} exists; pass overwrite=True to replace it.")
    _model_class_key(model)  # only zoo model classes can be loaded back
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_dir(folder)
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
        _fsync_dir(tmp)
        _publish(tmp, folder, overwrite)
        _fsync_dir(folder.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the new folder's leftovers, or the old folder after an exchange
    return folder


# --- Atomic directory moves ---
_AT_FDCWD, _RENAME_NOREPLACE, _RENAME_EXCHANGE = -100, 1, 2


def _renameat2(src, dst, flags):
    """Linux renameat2(2). Returns False where the call or the flag is unsupported (another OS,
    an old libc or kernel, a filesystem without it); raises OSError for any other failure."""
    try:
        call = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if call(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _publish(tmp, folder, overwrite):
    """Move the written folder `tmp` to `folder` in one step (see save_preset)."""
    if not overwrite or not folder.exists():
        try:
            if not _renameat2(tmp, folder, _RENAME_NOREPLACE):
                if folder.exists():  # no atomic no-replace here: refuse what we can see
                    raise FileExistsError(errno.EEXIST, "exists", str(folder))
                os.rename(tmp, folder)  # and a non-empty folder that appears meanwhile still makes this fail
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            if overwrite:  # created meanwhile by someone else: replace it as asked
                return _publish(tmp, folder, overwrite)
            raise FileExistsError(
                f"Preset folder {str(folder)!r} was created by another process while this one was writing; "
                "it is left as that process wrote it. Pass overwrite=True to replace it."
            ) from None
        return
    if _renameat2(tmp, folder, _RENAME_EXCHANGE):
        return  # `tmp` now holds the old folder; the caller removes it
    old = _old_copy(folder)
    shutil.rmtree(old, ignore_errors=True)
    os.rename(folder, old)  # killed here, the next save_preset puts `old` back
    os.rename(tmp, folder)
    shutil.rmtree(old)


def _old_copy(folder):
    return folder.with_name(f".{folder.name}.old")


def _interrupted_hint(folder):
    old = _old_copy(Path(folder))
    if not old.is_dir():
        return ""
    return (f" An interrupted save_preset left the previous preset in {str(old)!r}; the next "
            "zoo.save_preset to this folder puts it back.")


def _new_temp_dir(folder):
    """An empty folder beside `folder`, made with os.mkdir (so the umask applies, unlike mkdtemp)."""
    while True:
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            os.mkdir(tmp)
            return tmp
        except FileExistsError:
            continue


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def recover_interrupted_save(folder):
    """Repair what a killed save_preset can leave beside `folder`: the previous preset moved to
    `.NAME.old` with nothing at the destination is put back; temporary folders of processes
    that no longer run are removed. Returns True when a preset was put back."""
    folder = Path(folder)
    if not folder.parent.is_dir():
        return False
    for tmp in folder.parent.glob(f".{glob.escape(folder.name)}.*.tmp"):
        pid = tmp.name[len(folder.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
    old = _old_copy(folder)
    if not old.is_dir():
        return False
    if folder.exists():  # killed after the second move: the old copy is garbage
        shutil.rmtree(old, ignore_errors=True)
        return False
    os.rename(old, folder)
    warnings.warn(f"Put back preset {str(folder)!r} from {old.name}, left by an interrupted save_preset.", stacklevel=3)
    return True


def _versions():
    return {"keras": keras.__version__, "backend": keras.backend.backend(), "numpy": np.__version__, "zoo": __version__}


def read_metadata(folder):
    return _read_json(resolve_inside(folder, METADATA_FILE, "Preset metadata", UnsafePresetPathError), "Preset metadata")


def indexed_metadata_sha256(folder):
    """The index's sha256 of `folder`'s metadata.json when the folder is a registered preset
    (reached by its name or by its path), else None."""
    real = Path(folder).resolve()
    for indexed, meta_sha in weights_index().values():
        if indexed.resolve() == real:
            return meta_sha
    return None


def verify_preset(folder, metadata_sha256=None, check_index=True):
    """The one check every loading path goes through; returns paths and parsed JSON.

    metadata.json is checked against the index (`metadata_sha256`, looked up when not given,
    for any folder the index lists), then every file it lists against its recorded size and
    sha256. Every name is resolved inside the folder first: nothing outside it is opened.
    `check_index=False` skips the index (only `write_index`, which is rewriting it, does that).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsFileError(f"Preset folder {str(folder)!r} does not exist.{_interrupted_hint(folder)}")
    if metadata_sha256 is None and check_index:
        metadata_sha256 = indexed_metadata_sha256(folder)
    meta_path = resolve_inside(folder, METADATA_FILE, "Preset metadata", UnsafePresetPathError)
    if metadata_sha256 is not None:
        verify_file(meta_path, metadata_sha256)
    meta = read_metadata(folder)
    sums, sizes = meta.get("sha256"), meta.get("bytes", {})
    if not isinstance(sums, dict) or not all(n in sums for n in (CONFIG_FILE, WEIGHTS_FILE)):
        raise PresetConfigError(
            f"{str(meta_path)!r} has no sha256 of {CONFIG_FILE} and {WEIGHTS_FILE}; "
            "a preset is only loaded after its checksums are verified (write it with zoo.save_preset)."
        )
    if not isinstance(sizes, dict):
        raise PresetConfigError(f"{str(meta_path)!r}: 'bytes' must be an object {{file name: size}}.")
    for n in sums:
        if not isinstance(n, str) or Path(n).name != n or n in (".", ".."):
            raise PresetConfigError(f"{str(meta_path)!r} lists {n!r}; preset files are plain names inside the folder.")
        verify_file(resolve_inside(folder, n, "Preset file", UnsafePresetPathError), sums[n], sizes.get(n))
    return {"folder": folder, "metadata": meta, "config": _read_json(folder / CONFIG_FILE, "Preset config"),
            "weights": folder / WEIGHTS_FILE}


def _model_classes():
    """'zoo>ClassName' -> class for every class the registry's presets build."""
    classes = (entry.model_class() for entry in registered_entries().values())
    return {f"zoo>{cls.__name__}": cls for cls in classes if cls is not None}


def _model_class_key(model):
    key = f"zoo>{type(model).__name__}"
    if _model_classes().get(key) is not type(model):
        raise PresetConfigError(
            f"{type(model).__name__} is not a registered zoo model class; presets hold zoo models "
            f"({', '.join(sorted(_model_classes()))})."
        )
    return key


def _config_class(config, source="config"):
    """The registered zoo class a serialized config names, and its arguments, both checked
    (no import by name, no code, no argument the constructor does not take)."""
    classes = _model_classes()
    key = config.get("registered_name") if isinstance(config, dict) else None
    if key not in classes or config.get("class_name") != key.split(">", 1)[1]:
        named = (config.get("registered_name") or config.get("class_name")) if isinstance(config, dict) else config
        raise PresetConfigError(
            f"{source} names class {named!r}, which is not "
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
    return cls, args


def model_from_config(config, overrides=None, source="config"):
    """Build a model from a serialized config, accepting only registered zoo classes and
    their constructor arguments (no import by name, no code)."""
    cls, args = _config_class(config, source)
    # the dtype policy is the caller's (get_model(dtype=...)); mixed policies store float32 weights
    args = {k: v for k, v in args.items() if k != "dtype"}
    try:
        return cls.from_config({**args, **(overrides or {})})
    except (TypeError, ValueError) as e:
        raise PresetConfigError(f"{source} does not build a {cls.__name__}: {e}") from None


# === The index ===
def weights_dirs():
    extra = [Path(p) for p in os.environ.get("ZOO_WEIGHTS_PATH", "").split(os.pathsep) if p]
    return [d for d in [REPO_WEIGHTS, *extra] if d.is_dir()]


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _index_of(directory):
    index_path = directory / INDEX_FILE
    if not index_path.is_file():
        return {p.name: (p, None) for p in sorted(directory.iterdir()) if (p / METADATA_FILE).is_file() and "." in p.name}
    index = _read_json(index_path, "Weights index")
    entries = index.get("presets")
    fix = f"rewrite it with zoo.presets.write_index({str(directory)!r})"
    if not isinstance(entries, dict):
        raise WeightsIndexError(f"Weights index {str(index_path)!r} has no 'presets' object {{name: entry}}; {fix}.")
    out = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("folder"), str):
            raise WeightsIndexError(
                f"Weights index {str(index_path)!r}: entry {name!r} has no 'folder' (the name of its preset "
                f"folder in {str(directory)!r}); {fix}."
            )
        meta_sha = entry.get("metadata_sha256")
        if not (isinstance(meta_sha, str) and _SHA256.fullmatch(meta_sha)):
            raise WeightsIndexError(
                f"Weights index {str(index_path)!r}: entry {name!r} has metadata_sha256={meta_sha!r}, not a sha256 "
                f"(64 hex digits); an indexed preset is only loaded after its metadata is verified; {fix}."
            )
        folder = resolve_inside(directory, entry["folder"], f"Preset folder of index entry {name!r}", UnsafePresetPathError)
        out[name] = (folder, meta_sha)
    return out


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
    kind, folder, _ = locate_weights(name)
    if kind != "preset":
        raise WeightsFileError(f"{str(folder)!r} is a weights file, not a preset folder.")
    return folder


def get_preset_metadata(name_or_folder):
    """metadata.json of a registered `arch.tag` or a preset folder, verified as for loading."""
    kind, path, meta_sha = locate_weights(name_or_folder)
    if kind != "preset":
        raise WeightsFileError(f"{str(path)!r} is a weights file; metadata belongs to a preset folder or an 'arch.tag'.")
    return verify_preset(path, meta_sha)["metadata"]


def write_index(directory=REPO_WEIGHTS):
    """Write `directory/index.json`: every preset folder there, its metadata's sha256, dataset
    and recorded accuracy (the table the README shows)."""
    directory = Path(directory)
    presets = {}
    for folder in sorted(p for p in directory.iterdir() if (p / METADATA_FILE).is_file()):
        meta = verify_preset(folder, check_index=False)["metadata"]
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
    metadata sha or None) or ("file", path, None); see `locate_weights`."""
    return locate_weights(weights, arch)


def load_preset(arch, folder, overrides=None, metadata_sha256=None):
    """Build the model stored in a preset folder, verified; `overrides` may change the head
    (`num_classes`: the head is dropped), the input (`input_shape` channels: the
    stem is adapted as timm does), the skip (`skip`, `skip_options`: swapped, branches kept)
    or training-only arguments (e.g. `drop_path_rate`)."""
    checked = verify_preset(folder, metadata_sha256)
    meta, config = checked["metadata"], checked["config"]
    if arch is not None and meta.get("arch") not in (None, arch):
        raise WeightsArchitectureError(
            f"Preset {str(folder)!r} holds {meta.get('arch')!r} weights; model {arch!r} was asked for. "
            f"Use get_model({meta.get('arch')!r}, weights=...) or another preset."
        )
    overrides = dict(overrides or {})
    if arch is not None:
        # builder arguments that are not the class's (a CIFAR ResNet's `depth`) say which
        # architecture is asked for; they are checked here and not passed on
        builder = get_model_entry(arch).builder_arguments(overrides)
        overrides = {k: v for k, v in overrides.items() if k not in builder}
        check_architecture(arch, config, source=str(Path(folder) / CONFIG_FILE), builder_arguments=builder,
                           trained_with=(meta.get("recipe_config") or {}).get("model_args"))
    source = model_from_config(config, source=str(Path(folder) / CONFIG_FILE))
    load_weights(source, checked["weights"])
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
        cfg = model.get_config()
        new_skip, new_opts = skip.get("skip", cfg["skip"]), skip.get("skip_options", cfg["skip_options"])
        if new_skip != cfg["skip"] or _differs(new_opts or {}, cfg["skip_options"] or {}):
            model = swap_skip(model, new_skip, new_opts)
    if model.preprocessing is None and meta.get("preprocessing") is not None:
        # what the weights expect of an input, kept with the model (see zoo.preprocessing)
        model.preprocessing = preprocessing.for_channels(preprocessing.from_dict(meta["preprocessing"]), model.input_shape[-1])
    return model


def check_architecture(arch, config, source="config", builder_arguments=None, trained_with=None):
    """Refuse a serialized model config that is not registered model `arch` (built with
    `builder_arguments`, e.g. {"depth": 8} for a CIFAR ResNet): another class, or other values
    of what the name fixes (the class's ARCHITECTURE_ARGUMENTS, e.g. a ResNet's stage depths).
    The head, input, skip and training arguments may differ."""
    entry = get_model_entry(arch)
    cls = entry.model_class()
    stored, args = _config_class(config, source)
    if stored is not cls:
        raise WeightsArchitectureError(
            f"{source} holds a {stored.__name__}; model {arch!r} is a {cls.__name__}. "
            "Load it under the architecture it was saved from."
        )
    try:
        expected = entry.class_arguments(**(builder_arguments or {}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"Received {builder_arguments} for {arch!r} with weights: {e}") from None
    signature = inspect.signature(cls.__init__).parameters
    differ = []
    for key in getattr(cls, "ARCHITECTURE_ARGUMENTS", ()):
        want = expected[key] if key in expected else signature[key].default
        if _differs(args.get(key), want):
            differ.append(f"{key}={args.get(key)!r} where {arch!r} has {want!r}")
    if differ:
        asked = f"{arch!r}" + (f" with {builder_arguments}" if builder_arguments else "")
        hint = f" Its recipe built it with model_args {trained_with}." if trained_with else ""
        raise WeightsArchitectureError(
            f"{source} is not a {asked}: {'; '.join(differ)}. Ask for the architecture the weights were "
            f"trained as (e.g. get_model({arch!r}, depth=..., weights=...) for a model built with another "
            f"depth); only num_classes, the input, the skip and training arguments may differ.{hint}"
        )


def _differs(a, b):
    """Config values differ (as JSON: tuples and lists compare equal)."""
    return json.loads(json.dumps(a, default=list)) != json.loads(json.dumps(b, default=list))
