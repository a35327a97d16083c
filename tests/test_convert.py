"""Weight import (zoo.convert), the shipped CIFAR-10 ResNets, and swap_skip.

The CIFAR tests run from files in the repository (weights/ and tests/data/cifar10_resnets,
BSD-2 notice there); the tests that convert the original files read ../shared/ref, and skip
saying so when that folder is absent.
"""

import json
import shutil
import struct
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import SKIP_CASES, SKIP_IDS, tiny_resnet, to_numpy

import zoo
from zoo.convert import (
    ArchitectureMismatchError,
    CheckpointError,
    KeyMismatchError,
    export_state_dict,
    load_torch_weights,
    read_checkpoint,
    write_sharded_safetensors,
)

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "zoo" / "weights"
DATA = REPO / "tests" / "data" / "cifar10_resnets"
REF = REPO.parent / "shared" / "ref"
CIFAR_REF, TIMM_REF = REF / "cifar10-resnets", REF / "timm"
DEPTHS = (20, 32, 44, 56)
REPORTED = {20: 0.9178, 32: 0.9278, 44: 0.9314, 56: 0.9362}


def reference():
    return np.load(DATA / "reference_logits.npz")


def cifar_inputs(ref):
    return ((ref["images_uint8_nhwc"].astype("float32") / 255 - ref["mean"]) / ref["std"]).astype("float32")


def load_shipped(depth):
    """A shipped preset by its registered name (zoo.presets verifies the checksums)."""
    name = f"resnet{depth}_cifar.cifar10"
    return zoo.get_model(name), zoo.get_preset_metadata(name)


def snapshot(model):
    return {w.path: to_numpy(w).copy() for w in model.weights}


def assert_unchanged(model, before):
    after = snapshot(model)
    assert after.keys() == before.keys()
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)


def cifar20_model(**kw):
    return zoo.get_model("resnet20_cifar", downsample="pad", **kw)


@pytest.fixture(scope="module")
def resnet20_state():
    """The shipped ResNet-20 as an akamaster state dict (the inverse mapping)."""
    model, _ = load_shipped(20)
    state = export_state_dict(model, "cifar_resnet")
    keras.backend.clear_session()
    return state


# === Shipped CIFAR-10 ResNets ===
@pytest.mark.parametrize("depth", DEPTHS)
def test_shipped_cifar_resnet_metadata_and_notice(depth):
    folder = WEIGHTS / f"resnet{depth}_cifar.cifar10"
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["name"] == f"resnet{depth}_cifar.cifar10"
    assert metadata["arch"] == f"resnet{depth}_cifar"
    assert metadata["dataset"] == "cifar10" and metadata["num_classes"] == 10
    assert metadata["input_shape"] == [32, 32, 3]
    assert metadata["accuracy"] == {"cifar10_test": REPORTED[depth], "reported_by": "source (best_prec1)"}
    assert "akamaster/pytorch_resnet_cifar10" in metadata["source"] and "BSD-2-Clause" in metadata["source"]
    assert metadata["license_file"] == "LICENSE"
    assert "recipes.convert_cifar_resnets" in metadata["command"]
    assert set(metadata["versions"]) >= {"keras", "backend", "numpy"}
    ref = reference()  # the logits themselves: tests/test_presets.py, for every shipped preset
    pre = metadata["preprocessing"]
    np.testing.assert_allclose(pre["mean"], ref["mean"], atol=1e-7)
    np.testing.assert_allclose(pre["std"], ref["std"], atol=1e-7)
    assert pre["rescale"] == pytest.approx(1 / 255)
    assert metadata["conversion_check"]["reference_logits_max_abs_diff"] <= 1e-4
    notice = (folder / "LICENSE").read_text()
    assert "Copyright (c) 2018, Yerlan Idelbayev" in notice and "Redistributions in binary form" in notice


