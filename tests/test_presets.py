"""Shipped weights and preset folders (zoo.presets): the index, get_model(weights=...),
save_preset / load round trips, fine-tuning transfer, and every way a file can be wrong.

Each shipped preset is checked on the current backend: the CIFAR-10 ResNets against the
reference logits in tests/data (there is no CIFAR-10 test set on this machine), the others
against the test-subset accuracy recorded in their metadata.
"""

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import assert_unchanged, snapshot, tiny_resnet, to_numpy

import zoo
from zoo import presets
from zoo.presets import (
    ChecksumMismatchError,
    CorruptedWeightsError,
    PresetConfigError,
    TruncatedWeightsError,
    WeightsArchitectureError,
    WeightsFileError,
)

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "zoo" / "weights"
CIFAR_REF = REPO / "tests" / "data" / "cifar10_resnets" / "reference_logits.npz"
SHIPPED = presets.list_pretrained()


@pytest.fixture
def preset(tmp_path):
    """A small trained-looking preset folder of a registered arch, and the model it holds."""
    model = zoo.get_model("resnet20_cifar", input_shape=(8, 8, 3), num_classes=3)  # small images, fast
    rng = np.random.default_rng(0)
    for w in model.weights:
        if "moving_variance" not in w.path:
            w.assign(rng.normal(size=w.shape).astype("float32") * 0.1)
    folder = zoo.save_preset(model, tmp_path / "resnet20_cifar.tiny", metadata={"dataset": "random"})
    return folder, model


# === The index and the shipped weights ===
def test_index_lists_every_shipped_folder_with_its_metadata_checksum():
    index = json.loads((WEIGHTS / "index.json").read_text())["presets"]
    folders = sorted(p.name for p in WEIGHTS.iterdir() if (p / "metadata.json").is_file())
    assert sorted(index) == folders == SHIPPED
    for name, entry in index.items():
        assert entry["metadata_sha256"] == presets.sha256_file(WEIGHTS / name / "metadata.json"), name
        meta = presets.verify_preset(WEIGHTS / name)["metadata"]
        assert meta["name"] == name and meta["arch"] == name.split(".")[0]
        assert {"dataset", "accuracy", "command", "versions", "sha256", "bytes"} <= set(meta)
    assert sum(f.stat().st_size for f in WEIGHTS.rglob("*") if f.is_file()) < 50e6


def test_list_models_pretrained():
    assert "resnet56_cifar.cifar10" in zoo.list_models(pretrained=True)
    assert zoo.list_models("resnet20*", pretrained=True) == [n for n in SHIPPED if n.startswith("resnet20")]
    assert all("." not in n for n in zoo.list_models())


def evaluate_subset(model, record):
    from recipes.ship import evaluate_subset as subset_accuracy

    return subset_accuracy(model, zoo.data.load_dataset(record["dataset"]), record["test_subset"], record["seed"])


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_reproduce_their_record(name):
    model = zoo.get_model(name)
    meta = zoo.get_preset_metadata(name)
    if meta["dataset"] == "cifar10":
        ref = np.load(CIFAR_REF)
        x = ((ref["images_uint8_nhwc"].astype("float32") / 255 - ref["mean"]) / ref["std"]).astype("float32")
        depth = name.split("_")[0].removeprefix("resnet")
        assert np.max(np.abs(to_numpy(model(x, training=False)) - ref[f"logits_resnet{depth}"])) <= 1e-4
        return
    record = meta["evaluation"]
    assert abs(evaluate_subset(model, record) - record["accuracy"]) <= 0.002 + 1e-9


# === get_model(weights=...) ===
def test_tag_and_arch_tag_and_folder_give_the_same_model(preset):
    folder, model = preset
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype("float32")
    expected = to_numpy(model(x, training=False))
    np.testing.assert_array_equal(to_numpy(zoo.get_model("resnet20_cifar", weights=folder)(x, training=False)), expected)
    a = zoo.get_model("resnet20_cifar.cifar10")
    b = zoo.get_model("resnet20_cifar", weights="cifar10")
    c = zoo.get_model("resnet20_cifar", weights=WEIGHTS / "resnet20_cifar.cifar10" / "model.weights.h5",
                      downsample="pad", placement="original")
    for wa, wb, wc in zip(a.weights, b.weights, c.weights):
        np.testing.assert_array_equal(to_numpy(wa), to_numpy(wb))
        np.testing.assert_array_equal(to_numpy(wa), to_numpy(wc))


