"""Reading PyTorch checkpoints without unpickling: torch files and (sharded) safetensors.

    tensors = read_checkpoint("resnet20.th")                     # torch.load(weights_only=True)
    tensors = read_checkpoint("resnet50.safetensors.index.json")  # Hugging Face shards

Every reader returns a `Checkpoint`: a dict from tensor name to a numpy array (floating point
widened to float32 exactly: bfloat16 by its bit pattern, uint16 << 16) with a `metadata` dict
for non-tensor entries (e.g. `best_prec1`) and `files`. A DataParallel `module.` prefix is
stripped. Any unreadable, truncated or inconsistent file raises `CheckpointError` naming it.

safetensors files are parsed here (an 8-byte little-endian header length, a JSON header of
{name: {dtype, shape, data_offsets}}, then the raw bytes) so that reading them needs neither
torch nor the safetensors package, and every inconsistency gets its own message.
"""

import json
import os
import struct
from pathlib import Path

import numpy as np

from zoo.errors import CheckpointError, SafetensorsHeaderError, UnsafePathError, WeightImportError  # noqa: F401


def resolve_inside(folder, name, what="file", error=UnsafePathError):
    """`folder / name`, refused unless it stays inside `folder` once resolved.

    `name` must be a relative path without `..` parts, and the file it designates (symlinks
    followed) must lie inside `folder`. Checked before anything is opened.
    """
    folder = Path(folder)
    if not isinstance(name, str) or not name or "\x00" in name:
        raise error(f"{what} {name!r} named in {str(folder)!r} is not a file name.")
    relative = Path(name)
    if relative.is_absolute() or os.path.isabs(name) or relative.drive:
        raise error(
            f"{what} {name!r} named in {str(folder)!r} is an absolute path; only files inside that folder "
            "are read (name them relative to it). Nothing was opened."
        )
    if ".." in relative.parts:
        raise error(
            f"{what} {name!r} named in {str(folder)!r} climbs out of it with '..'; only files inside that "
            "folder are read. Nothing was opened."
        )
    root = folder.resolve()
    target = (folder / relative).resolve()
    if target != root and root not in target.parents:
        raise error(
            f"{what} {name!r} in {str(folder)!r} is a symlink to {str(target)!r}, outside the folder; "
            "only files inside it are read. Nothing was opened."
        )
    return folder / relative


class Checkpoint(dict):
    """name -> numpy array, with `metadata` (non-tensor entries) and the `files` read."""

    def __init__(self, tensors=(), metadata=None, files=()):
        super().__init__(tensors)
        self.metadata = dict(metadata or {})
        self.files = [str(f) for f in files]


# safetensors dtype -> (numpy dtype of the stored bytes, itemsize)
SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # widened below
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
MAX_HEADER_BYTES = 100_000_000


