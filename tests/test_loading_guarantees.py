"""What loading guarantees (README, "What loading guarantees"), one test per promise.

Each test tries what a careful user (or an attacker who controls a file) can do against the
public API: tamper with an indexed preset, name files outside a checkpoint's folder, pass a
preset of another architecture, let a run's weights blow up on its last step, interrupt or
race `save_preset`, hand in malformed files. Each failure must be refused with its own error
class and one clear message, and leave models and folders as they were.
"""

import json
import os
import shutil
import stat
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_unchanged, snapshot, tiny_resnet, to_numpy

import zoo
from zoo import presets
from zoo.convert.checkpoint import (
    CheckpointError,
    SafetensorsHeaderError,
    UnsafePathError,
    read_checkpoint,
    write_safetensors,
    write_sharded_safetensors,
)
from zoo.presets import (
    ChecksumMismatchError,
    UnsafePresetPathError,
    WeightsArchitectureError,
    WeightsIndexError,
    WeightsPathError,
)

WEIGHTS = Path(__file__).resolve().parents[1] / "zoo" / "weights"
SHIPPED = "resnet20_cifar.cifar10"


@pytest.fixture
def weights_root(tmp_path, monkeypatch):
    """A private weights directory holding a copy of one shipped preset and its index, standing
    in for the repository's `weights/` (so tampering touches only the copy)."""
    root = tmp_path / "weights"
    shutil.copytree(WEIGHTS / SHIPPED, root / SHIPPED)
    presets.write_index(root)
    monkeypatch.setattr(presets, "REPO_WEIGHTS", root)
    monkeypatch.delenv("ZOO_WEIGHTS_PATH", raising=False)
    return root


def small_preset(folder, model=None, **metadata):
    model = model or zoo.get_model("resnet20_cifar", input_shape=(8, 8, 3), num_classes=3)
    return zoo.save_preset(model, folder, metadata=metadata or None)


def weights_sha(folder):
    return presets.sha256_file(Path(folder) / "model.weights.h5")


# === 1. An indexed preset is verified against the index on every loading path ===
def test_tampered_indexed_preset_is_refused_on_every_loading_path(weights_root):
    folder = weights_root / SHIPPED
    target = zoo.get_model(SHIPPED)  # the architecture of the weights, holding the true ones
    before = snapshot(target)
    model = zoo.get_model(SHIPPED)
    # the tampering: other weights, and metadata.json's checksums recomputed to match them
    for w in model.weights:
        w.assign(to_numpy(w) * 2.0)
    model.save_weights(folder / "model.weights.h5")
    meta = json.loads((folder / "metadata.json").read_text())
    meta["sha256"]["model.weights.h5"] = weights_sha(folder)
    meta["bytes"]["model.weights.h5"] = (folder / "model.weights.h5").stat().st_size
    (folder / "metadata.json").write_text(json.dumps(meta, indent=1))
    presets.verify_preset(folder, check_index=False)  # self-consistent: only the index can tell

    attempts = {
        "load_weights(arch.tag)": lambda: zoo.load_weights(target, SHIPPED),
        "load_weights(folder)": lambda: zoo.load_weights(target, folder),
        "load_weights(str folder)": lambda: zoo.load_weights(target, str(folder)),
        "get_model(arch.tag)": lambda: zoo.get_model(SHIPPED),
        "get_model(weights=tag)": lambda: zoo.get_model("resnet20_cifar", weights="cifar10"),
        "get_model(weights=folder)": lambda: zoo.get_model("resnet20_cifar", weights=folder),
        "get_preset_metadata(arch.tag)": lambda: zoo.get_preset_metadata(SHIPPED),
        "get_preset_metadata(folder)": lambda: zoo.get_preset_metadata(folder),
        "verify_preset(folder)": lambda: presets.verify_preset(folder),
    }
    for label, attempt in attempts.items():
        with pytest.raises(ChecksumMismatchError, match="metadata.json.*sha256"):
            attempt()
        assert_unchanged(target, before)