@pytest.mark.parametrize("depth", (20,))  # the shipped tests above cover every depth
def test_converting_the_original_th_file_reproduces_reference_logits(depth):
    if not (CIFAR_REF / f"resnet{depth}.th").is_file():
        pytest.skip(f"{CIFAR_REF} (the original akamaster .th files) is absent; the shipped weights are tested above")
    model, report = zoo.convert.import_cifar_resnet(CIFAR_REF / f"resnet{depth}.th")
    assert model.name == f"resnet{depth}_cifar"
    assert report.metadata["best_prec1"] == pytest.approx(REPORTED[depth] * 100, abs=1e-3)
    assert not report.skipped and not report.kept
    ref = reference()
    logits = to_numpy(model(cifar_inputs(ref), training=False))
    assert np.max(np.abs(logits - ref[f"logits_resnet{depth}"])) <= 1e-4


# === Reading checkpoints ===
def test_sharded_safetensors_round_trip_is_exact(resnet20_state, tmp_path):
    index = write_sharded_safetensors(tmp_path, "resnet20", resnet20_state, num_shards=3)
    model = cifar20_model()
    report = load_torch_weights(model, index)
    assert report.layout == "cifar_resnet" and len(report.loaded) == len(resnet20_state)
    np.testing.assert_array_equal(to_numpy(model.get_layer("head").kernel), resnet20_state["linear.weight"].T)
    assert export_state_dict(model, "cifar_resnet").keys() == resnet20_state.keys()
    for key, value in export_state_dict(model, "cifar_resnet").items():
        np.testing.assert_array_equal(value, resnet20_state[key], err_msg=key)


def test_torch_file_is_read_with_weights_only_and_module_prefix_stripped(resnet20_state, tmp_path):
    torch = pytest.importorskip("torch")
    state = {f"module.{k}": torch.from_numpy(v.copy()) for k, v in resnet20_state.items()}
    torch.save({"state_dict": state, "best_prec1": 91.78}, tmp_path / "r20.th")
    checkpoint = read_checkpoint(tmp_path / "r20.th")
    assert set(checkpoint) == set(resnet20_state)
    assert checkpoint.metadata == {"best_prec1": pytest.approx(91.78)}
    (tmp_path / "bad.th").write_bytes((tmp_path / "r20.th").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="bad.th"):
        read_checkpoint(tmp_path / "bad.th")


def test_bfloat16_is_widened_to_float32_exactly(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 1e-3, 65280.0], "float32")
    bits = (values.view(np.uint32) >> 16).astype("<u2")  # truncate to bfloat16
    header = json.dumps({"w": {"dtype": "BF16", "shape": [5], "data_offsets": [0, 10]}}).encode()
    (tmp_path / "bf16.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bits.tobytes())
    loaded = read_checkpoint(tmp_path / "bf16.safetensors")["w"]
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, (bits.astype(np.uint32) << 16).view(np.float32))
    np.testing.assert_array_equal(loaded[:3], values[:3])  # exactly representable ones stay


# === Errors: each its own, the model untouched ===
def test_corrupted_shard_is_a_checkpoint_error_and_changes_nothing(resnet20_state, tmp_path):
    index = write_sharded_safetensors(tmp_path, "resnet20", resnet20_state, num_shards=3)
    shard = tmp_path / "resnet20-00002-of-00003.safetensors"
    data = shard.read_bytes()
    model = cifar20_model()
    before = snapshot(model)
    shard.write_bytes(data[: len(data) - 100])  # truncated
    with pytest.raises(CheckpointError, match="resnet20-00002-of-00003.safetensors.*truncated"):
        load_torch_weights(model, index)
    shard.write_bytes(data[:8] + b"{not json" + data[17:])  # bad header
    with pytest.raises(CheckpointError, match="resnet20-00002-of-00003.safetensors.*not valid JSON"):
        load_torch_weights(model, index)
    shard.unlink()
    with pytest.raises(CheckpointError, match="Shard 'resnet20-00002-of-00003.safetensors'.*does not exist"):
        load_torch_weights(model, index)
    assert_unchanged(model, before)