def bfloat16_to_float32(bits):
    """Exact: a bfloat16 is the upper half of the float32 with the same bit pattern."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path):
    """One .safetensors file -> Checkpoint. Raises CheckpointError naming file and tensor."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file {str(path)!r} does not exist.")
    data = path.read_bytes()
    if len(data) < 8:
        raise CheckpointError(f"{str(path)!r} is not a safetensors file: {len(data)} bytes, shorter than its header length field.")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > min(MAX_HEADER_BYTES, len(data) - 8):
        raise CheckpointError(
            f"{str(path)!r} is corrupted or truncated: its header claims {header_len} bytes, "
            f"the file has {len(data) - 8} after the length field."
        )
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{str(path)!r} is corrupted: its safetensors header is not valid JSON ({e}).") from None
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise SafetensorsHeaderError(
            f"{str(path)!r} is corrupted: its '__metadata__' must be an object of string values, found {metadata!r:.200}."
        )
    body = memoryview(data)[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        dtype, shape, begin, end = _header_entry(path, name, info)
        if end > len(body):
            raise CheckpointError(
                f"{str(path)!r} is truncated: tensor {name!r} ends at byte {end} of the data, "
                f"the file holds {len(body)} data bytes."
            )
        array = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape)
        if info["dtype"] == "BF16":
            array = bfloat16_to_float32(array)
        tensors[name] = array.astype(np.float32) if array.dtype.kind == "f" else array.copy()
    return Checkpoint(tensors, metadata, [path])


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _header_entry(path, name, info):
    """(dtype, shape, begin, end) of one header entry, or SafetensorsHeaderError naming it."""
    def bad(why):
        return SafetensorsHeaderError(f"{str(path)!r} is corrupted: tensor {name!r} {why} (entry: {info!r:.200}).")

    if not isinstance(info, dict):
        raise bad("has a header entry that is not an object")
    if info.get("dtype") not in SAFETENSORS_DTYPES:
        raise bad(f"has dtype {info.get('dtype')!r}; known dtypes: {', '.join(SAFETENSORS_DTYPES)}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise bad("has a shape that is not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise bad("has data_offsets that are not two integers")
    dtype = SAFETENSORS_DTYPES[info["dtype"]]
    begin, end = offsets
    expected = dtype.itemsize
    for d in shape:  # Python integers: no overflow, however large the shape claims to be
        expected *= d
    if not 0 <= begin <= end or end - begin != expected:
        raise bad(f"of dtype {info['dtype']} and shape {tuple(shape)} needs {expected} bytes, its offsets give {end - begin}")
    return dtype, tuple(shape), begin, end


def read_sharded_safetensors(index_path):
    """A `*.safetensors.index.json` ({"weight_map": {name: shard file}}) and its shards."""
    index_path = Path(index_path)
    if not index_path.is_file():
        raise CheckpointError(f"Checkpoint index {str(index_path)!r} does not exist.")
    try:
        index = json.loads(index_path.read_text())
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict) or not isinstance(index.get("metadata") or {}, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(
            f"{str(index_path)!r} is not a sharded-checkpoint index: it needs a JSON object with a "
            "'weight_map' {tensor name: shard file}."
        ) from None
    shards = list(dict.fromkeys(weight_map.values()))
    paths = {shard: resolve_inside(index_path.parent, shard, f"Shard listed in {index_path.name}") for shard in shards}
    for shard in shards:
        if not paths[shard].is_file():
            names = [k for k, v in weight_map.items() if v == shard]
            raise CheckpointError(
                f"Shard {shard!r} listed in {str(index_path)!r} (for {len(names)} tensors, e.g. "
                f"{names[0]!r}) does not exist in {str(index_path.parent)!r}."
            )
    merged = Checkpoint(metadata=index.get("metadata"), files=[index_path])
    for shard in shards:
        part = read_safetensors(paths[shard])
        for name, file in weight_map.items():
            if file == shard and name not in part:
                raise CheckpointError(f"Shard {shard!r} lacks tensor {name!r}, which {str(index_path)!r} places in it.")
        merged.update(part)
        merged.files += part.files
    return merged


def read_torch_file(path):
    """A torch.save file, read with `torch.load(weights_only=True)` (never a plain unpickle)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file {str(path)!r} does not exist (or is not a file).")
    import torch  # only here: reading .th/.pt files needs torch, `import zoo` does not

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise CheckpointError(
            f"{str(path)!r} could not be read by torch.load(weights_only=True): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state, metadata = obj["state_dict"], {k: v for k, v in obj.items() if k != "state_dict"}
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        state, metadata = obj["model"], {k: v for k, v in obj.items() if k != "model"}
    elif isinstance(obj, dict):
        state, metadata = obj, {}
    else:
        raise CheckpointError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict.")
    tensors = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            metadata[name] = value
            continue
        value = value.detach().cpu()
        tensors[name] = value.float().numpy() if value.is_floating_point() else value.numpy().copy()
    metadata = {k: (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v) for k, v in metadata.items()}
    return Checkpoint(tensors, metadata, [path])


def read_checkpoint(path):
    """Read a torch file (.th, .pt, .pth, .bin), a .safetensors file or a sharded index.

    Returns a `Checkpoint` (name -> float32 numpy array); a `module.` prefix is stripped.
    """
    path = Path(path)
    name = path.name
    if name.endswith(".json"):
        checkpoint = read_sharded_safetensors(path)
    elif name.endswith(".safetensors"):
        checkpoint = read_safetensors(path)
    else:
        checkpoint = read_torch_file(path)
    if checkpoint and all(k.startswith("module.") for k in checkpoint):
        stripped = Checkpoint({k[len("module.") :]: v for k, v in checkpoint.items()}, checkpoint.metadata, checkpoint.files)
        checkpoint = stripped
    return checkpoint


def write_safetensors(path, tensors, metadata=None):
    """Write name -> numpy array as one .safetensors file (float32, float16, int64, ...)."""
    codes = {v: k for k, v in SAFETENSORS_DTYPES.items() if k != "BF16"}
    header, chunks, offset = {}, [], 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        dtype = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
        raw = array.astype(dtype).tobytes()
        header[name] = {"dtype": codes[np.dtype(dtype)], "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data to 8 bytes
    Path(path).write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks))


def write_sharded_safetensors(folder, prefix, tensors, num_shards):
    """Split `tensors` over `num_shards` files plus `{prefix}.safetensors.index.json` (HF layout)."""
    folder = Path(folder)
    names = list(tensors)
    per = -(-len(names) // num_shards)
    weight_map = {}
    for i in range(num_shards):
        shard = f"{prefix}-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i * per : (i + 1) * per]}
        write_safetensors(folder / shard, part)
        weight_map.update({n: shard for n in part})
    total = sum(int(np.asarray(a).nbytes) for a in tensors.values())
    index = folder / f"{prefix}.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    return index
