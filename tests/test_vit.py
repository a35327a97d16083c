"""SPEC section 4 (ViT): timm's structure and parameter counts, every mapping, the model
contract, serialization and weights across backends."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import SKIP_CASES, SKIP_IDS, to_numpy

import zoo

BACKENDS = ("jax", "tensorflow", "torch")


def tiny_vit(**overrides):
    """A ViT on 8x8x3 images: 4 patches of 4x4, width 8, 2 heads."""
    kwargs = dict(image_size=(8, 8, 3), patch_size=4, embed_dim=8, depth=1, num_heads=2, num_classes=3)
    kwargs.update(overrides)
    return zoo.ViT(**kwargs)


def images(n=4, shape=(8, 8, 3), seed=42):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype("float32")


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def shapes_only(name, **overrides):
    """Build a preset without initialising its variables (lazy variables): cheap for counting."""
    with keras.StatelessScope(initialize_variables=False):
        return zoo.get_model(name, **overrides)


def train_each_one_step(models, x, y, loss):
    """One optimizer step on all `models` at once (one train function for all: cheap).
    Returns, per model, whether every trainable weight of it moved, and the loss."""
    inputs = keras.Input(x.shape[1:])
    joint = keras.Model(inputs, [m(inputs) for m in models])
    before = [[to_numpy(w) for w in m.trainable_weights] for m in models]
    joint.compile(optimizer=keras.optimizers.SGD(0.1), loss=[loss] * len(models),
                  run_eagerly=keras.backend.backend() != "jax")  # JAX: one compile beats eager scans
    losses = joint.train_on_batch(x, [y] * len(models))
    moved = [all(np.any(to_numpy(w) != b) for w, b in zip(m.trainable_weights, bs)) for m, bs in zip(models, before)]
    return moved, losses


def test_vit_sizes_have_timm_parameter_counts():
    # timm 1.0 (identity skips, 1000 classes): vit_{tiny,small,base,large}_patch16_224.
    expected = {
        "vit_tiny_patch16_224": 5_717_416,
        "vit_small_patch16_224": 22_050_664,
        "vit_base_patch16_224": 86_567_656,
        "vit_large_patch16_224": 304_326_632,
    }
    for name, count in expected.items():
        model = shapes_only(name)
        assert trainable_count(model) == count, name
        assert len(model.residual_units) == 2 * model.depth


def test_outputs_match_a_numpy_transcription_of_timm_forward():
    model = tiny_vit(depth=2)
    w = {v.path: to_numpy(v).astype("float64") for v in model.weights}
    for v in model.weights:  # move biases, norms and tokens off their initial values
        if v.trainable:
            v.assign(to_numpy(v) + 0.1 * np.random.default_rng(len(v.path)).standard_normal(v.shape).astype("float32"))
    w = {v.path: to_numpy(v).astype("float64") for v in model.weights}
    x = images()
    p, dim, heads = 4, 8, 2
    hd = dim // heads

    def ln(v, name):
        mean, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
        return (v - mean) / np.sqrt(var + 1e-6) * w[f"{name}/gamma"] + w[f"{name}/beta"]

    def linear(v, name):
        return v @ w[f"{name}/kernel"] + w[f"{name}/bias"]

    gelu = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))
    b = x.shape[0]
    patches = x.reshape(b, 2, p, 2, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, 4, p * p * 3)
    t = patches @ w["patch_embed/kernel"].reshape(p * p * 3, dim) + w["patch_embed/bias"]
    t = np.concatenate([np.broadcast_to(w["cls_token/cls_token"], (b, 1, dim)), t], axis=1) + w["pos_embed/pos_embed"]
    for i in range(2):
        qkv = linear(ln(t, f"block{i}_attn/norm1"), f"block{i}_attn/qkv").reshape(b, 5, 3, heads, hd)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)
        a = q @ k.transpose(0, 1, 3, 2) * hd**-0.5
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        t = t + linear((a @ v).transpose(0, 2, 1, 3).reshape(b, 5, dim), f"block{i}_attn/proj")
        h = gelu(linear(ln(t, f"block{i}_mlp/norm2"), f"block{i}_mlp/fc1"))
        t = t + linear(h, f"block{i}_mlp/fc2")
    expected = linear(ln(t, "norm")[:, 0], "head")
    np.testing.assert_allclose(to_numpy(model(x)), expected, atol=1e-5)


def test_every_mapping_builds_and_trains_a_step():
    models = [tiny_vit(skip=skip, skip_options=options, drop_path_rate=0.2, name=f"vit_{case_id}")
              for case_id, skip, options in SKIP_CASES]
    x, y = images(8), np.arange(8) % 3
    moved, losses = train_each_one_step(
        models, x, y, keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    assert np.all(np.isfinite(losses))
    assert all(moved), [c for c, m in zip(SKIP_IDS, moved) if not m]


def test_tiny_vit_halves_its_loss_on_64_fixed_samples():
    x, y = images(64, seed=0), np.random.default_rng(0).integers(0, 3, 64)
    model = tiny_vit(embed_dim=16, depth=2, skip="orthogonal")
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=64, epochs=40, verbose=0).history["loss"]
    assert min(history) < history[0] / 2, history


def test_residual_units_are_ordered_with_their_own_mappings_and_drop_path_schedule():
    model = tiny_vit(depth=2, skip="orthogonal", drop_path_rate=0.3)
    units = model.residual_units
    assert [u.name for u in units] == ["block0_attn", "block0_mlp", "block1_attn", "block1_mlp"]
    assert [u.index for u in units] == [0, 1, 2, 3]
    np.testing.assert_allclose([u.drop_path.rate for u in units], [0.0, 0.1, 0.2, 0.3])
    q0, q1 = (to_numpy(u.skip.matrix()) for u in units[:2])
    assert not np.allclose(q0, q1)


def test_features_head_and_global_pooling():
    x = images()
    model = tiny_vit()
    features = model.forward_features(x)
    assert tuple(features.shape) == (4, 5, 8)  # class token + 4 patches
    np.testing.assert_allclose(to_numpy(model.forward_head(features)), to_numpy(model(x)), atol=1e-6)
    avg = tiny_vit(global_pool="avg", class_token=False)
    assert tuple(avg.forward_features(x).shape) == (4, 4, 8)
    np.testing.assert_allclose(to_numpy(avg.forward_head(avg.forward_features(x))), to_numpy(avg(x)), atol=1e-6)
    assert avg.get_layer("fc_norm") is not None
    headless = tiny_vit(num_classes=0)
    assert tuple(headless(x).shape) == (4, 8) and headless.head is None


def test_small_image_presets_build_and_run():
    for name, shape in [("vit_tiny_patch4_32", (32, 32, 3)), ("vit_tiny_patch4_28", (28, 28, 1)),
                        ("vit_tiny_patch2_28", (28, 28, 1))]:
        model = zoo.get_model(name, depth=1)
        assert tuple(model(np.zeros((1, *shape), "float32")).shape) == (1, 10)
    assert zoo.list_models(family="vit") == sorted(zoo.models.VIT_PRESETS)


def test_keras_file_round_trip_is_bit_identical(tmp_path):
    model = tiny_vit(skip="sparse", skip_options={"k": 2}, global_pool="avg")
    for v in model.trainable_weights:
        v.assign(to_numpy(v) + 0.05)
    path = tmp_path / "vit.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, zoo.ViT)
    assert loaded.get_config() == model.get_config()
    x = images()
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))


def test_vit_and_rnn_weights_saved_here_load_on_the_other_backends(tmp_path, backend):
    rng = np.random.default_rng(7)
    cases = [
        ("vit_identity", tiny_vit(depth=2), images()),
        ("vit_orthogonal_avg", tiny_vit(skip="orthogonal", global_pool="avg", class_token=False), images()),
        ("vit_gate", tiny_vit(skip="gate_exclusive"), images()),
        ("resrnn_orthogonal", zoo.ResidualRNN(units=6, num_layers=2, skip="orthogonal", input_shape=(5, 3), num_classes=3),
         rng.standard_normal((4, 5, 3)).astype("float32")),
        ("resgru_sparse", zoo.ResidualStackedRNN(units=6, depth=2, cell="gru", skip="sparse", skip_options={"k": 2},
                                                 input_shape=(5, 3), num_classes=3),
         rng.standard_normal((4, 5, 3)).astype("float32")),
    ]
    manifest = []
    for case_id, model, x in cases:
        for v in model.trainable_weights:
            v.assign(to_numpy(v) + 0.05 * rng.standard_normal(v.shape).astype("float32"))
        np.save(tmp_path / f"{case_id}_inputs.npy", x)
        model.save_weights(tmp_path / f"{case_id}.weights.h5")
        np.save(tmp_path / f"{case_id}.npy", to_numpy(model(x, training=False)))
        manifest.append({"id": case_id, "class": keras.saving.get_registered_name(type(model)),
                         "config": model.get_config(), "inputs": f"{case_id}_inputs.npy",
                         "weights": f"{case_id}.weights.h5", "outputs": f"{case_id}.npy"})
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    script = Path(__file__).with_name("cross_backend.py")
    for other in BACKENDS:
        if other == backend:
            continue
        env = {**os.environ, "KERAS_BACKEND": other}
        run = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        report = json.loads([l for l in run.stdout.splitlines() if l.startswith("RESULT ")][-1][len("RESULT "):])
        assert report["backend"] == other and set(report["diffs"]) == {c[0] for c in cases}
        for case_id, diff in report["diffs"].items():
            assert diff <= 1e-5, f"{backend} -> {other}, {case_id}: max abs diff {diff}"


def test_invalid_arguments_and_inputs_raise_value_errors():
    with pytest.raises(ValueError, match=r"image_size=\(30, 30, 3\) with patch_size=4.*divisible"):
        tiny_vit(image_size=(30, 30, 3))
    with pytest.raises(ValueError, match=r"image_size=\(8, 8\).*rank-3"):
        tiny_vit(image_size=(8, 8))
    with pytest.raises(ValueError, match=r"embed_dim=10 with num_heads=4"):
        tiny_vit(embed_dim=10, num_heads=4)
    with pytest.raises(ValueError, match=r"global_pool='cls'"):
        tiny_vit(global_pool="cls")
    with pytest.raises(ValueError, match=r"class_token=False"):
        tiny_vit(class_token=False)
    with pytest.raises(ValueError, match=r"size='huge'"):
        zoo.get_model("vit_tiny_patch16_224", size="huge")
    with pytest.raises(ValueError):
        tiny_vit()(np.zeros((2, 8, 8), "float32"))