# === 2. Files a checkpoint index names are resolved inside its folder before anything opens ===
def test_shard_paths_outside_the_index_folder_are_refused_before_opening(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    tensors = {"a": rng.normal(size=(3,)).astype("float32"), "b": rng.normal(size=(2, 2)).astype("float32")}
    inside = tmp_path / "ckpt"
    inside.mkdir()
    index = write_sharded_safetensors(inside, "m", tensors, num_shards=2)
    outside = tmp_path / "outside"
    outside.mkdir()
    write_safetensors(outside / "x.safetensors", {"b": tensors["b"] * 0})
    (inside / "link.safetensors").symlink_to(outside / "x.safetensors")

    opened = []
    real_read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: opened.append(self.resolve()) or real_read_bytes(self))
    original = json.loads(index.read_text())
    for shard in ("../outside/x.safetensors", str(outside / "x.safetensors"), "link.safetensors",
                  "../../../../etc/passwd", "sub/../../outside/x.safetensors"):
        opened.clear()
        weight_map = {**original["weight_map"], "b": shard}
        index.write_text(json.dumps({**original, "weight_map": weight_map}))
        with pytest.raises(UnsafePathError, match="Nothing was opened|outside the folder"):
            read_checkpoint(index)
        assert all(inside.resolve() in p.parents for p in opened), (shard, opened)
    index.write_text(json.dumps(original))
    assert sorted(read_checkpoint(index)) == ["a", "b"]  # the honest index still reads
    assert issubclass(UnsafePathError, CheckpointError)


def test_preset_files_and_index_folders_may_not_point_outside(tmp_path, weights_root):
    folder = small_preset(tmp_path / "resnet20_cifar.mine")
    stranger = tmp_path / "stranger.weights.h5"
    shutil.copyfile(folder / "model.weights.h5", stranger)
    (folder / "model.weights.h5").unlink()
    (folder / "model.weights.h5").symlink_to(stranger)  # same bytes, so the checksums still match
    with pytest.raises(UnsafePresetPathError, match="outside the folder"):
        zoo.get_model("resnet20_cifar", weights=folder)
    index = json.loads((weights_root / "index.json").read_text())
    index["presets"][SHIPPED]["folder"] = "../elsewhere"
    (weights_root / "index.json").write_text(json.dumps(index))
    with pytest.raises(UnsafePresetPathError, match="'..'"):
        zoo.get_model(SHIPPED)


# === 3. weights= is checked against the architecture asked for, from config.json ===
def test_preset_of_another_architecture_is_refused_whatever_its_metadata_says(tmp_path):
    other = zoo.get_model("resnet32_cifar", input_shape=(8, 8, 3), num_classes=3)
    relabelled = small_preset(tmp_path / "relabelled", other, arch="resnet20_cifar")
    with pytest.raises(WeightsArchitectureError, match=r"stage_depths=\[5, 5, 5\].*'resnet20_cifar' has \(3, 3, 3\)"):
        zoo.get_model("resnet20_cifar", weights=relabelled)
    unlabelled = small_preset(tmp_path / "unlabelled", other)
    meta = json.loads((unlabelled / "metadata.json").read_text())
    del meta["arch"]
    (unlabelled / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsArchitectureError, match="stage_depths"):
        zoo.get_model("resnet20_cifar", weights=unlabelled)
    vit = zoo.get_model("vit_tiny_patch4_28", depth=1, embed_dim=16, num_heads=2, input_shape=(8, 8, 3), num_classes=3)
    with pytest.raises(WeightsArchitectureError, match="holds a ViT; model 'resnet20_cifar' is a ResNet"):
        zoo.get_model("resnet20_cifar", weights=small_preset(tmp_path / "vit", vit, arch="resnet20_cifar"))
    # what may differ still loads: the head, the input, the skip, the placement
    variant = zoo.get_model("resnet20_cifar", input_shape=(8, 8, 1), num_classes=4, skip="scale", placement="full_preact")
    loaded = zoo.get_model("resnet20_cifar", weights=small_preset(tmp_path / "variant", variant))
    assert loaded.num_classes == 4 and loaded.skip == "scale"


# === 4. A checkpoint is good only if its weights are finite ===
def test_weights_non_finite_after_the_last_step_of_an_epoch_are_never_checkpointed(tmp_path):
    from recipes import train as recipe

    config = recipe.load_config(None, [
        'model_args={"depth": 8}', "train_subset=32", "test_subset=32", "batch_size=32", "epochs=2",
        "optimizer.learning_rate=1e300", 'optimizer.schedule="constant"',
    ])  # one step an epoch: its loss is computed before the update that blows the weights up
    data, model = recipe.prepare(config, tmp_path)
    with pytest.raises(recipe.RunStopped, match="non-finite weights after epoch 1"):
        recipe.fit(config, tmp_path, data, model)
    for path in (tmp_path / "checkpoints").glob("*.npz"):
        with np.load(path) as saved:
            assert all(np.all(np.isfinite(saved[k])) for k in saved.files), path.name
    assert not (tmp_path / "checkpoints" / "latest.json").exists()