def test_unknown_tag_suggests_the_closest():
    with pytest.raises(zoo.UnknownNameError, match="Did you mean: 'cifar10'"):
        zoo.get_model("resnet20_cifar.cifar1")
    with pytest.raises(zoo.UnknownNameError, match="resnet20_cifar.cifar10"):
        zoo.get_model("resnet110_cifar", weights="cifar10")
    with pytest.raises(ValueError, match="either as the tag or as weights="):
        zoo.get_model("resnet20_cifar.cifar10", weights="cifar10")


def test_preset_of_another_arch_is_refused(preset):
    folder, _ = preset
    with pytest.raises(WeightsArchitectureError, match="holds 'resnet20_cifar' weights"):
        zoo.get_model("resnet56_cifar", weights=folder)


# === Fine-tuning: new head, adapted stem, swapped skip, frozen trunk ===
def test_new_head_adapted_stem_and_frozen_trunk(tmp_path):
    source = zoo.get_model("resnet20_cifar.cifar10")
    model = zoo.get_model("resnet20_cifar.cifar10", num_classes=5, input_shape=(28, 28, 1), freeze_trunk=True)
    assert model.num_classes == 5 and model.input_shape == (None, 28, 28, 1)
    src = {w.path: to_numpy(w) for w in source.weights}
    for w in model.weights:
        value = to_numpy(w)
        if w.path.startswith("head/"):
            assert value.shape[-1] == 5
        elif w.path == "stem_conv/kernel":
            np.testing.assert_allclose(value, src[w.path].sum(axis=2, keepdims=True), rtol=1e-6)
        else:
            np.testing.assert_array_equal(value, src[w.path], err_msg=w.path)
    assert {w.path.split("/")[0] for w in model.trainable_weights} == {"head"}
    # 3 -> 3 channels keeps the stem; 1 -> 3 repeats it scaled, so a gray image gives the same features
    gray = zoo.get_model("resnet20_cifar.cifar10", input_shape=(28, 28, 1), num_classes=0)
    rgb = zoo.get_model("resnet20_cifar", weights=zoo.save_preset(gray, tmp_path / "gray"), input_shape=(28, 28, 3))
    x = np.random.default_rng(0).normal(size=(2, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(to_numpy(rgb(np.repeat(x, 3, -1))), to_numpy(gray(x)), atol=1e-4)


def test_skip_override_swaps_the_mapping_and_keeps_every_branch_weight():
    source = zoo.get_model("resnet20_cifar.cifar10")
    model = zoo.get_model("resnet20_cifar.cifar10", skip="sparse", skip_options={"k": 4, "seed": 0})
    assert model.skip == "sparse"
    src = {w.path: to_numpy(w) for w in source.weights}
    for w in model.weights:
        if "/skip/" not in f"/{w.path}":
            np.testing.assert_array_equal(to_numpy(w), src[w.path], err_msg=w.path)


def test_architecture_changes_other_than_head_stem_skip_are_refused(preset):
    folder, _ = preset
    with pytest.raises(WeightsArchitectureError, match="Only num_classes"):
        zoo.get_model("resnet20_cifar", weights=folder, stage_widths=(16, 32, 128))


def test_freeze_trunk_needs_a_head():
    with pytest.raises(ValueError, match="no layer named 'head'"):
        zoo.get_model("resnet20_cifar", num_classes=0, freeze_trunk=True)


# === Every way a file can be wrong: own error, model unchanged ===
def test_truncated_weights_file_is_refused_and_changes_nothing(preset):
    folder, _ = preset
    target = tiny_resnet()
    before = snapshot(target)
    data = (folder / "model.weights.h5").read_bytes()
    (folder / "model.weights.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedWeightsError, match="truncated"):
        zoo.load_weights(target, folder)
    with pytest.raises(TruncatedWeightsError):
        zoo.get_model("resnet20_cifar", weights=folder)
    loose = folder.parent / "loose.weights.h5"
    loose.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedWeightsError):
        zoo.load_weights(target, loose)
    assert_unchanged(target, before)


def test_altered_file_fails_its_checksum_and_changes_nothing(preset):
    folder, _ = preset
    target = tiny_resnet()
    before = snapshot(target)
    data = bytearray((folder / "model.weights.h5").read_bytes())
    data[-100] ^= 0xFF
    (folder / "model.weights.h5").write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        zoo.load_weights(target, folder)
    assert_unchanged(target, before)


def test_corrupted_file_is_its_own_error_and_changes_nothing(tmp_path):
    target = tiny_resnet()
    before = snapshot(target)
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"\x00not an hdf5 file" * 100)
    with pytest.raises(CorruptedWeightsError, match="not a readable"):
        zoo.load_weights(target, bad)
    assert_unchanged(target, before)


def test_wrong_architecture_is_its_own_error_and_changes_nothing(tmp_path):
    other = tiny_resnet(stage_widths=(4, 16))
    other.save_weights(tmp_path / "other.weights.h5")
    target = tiny_resnet()
    before = snapshot(target)
    with pytest.raises(WeightsArchitectureError, match="another architecture"):
        zoo.load_weights(target, tmp_path / "other.weights.h5")
    assert isinstance(WeightsArchitectureError("x"), zoo.convert.ArchitectureMismatchError)
    assert_unchanged(target, before)


def test_config_naming_a_foreign_class_or_argument_is_refused(preset):
    folder, _ = preset
    meta = json.loads((folder / "metadata.json").read_text())
    for config, match in (
        ({"module": "os", "class_name": "system", "registered_name": "os>system", "config": {}}, "not a zoo model class"),
        ({"module": "keras.layers", "class_name": "Lambda", "registered_name": "Lambda", "config": {}}, "not a zoo model class"),
        ({"class_name": "ResNet", "registered_name": "zoo>ResNet", "config": {"evil": "x"}}, "not arguments of ResNet"),
    ):
        (folder / "config.json").write_text(json.dumps(config))
        meta["sha256"]["config.json"] = presets.sha256_file(folder / "config.json")
        meta["bytes"]["config.json"] = (folder / "config.json").stat().st_size
        (folder / "metadata.json").write_text(json.dumps(meta))
        with pytest.raises(PresetConfigError, match=match):
            zoo.get_model("resnet20_cifar", weights=folder)


def test_preset_without_checksums_is_refused(preset):
    folder, _ = preset
    meta = json.loads((folder / "metadata.json").read_text())
    del meta["sha256"]
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(PresetConfigError, match="no sha256"):
        zoo.get_model("resnet20_cifar", weights=folder)


def test_altered_metadata_of_a_shipped_preset_fails_the_index_checksum(tmp_path, monkeypatch):
    root = tmp_path / "weights"
    shutil.copytree(WEIGHTS / "resnet20_cifar.cifar10", root / "resnet20_cifar.cifar10")
    presets.write_index(root)
    monkeypatch.setattr(presets, "REPO_WEIGHTS", root)
    assert presets.list_pretrained() == ["resnet20_cifar.cifar10"]
    meta = root / "resnet20_cifar.cifar10" / "metadata.json"
    meta.write_text(meta.read_text().replace("0.9178", "0.9999"))
    with pytest.raises(ChecksumMismatchError):
        zoo.get_model("resnet20_cifar.cifar10")
    with pytest.raises(ChecksumMismatchError):
        zoo.get_preset_metadata("resnet20_cifar.cifar10")


# === save_preset ===
def test_save_preset_is_atomic_and_does_not_overwrite_by_default(preset, monkeypatch):
    folder, model = preset
    with pytest.raises(FileExistsError, match="overwrite=True"):
        zoo.save_preset(model, folder)
    original = (folder / "model.weights.h5").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(model), "save_weights", crash)
    with pytest.raises(OSError, match="disk full"):
        zoo.save_preset(model, folder, overwrite=True)
    assert (folder / "model.weights.h5").read_bytes() == original
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary left behind
    presets.verify_preset(folder)


def test_only_zoo_models_are_saved_as_presets(tmp_path):
    inputs = keras.Input((3,))
    plain = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(PresetConfigError, match="not a registered zoo model class"):
        zoo.save_preset(plain, tmp_path / "plain")
    assert issubclass(PresetConfigError, WeightsFileError)


# === recipes.ship (packaging a run is tested in tests/test_recipes.py, after its training run) ===
def test_catalogue_configs_are_valid_recipes():
    from recipes import ship

    cat = ship.catalogue()
    for name in cat["weights"]:
        config = ship.entry_config(cat, name)
        entry = zoo.registry.get_model_entry(name.split(".")[0])
        assert set(config["model_args"]) <= set(entry.allowed_arguments()), name
        assert config["dataset"] in zoo.data.datasets.LOADERS
