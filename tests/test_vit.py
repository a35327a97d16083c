"""SPEC section 4 (ViT): timm's structure and parameter counts, its forward, every mapping,
the unit order and pooling. Build, contract, serialization, DropPathFreeze and weights across
backends: the shared runners (tests/runners.py, tests/test_model_runners.py)."""

import math

import keras
import numpy as np
import pytest
from conftest import SKIP_CASES, SKIP_IDS, to_numpy
from runners import run_model_test, shapes_only, train_each_one_step, trainable_count, variants_of

import zoo


def tiny_vit(**overrides):
    """A ViT on 8x8x3 images: 4 patches of 4x4, width 8, 2 heads."""
    kwargs = dict(input_shape=(8, 8, 3), patch_size=4, embed_dim=8, depth=1, num_heads=2, num_classes=3)
    kwargs.update(overrides)
    return zoo.ViT(**kwargs)


def images(n=4, shape=(8, 8, 3), seed=42):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype("float32")


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


def test_features_keep_the_tokens_and_global_pooling():
    x = images()
    assert tuple(tiny_vit().forward_features(x).shape) == (4, 5, 8)  # class token + 4 patches
    avg = tiny_vit(global_pool="avg", class_token=False)
    assert tuple(avg.forward_features(x).shape) == (4, 4, 8)
    assert avg.get_layer("fc_norm") is not None
    assert tuple(tiny_vit(num_classes=0)(x).shape) == (4, 8)


def test_small_image_presets_build_and_run():
    for name, shape in [("vit_tiny_patch4_32", (32, 32, 3)), ("vit_tiny_patch4_28", (28, 28, 1)),
                        ("vit_tiny_patch2_28", (28, 28, 1))]:
        model = zoo.get_model(name, depth=1)
        assert tuple(model(np.zeros((1, *shape), "float32")).shape) == (1, 10)
    assert zoo.list_models(family="vit") == sorted(zoo.models.VIT_PRESETS)


@pytest.mark.parametrize("case", variants_of(zoo.ViT), ids=lambda c: c.id)
def test_runner_on_vit_variants(case):
    run_model_test(case)


def test_invalid_arguments_and_inputs_raise_value_errors():
    with pytest.raises(ValueError, match=r"input_shape=\(30, 30, 3\) with patch_size=4.*divisible"):
        tiny_vit(input_shape=(30, 30, 3))
    with pytest.raises(ValueError, match=r"input_shape=\(8, 8\).*rank-3"):
        tiny_vit(input_shape=(8, 8))
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


def test_rms_norm_keeps_the_token_mean_that_layer_norm_removes():
    """norm="rms" (the LayerNorm-confound control of docs/claims.md) puts RMSNorm everywhere."""
    model = tiny_vit(norm="rms", depth=2)
    kinds = {type(layer).__name__ for layer in model._flatten_layers() if "Normalization" in type(layer).__name__}
    assert kinds == {"RMSNormalization"}, kinds
    assert {type(u.norm).__name__ for u in model.residual_units} == {"RMSNormalization"}
    assert zoo.ViT.from_config(model.get_config()).norm == "rms"
    constant = np.full((1, 3, 8), 2.0, "float32")  # tokens along the mean direction only
    rms_unit, layer_unit = model.residual_units[0], tiny_vit().residual_units[0]
    np.testing.assert_allclose(to_numpy(rms_unit.norm(constant)), 1.0, atol=1e-4)
    np.testing.assert_allclose(to_numpy(layer_unit.norm(constant)), 0.0, atol=1e-4)
    with pytest.raises(ValueError, match=r"norm='batch'; allowed values are 'layer', 'rms'"):
        tiny_vit(norm="batch")


def test_input_shape_is_the_argument_and_image_size_still_reads_old_configs():
    model = tiny_vit()
    config = model.get_config()
    assert config["input_shape"] == (8, 8, 3) or list(config["input_shape"]) == [8, 8, 3]
    assert "image_size" not in config and model.image_shape == (8, 8, 3)
    old = {k: v for k, v in config.items() if k != "input_shape"}
    old["image_size"] = [8, 8, 3]  # a config written before the rename
    assert zoo.ViT.from_config(old).image_shape == (8, 8, 3)
    with pytest.raises(ValueError, match="input_shape"):  # get_model suggests the current name
        zoo.get_model("vit_tiny_patch4_28", image_size=(8, 8, 1))