def test_wrong_architecture_is_its_own_error_and_changes_nothing(resnet20_state):
    model = zoo.ResNet(stage_depths=(2, 2, 2), downsample="pad", name="resnet14_cifar")
    before = snapshot(model)
    with pytest.raises(ArchitectureMismatchError, match=r"holds resnet20_cifar .*stage depths \[3, 3, 3\]"):
        load_torch_weights(model, resnet20_state)
    with pytest.raises(ArchitectureMismatchError, match="looks like a cifar_resnet checkpoint"):
        load_torch_weights(model, resnet20_state, layout="timm_resnet")
    assert_unchanged(model, before)


def test_model_of_other_placement_or_downsample_is_refused():
    model = tiny_resnet(stage_depths=(3, 3, 3), stage_widths=(16, 32, 64), num_classes=10)  # projection shortcuts
    with pytest.raises(ArchitectureMismatchError, match="downsample='projection'.*downsample='pad'"):
        load_torch_weights(model, {"conv1.weight": np.zeros((16, 3, 3, 3)), "linear.weight": np.zeros((10, 64)), "layer1.0.conv1.weight": np.zeros((16, 16, 3, 3))})


def test_wrong_key_is_named_and_changes_nothing(resnet20_state):
    model = cifar20_model()
    before = snapshot(model)
    state = dict(resnet20_state)
    state["layer2.1.bn1.weigth"] = state.pop("layer2.1.bn1.weight")
    with pytest.raises(KeyMismatchError, match=r"missing key 'layer2.1.bn1.weight' \(for model weight stage2_unit2/bn1/gamma\); unexpected key 'layer2.1.bn1.weigth'"):
        load_torch_weights(model, state)
    state = dict(resnet20_state, **{"linear.weight": resnet20_state["linear.weight"].T})
    with pytest.raises(KeyMismatchError, match=r"key 'linear.weight' has shape \(10, 64\) after transposition but model weight head/kernel has \(64, 10\)"):
        load_torch_weights(model, state)
    assert_unchanged(model, before)


def test_non_strict_load_lists_what_it_skipped(resnet20_state):
    model = cifar20_model()
    before = snapshot(model)
    state = dict(resnet20_state)
    state["extra.weight"] = np.zeros(3, "float32")
    del state["layer3.2.conv2.weight"]
    report = load_torch_weights(model, state, strict=False)
    assert report.missing == [("layer3.2.conv2.weight", "stage3_unit3/conv2/kernel")]
    assert report.unexpected == ["extra.weight"]
    assert sorted(report.skipped) == ["extra.weight", "layer3.2.conv2.weight"]
    assert "skipped missing key 'layer3.2.conv2.weight'" in str(report)
    np.testing.assert_array_equal(to_numpy(model.get_layer("stage3_unit3").convs[1].kernel), before["stage3_unit3/conv2/kernel"])
    np.testing.assert_array_equal(to_numpy(model.get_layer("stage3_unit3").convs[0].kernel), state["layer3.2.conv1.weight"].transpose(2, 3, 1, 0))


# === timm (reads ../shared/ref/timm) ===
def timm_or_skip(name):
    index = TIMM_REF / f"{name}.safetensors.index.json"
    if not index.is_file():
        pytest.skip(f"{TIMM_REF} is absent: the timm reference checkpoints and logits are not shipped in the repository")
    return index


def timm_inputs():
    return np.load(TIMM_REF / "inputs_nchw.npy").transpose(0, 2, 3, 1)  # NCHW -> NHWC


def timm_logits(model):
    """Eager JAX compiles every op of a 224 px model separately; predict compiles it once."""
    if keras.backend.backend() == "jax":
        return model.predict(timm_inputs(), batch_size=8, verbose=0)
    return to_numpy(model(timm_inputs(), training=False))