# === 5. save_preset(overwrite=True) leaves the old or the new folder, whenever it is killed ===
class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no `except Exception` in the code stops it."""


def kill_after_first_move(monkeypatch):
    """Make the first directory move (rename, replace or renameat2) be the last thing done."""
    def wrap(module, name):
        real = getattr(module, name)

        def moved_then_killed(*args, **kwargs):
            result = real(*args, **kwargs)
            if result is not False:  # presets._renameat2 answers False where it is unsupported
                raise Killed
            return result
        monkeypatch.setattr(module, name, moved_then_killed)

    wrap(os, "rename")
    wrap(os, "replace")
    if hasattr(presets, "_renameat2"):
        wrap(presets, "_renameat2")


def test_overwrite_killed_between_moves_keeps_a_preset_in_place(tmp_path, monkeypatch):
    old = small_preset(tmp_path / "resnet20_cifar.p")
    old_sha = weights_sha(old)
    new_model = zoo.get_model("resnet20_cifar", input_shape=(8, 8, 3), num_classes=3)
    with monkeypatch.context() as m:
        kill_after_first_move(m)
        with pytest.raises(Killed):
            zoo.save_preset(new_model, old, overwrite=True)
    assert old.is_dir(), f"destination missing after the kill: {sorted(p.name for p in tmp_path.iterdir())}"
    presets.verify_preset(old)  # a whole preset, the old one or the new one
    zoo.save_preset(new_model, old, overwrite=True)  # and the next call cleans up what the kill left
    assert weights_sha(old) != old_sha
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet20_cifar.p"]


def test_interrupted_two_step_overwrite_is_put_back_by_the_next_call(tmp_path, monkeypatch):
    # where renameat2 is missing the old folder is moved aside first; a kill there is repaired
    monkeypatch.setattr(presets, "_renameat2", lambda *a: False, raising=False)
    folder = small_preset(tmp_path / "resnet20_cifar.p")
    old_sha = weights_sha(folder)
    model = zoo.get_model("resnet20_cifar", input_shape=(8, 8, 3), num_classes=3)
    with monkeypatch.context() as m:
        kill_after_first_move(m)
        with pytest.raises(Killed):
            zoo.save_preset(model, folder, overwrite=True)
    assert not folder.exists()  # the state a kill between the two moves leaves
    with pytest.raises(presets.WeightsFileError, match="interrupted save_preset"):
        zoo.get_model("resnet20_cifar", weights=folder)
    with pytest.warns(UserWarning, match="Put back preset"):
        with pytest.raises(FileExistsError):
            zoo.save_preset(model, folder)  # the next call puts the old preset back, then refuses to replace it
    assert weights_sha(folder) == old_sha
    presets.verify_preset(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet20_cifar.p"]


# === 6. overwrite=False is exclusive: of two savers of one new folder, one wins, one is told ===
@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "fallback"])
def test_two_savers_of_the_same_new_folder_do_not_replace_each_other(tmp_path, monkeypatch, renameat2):
    if not renameat2:
        monkeypatch.setattr(presets, "_renameat2", lambda *a: False, raising=False)
    folder = tmp_path / "resnet20_cifar.race"
    first = zoo.get_model("resnet20_cifar", input_shape=(8, 8, 3), num_classes=3)
    second = zoo.get_model("resnet20_cifar", input_shape=(8, 8, 3), num_classes=5)
    real_fsync, state = os.fsync, {"raced": False}

    def fsync_racing(fd):  # while `second` is being written, `first` is saved by "another process"
        if not state["raced"]:
            state["raced"] = True
            monkeypatch.setattr(os, "fsync", real_fsync)
            zoo.save_preset(first, folder)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_racing)
    with pytest.raises(FileExistsError, match="another process"):
        zoo.save_preset(second, folder)
    assert state["raced"]
    assert presets.verify_preset(folder)["metadata"]["num_classes"] == 3  # the winner's, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet20_cifar.race"]


# === 7. Every malformed input gets its own error and one line that says what is wrong ===
def test_weights_paths_that_are_not_files_say_so(tmp_path):
    target = tiny_resnet()
    (tmp_path / "a.weights.h5").symlink_to(tmp_path / "b.weights.h5")
    (tmp_path / "b.weights.h5").symlink_to(tmp_path / "a.weights.h5")
    (tmp_path / "dangling.weights.h5").symlink_to(tmp_path / "gone.weights.h5")
    for source, match in (
        (tmp_path / "missing.weights.h5", "no such file"),
        (str(tmp_path / "missing_folder"), "no such file"),
        ("runs/nothing/model.weights.h5", "no such file"),
        (tmp_path / "a.weights.h5", "symlink loop"),
        (tmp_path / "dangling.weights.h5", "does not exist"),
        ("/dev/null", "not a regular file"),
    ):
        for attempt in (lambda: zoo.load_weights(target, source), lambda: zoo.get_model("resnet20_cifar", weights=source)):
            with pytest.raises(WeightsPathError, match=match) as info:
                attempt()
            assert not isinstance(info.value, zoo.UnknownNameError), str(info.value)
    with pytest.raises(zoo.UnknownNameError, match="Did you mean: 'resnet20_cifar.cifar10'"):
        zoo.load_weights(target, "resnet20_cifar.cifar1")  # a name is still a name


def test_malformed_index_entries_are_index_errors(weights_root):
    index = json.loads((weights_root / "index.json").read_text())
    for change, match in (
        (lambda e: e.pop("folder"), "has no 'folder'"),
        (lambda e: e.update(metadata_sha256="abc"), "not a sha256"),
        (lambda e: e.pop("metadata_sha256"), "not a sha256"),
    ):
        broken = json.loads(json.dumps(index))
        change(broken["presets"][SHIPPED])
        (weights_root / "index.json").write_text(json.dumps(broken))
        with pytest.raises(WeightsIndexError, match=match):
            zoo.get_model(SHIPPED)
    (weights_root / "index.json").write_text('{"presets": []}')
    with pytest.raises(WeightsIndexError, match="no 'presets' object"):
        zoo.list_models(pretrained=True)


def safetensors_bytes(header):
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + b"\0" * 64


@pytest.mark.parametrize("header, match", [
    ({"w": {"dtype": "F32", "shape": [-1, -4], "data_offsets": [0, 16]}}, "non-negative integers"),
    ({"w": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 16]}}, "needs 4835703278458516698824704 bytes"),
    ({"w": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, "non-negative integers"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, "8"]}}, "two integers"),
    ({"w": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}, "known dtypes"),
    ({"w": [1, 2]}, "not an object"),
    ({"__metadata__": ["a"], "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, "__metadata__"),
    ({"__metadata__": {"a": 1}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, "__metadata__"),
], ids=["negative", "overflow", "float-dim", "str-offset", "dtype", "entry", "metadata-list", "metadata-int"])
def test_malformed_safetensors_headers_are_header_errors(tmp_path, header, match):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(safetensors_bytes(header))
    with pytest.raises(SafetensorsHeaderError, match=match):
        read_checkpoint(path)


def test_resume_from_a_broken_checkpoint_is_one_line_and_exit_code_4(tmp_path, capsys):
    from recipes import train as recipe

    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--set", 'model_args={"depth": 8}', "train_subset=64", "test_subset=32",
            "batch_size=32", "epochs=1"]
    assert recipe.main(args) == 0
    ckpt = run / "checkpoints"
    pointer = (ckpt / "latest.json").read_text()
    npz = ckpt / json.loads(pointer)["file"]
    good = npz.read_bytes()
    resume = [*args[:-1], "epochs=2", "--resume"]
    breakages = {
        "torn latest.json": lambda: (ckpt / "latest.json").write_text(pointer[: len(pointer) // 2]),
        "latest.json without its fields": lambda: (ckpt / "latest.json").write_text('{"epoch": 1}'),
        "latest.json naming a file outside": lambda: (ckpt / "latest.json").write_text(
            json.dumps({**json.loads(pointer), "file": "../../elsewhere.npz"})),
        "corrupted checkpoint": lambda: npz.write_bytes(good[:-200] + bytes(200)),
        "latest.json with a negative step": lambda: (ckpt / "latest.json").write_text(
            json.dumps({**json.loads(pointer), "step": -3})),
    }
    for label, breakage in breakages.items():
        (ckpt / "latest.json").write_text(pointer)
        npz.write_bytes(good)
        breakage()
        capsys.readouterr()
        assert recipe.main(resume) == 4, label
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("ERROR", "Traceback"))]
        assert len(err) == 1 and err[0].startswith("ERROR: "), (label, err)
        assert "remove" in err[0].lower() or "refusing" in err[0], (label, err)
    assert isinstance(recipe.ResumeError("x"), ValueError)


# === 8. Preset folders honour the umask, as mkdir does ===
@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o002, 0o775), (0o077, 0o700)])
def test_preset_folders_are_created_with_the_process_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        folder = small_preset(tmp_path / "resnet20_cifar.shared")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(folder.stat().st_mode) == mode
    assert stat.S_IMODE((folder / "model.weights.h5").stat().st_mode) == mode & 0o666
