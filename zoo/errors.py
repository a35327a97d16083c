"""Errors that say what was received and what is allowed."""

import difflib


class UnknownNameError(KeyError, ValueError):
    """An unknown model, mapping or option name; lists the closest valid ones.

    Subclasses both `KeyError` (it is a failed look-up) and `ValueError` (it is bad input), so
    either `except` clause catches it.
    """

    def __init__(self, kind, name, valid):
        valid = sorted(valid)
        close = difflib.get_close_matches(str(name), valid, n=5, cutoff=0.4)
        msg = f"Unknown {kind} {name!r}."
        if close:
            msg += f" Did you mean: {', '.join(repr(c) for c in close)}?"
        if valid:
            shown = ", ".join(valid) if len(valid) <= 40 else ", ".join(valid[:40]) + ", ..."
            msg += f" Valid {kind} names: {shown}."
        else:
            msg += f" There are no {kind} names yet."
        super().__init__(msg)
        self.name = name
        self.closest = close

    def __str__(self):  # KeyError would otherwise print the message in quotes
        return self.args[0]


def check_choice(arg, value, allowed):
    if value not in allowed:
        raise ValueError(
            f"Received {arg}={value!r}; allowed values are {', '.join(repr(a) for a in allowed)}."
        )
    return value


def check_range(arg, value, low=None, high=None, low_open=False, high_open=False, integer=False):
    """Raise a ValueError naming `arg`, the received value and the allowed interval."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if integer:
        ok = ok and float(value).is_integer()
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        kind = "an integer" if integer else "a number"
        raise ValueError(f"Received {arg}={value!r}; {arg} must be {kind} in {interval}.")
    return value


# === Weights: importing checkpoints (zoo.convert) and loading presets (zoo.presets) ===
class WeightImportError(ValueError):
    """Base class of every error raised while importing weights."""


class CheckpointError(WeightImportError):
    """A checkpoint file or shard is missing, truncated, corrupted or inconsistent."""


class SafetensorsHeaderError(CheckpointError):
    """A safetensors header entry is malformed: unknown dtype, a shape that is not a list of
    non-negative integers, offsets that do not match it, or a `__metadata__` that is not a
    {str: str} object."""


class UnsafePathError(CheckpointError):
    """A checkpoint index or preset names a file outside its own folder: an absolute path, a
    `..` component, or a symlink that resolves elsewhere. Nothing outside was opened."""


class ArchitectureMismatchError(WeightImportError):
    """The checkpoint holds another architecture (or layout) than the model."""


class KeyMismatchError(WeightImportError):
    """Keys of the checkpoint are missing, unexpected or of the wrong shape for the model."""

    def __init__(self, message, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


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


class WeightsPathError(WeightsFileError):
    """The weights path names no usable file: it does not exist, is a dangling symlink or a
    symlink loop, or is not a regular file (a device, a pipe)."""


class WeightsIndexError(WeightsFileError):
    """A weights directory's index.json is malformed (an entry without its folder or checksum)."""


class UnsafePresetPathError(UnsafePathError, WeightsFileError):
    """A preset or an index names a file outside its folder (absolute, `..`, or a symlink out)."""


class WeightsArchitectureError(ArchitectureMismatchError, WeightsFileError):
    """The weights belong to another architecture than the model they are loaded into."""


# === Data ===
class DatasetNotFoundError(FileNotFoundError):
    """A data set is not on this machine: says where the loader looked and how to get it."""