@pytest.mark.parametrize("name", ("resnet18", "resnet50"))
def test_timm_resnet_reproduces_reference_logits(name):
    index = timm_or_skip(name)
    model, report = zoo.convert.import_timm(index, arch=name)
    assert report.layout == "timm_resnet" and not report.skipped
    assert all(k.endswith("num_batches_tracked") for k in report.ignored)
    logits = timm_logits(model)
    assert np.max(np.abs(logits - np.load(TIMM_REF / f"{name}.logits.npy"))) <= 1e-4


def test_timm_wrong_architecture_and_corrupted_shard_change_nothing(tmp_path):
    index = timm_or_skip("resnet50")
    model = zoo.get_model("resnet18")
    before = snapshot(model)
    with pytest.raises(ArchitectureMismatchError, match=r"holds resnet50 \(bottleneck units.*is resnet18 \(basic units"):
        load_torch_weights(model, index)
    for f in TIMM_REF.glob("resnet18*"):
        shutil.copy(f, tmp_path / f.name)
    shard = tmp_path / "resnet18-00003-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-4096])
    with pytest.raises(CheckpointError, match="resnet18-00003-of-00003.safetensors.*truncated"):
        load_torch_weights(model, tmp_path / "resnet18.safetensors.index.json")
    assert_unchanged(model, before)


@pytest.mark.skipif(not hasattr(zoo, "ViT"), reason="zoo.ViT is not part of this checkout")
def test_timm_vit_reproduces_reference_logits():
    index = timm_or_skip("vit_tiny_patch16_224")
    model, report = zoo.convert.import_timm(index, arch="vit_tiny_patch16_224")
    assert report.layout == "timm_vit" and not report.skipped and not report.ignored
    assert isinstance(model, zoo.ViT) and model.num_heads == 3
    logits = timm_logits(model)
    assert np.max(np.abs(logits - np.load(TIMM_REF / "vit_tiny_patch16_224.logits.npy"))) <= 1e-4


@pytest.mark.skipif(not hasattr(zoo, "ViT"), reason="zoo.ViT is not part of this checkout")
@pytest.mark.parametrize("name, heads", [("vit_small_patch16_224", 6)])  # B differs only in width (768, 12 heads)
def test_timm_vit_small_and_base_follow_the_same_rules(name, heads):
    """A timm-layout state dict of ViT-S (one block) builds the same architecture and loads exactly."""
    model = zoo.get_model(name, depth=1, input_shape=(32, 32, 3), num_classes=4)
    state = export_state_dict(model, "timm_vit")
    assert {"cls_token", "pos_embed", "blocks.0.attn.qkv.weight", "norm.weight", "head.weight"} <= set(state)
    assert state["blocks.0.attn.qkv.weight"].shape == (3 * model.embed_dim, model.embed_dim)
    rebuilt, report = zoo.convert.import_checkpoint(state, num_classes=4)
    assert report.layout == "timm_vit" and rebuilt.num_heads == heads and rebuilt.embed_dim == model.embed_dim
    for key, value in export_state_dict(rebuilt, "timm_vit").items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)


@pytest.mark.skipif(not hasattr(zoo, "ViT"), reason="zoo.ViT is not part of this checkout")
def test_timm_vit_into_a_vit_of_another_size_is_an_architecture_error():
    index = timm_or_skip("vit_tiny_patch16_224")
    model = zoo.get_model("vit_small_patch16_224", depth=1)
    before = snapshot(model)
    with pytest.raises(ArchitectureMismatchError, match=r"holds vit_tiny_patch16 \(embed_dim 192, depth 12.*differ in embed_dim, depth"):
        load_torch_weights(model, index)
    assert_unchanged(model, before)


@pytest.mark.skipif(not hasattr(zoo, "ViT"), reason="zoo.ViT is not part of this checkout")
def test_timm_vit_into_an_rms_norm_vit_is_an_architecture_error():
    small = dict(depth=1, input_shape=(32, 32, 3), num_classes=4)
    state = export_state_dict(zoo.get_model("vit_tiny_patch16_224", **small), "timm_vit")
    model = zoo.get_model("vit_tiny_patch16_224", norm="rms", **small)
    before = snapshot(model)
    with pytest.raises(ArchitectureMismatchError, match=r"differ in norm"):
        load_torch_weights(model, state)
    assert_unchanged(model, before)


# === swap_skip ===
def perturbed(model):
    rng = np.random.default_rng(1)
    for w in model.weights:
        if "keep_override" not in w.path:
            w.assign(to_numpy(w) + 0.05 * rng.standard_normal(w.shape).astype("float32"))
    return model


def images():
    return np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype("float32")


def test_swap_identity_for_identity_keeps_outputs_identical():
    model = perturbed(tiny_resnet())
    swapped = zoo.swap_skip(model, "identity")
    assert swapped is not model and isinstance(swapped, zoo.ResNet)
    np.testing.assert_array_equal(to_numpy(swapped(images(), training=False)), to_numpy(model(images(), training=False)))


@pytest.mark.parametrize("case", SKIP_CASES, ids=SKIP_IDS)
def test_swap_keeps_every_branch_weight_bit_identical(case):
    _, skip, options = case
    model = perturbed(tiny_resnet(skip="orthogonal", skip_options={"mode": "fixed", "seed": 3}))
    before = snapshot(model)
    swapped = zoo.swap_skip(model, skip, options)
    assert swapped.skip == skip and swapped.skip_options == options
    new = snapshot(swapped)
    branch = [p for p in before if "/skip/" not in p]
    assert branch == [p for p in new if "/skip/" not in p]
    for path in branch:
        np.testing.assert_array_equal(new[path], before[path], err_msg=path)
    assert_unchanged(model, before)  # the source model is left as it was


@pytest.mark.parametrize("skip, options", [("orthogonal", {}), ("sparse", {"k": 2}), ("correlation", {"rho": 0.5})])
def test_swapping_to_another_mapping_changes_outputs(skip, options):
    model = perturbed(tiny_resnet())
    swapped = zoo.swap_skip(model, skip, **options)
    assert swapped.skip_options == options
    assert np.max(np.abs(to_numpy(swapped(images(), training=False)) - to_numpy(model(images(), training=False)))) > 1e-3


def test_swap_skip_of_a_shipped_model_keeps_its_branches():
    model, _ = load_shipped(20)
    swapped = zoo.swap_skip(model, "sparse", k=4, seed=0)
    assert swapped.downsample == "pad" and swapped.skip == "sparse"
    new = snapshot(swapped)
    for path, value in snapshot(model).items():
        np.testing.assert_array_equal(new[path], value, err_msg=path)


@pytest.mark.skipif(not hasattr(zoo, "ViT"), reason="zoo.ViT is not part of this checkout")
def test_swap_skip_works_for_a_vit():
    model = perturbed(zoo.ViT(input_shape=(8, 8, 3), patch_size=4, embed_dim=8, depth=1, num_heads=2, num_classes=3))
    x = images()
    same = zoo.swap_skip(model, "identity")
    np.testing.assert_array_equal(to_numpy(same(x)), to_numpy(model(x)))
    swapped = zoo.swap_skip(model, "sparse", k=2)
    before, new = snapshot(model), snapshot(swapped)
    assert any("/skip/" in p for p in new)
    for path, value in before.items():
        np.testing.assert_array_equal(new[path], value, err_msg=path)


def test_swap_skip_errors_say_what_is_valid():
    with pytest.raises(zoo.UnknownNameError, match="sparse"):
        zoo.swap_skip(tiny_resnet(), "sparce")
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="'skip' and 'skip_options'"):
        zoo.swap_skip(plain, "identity")
