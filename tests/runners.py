"""Shared model runners: the checks every zoo model class is held to, as keras-hub's
`run_backbone_test` / `run_model_saving_test`.

`MODEL_CASES` holds a tiny model of every model class; `model_classes()` finds the classes
through the registry (and `zoo.models`), so tests/test_model_runners.py, which runs every
runner on every class, fails for a newly registered class that has no case here. Family test
files keep only what is particular to their family and call these runners for their own
variants.

Runners:
    run_model_test(case)                build, forward, contract, config round trip
    run_model_saving_test(case, tmp)    `.keras` and `.weights.h5` round trips, bit-identical
    run_drop_path_freeze_test(case)     DropPathFreeze A and B steps change only what they should
    run_cross_backend_test(cases, tmp)  weights saved here load on the next backend (a cycle)
                                        (one subprocess for all cases)
"""

import dataclasses
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np

import zoo
from zoo.training import DropPathFreeze

BACKENDS = ("jax", "tensorflow", "torch")
CLASSIFY = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
# get_config keys that are Keras' own, not constructor arguments of a zoo model.
KERAS_CONFIG_KEYS = {"name", "trainable", "dtype"}


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


@dataclasses.dataclass(frozen=True)
class ModelCase:
    """A tiny model of one class: `cls(**kwargs)` takes inputs of `input_shape` (no batch axis)."""

    id: str
    cls: type
    kwargs: dict
    input_shape: tuple

    def build(self, **overrides):
        return self.cls(**{**self.kwargs, **overrides})

    def inputs(self, n=4, seed=42):
        return np.random.default_rng(seed).standard_normal((n, *self.input_shape)).astype("float32")

    @property
    def num_classes(self):
        return self.kwargs["num_classes"]


# One tiny model per class, each with a skip mapping that has state of its own (weights or a
# seeded matrix) so the round trips carry more than the branches, and DropPath on.
MODEL_CASES = [
    ModelCase("resnet", zoo.ResNet,
              dict(stage_depths=(1, 1), stage_widths=(4, 8), input_shape=(8, 8, 3), num_classes=3,
                   skip="sparse", skip_options={"k": 2, "trainable_values": True}, drop_path_rate=0.5),
              (8, 8, 3)),
    ModelCase("vit", zoo.ViT,
              dict(input_shape=(8, 8, 3), patch_size=4, embed_dim=8, depth=1, num_heads=2, num_classes=3,
                   skip="orthogonal", skip_options={"mode": "learned"}, drop_path_rate=0.5),
              (8, 8, 3)),
    ModelCase("resmlp", zoo.ResidualMLP,
              dict(depth=2, width=6, input_shape=(4, 2), num_classes=3, skip="gate_exclusive", drop_path_rate=0.5),
              (4, 2)),
    ModelCase("resrnn", zoo.ResidualRNN,
              dict(units=4, num_layers=2, input_shape=(5, 3), num_classes=3, skip="orthogonal", drop_path_rate=0.5),
              (5, 3)),
    ModelCase("resgru", zoo.ResidualStackedRNN,
              dict(units=4, depth=2, cell="gru", input_shape=(5, 3), num_classes=3, skip="conv1x1",
                   drop_path_rate=0.5),
              (5, 3)),
]

# Variants a family's own tests run through the runners (other pooling, cells, units); the
# cross-backend test loads them too.
MODEL_VARIANTS = [
    ModelCase("resnet_bottleneck_pad", zoo.ResNet,
              dict(stage_depths=(1, 1), stage_widths=(4, 8), input_shape=(8, 8, 3), num_classes=3, block="bottleneck",
                   downsample="pad", placement="full_preact", skip="orthogonal"),
              (8, 8, 3)),
    ModelCase("vit_avg_rms_no_class_token", zoo.ViT,
              dict(input_shape=(8, 8, 3), patch_size=4, embed_dim=8, depth=2, num_heads=2, num_classes=3,
                   global_pool="avg", class_token=False, norm="rms", skip="gate_exclusive"),
              (8, 8, 3)),
    ModelCase("resmlp_layer_norm", zoo.ResidualMLP,
              dict(depth=2, width=6, input_shape=(4, 2), num_classes=3, norm="layer", skip="sparse",
                   skip_options={"k": 2}),
              (4, 2)),
    ModelCase("resrnn_mean_projected", zoo.ResidualRNN,
              dict(units=4, input_shape=(5, 3), num_classes=3, pool="mean", input_projection=True, skip="sparse",
                   skip_options={"k": 2}),
              (5, 3)),
    ModelCase("reslstm", zoo.ResidualStackedRNN,
              dict(units=4, depth=2, cell="lstm", input_shape=(5, 3), num_classes=3, skip="correlation",
                   skip_options={"rho": 0.4}),
              (5, 3)),
]


def model_classes():
    """Every zoo model class: those the registered presets build, and every keras.Model
    subclass `zoo.models` exports but the shared base `ResidualModel`. Sorted by name."""
    classes = {entry.model_class() for entry in zoo.registry.registered_entries().values()}
    classes |= {obj for obj in vars(zoo.models).values()
                if isinstance(obj, type) and issubclass(obj, keras.Model) and obj is not zoo.models.ResidualModel}
    return sorted(classes, key=lambda c: c.__name__)


def cases_of(cls):
    """The runner case of `cls` (a list: empty if it has none)."""
    return [case for case in MODEL_CASES if case.cls is cls]


def variants_of(cls):
    return [case for case in MODEL_VARIANTS if case.cls is cls]


def trained_a_little(model, seed=1):
    """Move every variable (BN statistics included) off its initial value, as training would."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if "seed_generator" in w.path or not keras.backend.is_float_dtype(w.dtype):
            continue
        value = to_numpy(w)
        w.assign(value + 0.05 * rng.standard_normal(value.shape).astype(value.dtype) * (1 if w.trainable else 0.5))
    return model


def run_model_test(case):
    """Build and forward, the model contract, and the get_config/from_config round trip."""
    x = case.inputs()
    keras.utils.set_random_seed(3)
    model = case.build()
    assert isinstance(model, case.cls)

    # Forward: (batch, num_classes), finite; the symbolic output agrees.
    out = to_numpy(model(x, training=False))
    assert out.shape == (len(x), case.num_classes), out.shape
    assert np.all(np.isfinite(out))
    assert tuple(model.output_shape) == (None, case.num_classes)

    # Contract: ordered residual units, each owning its DropPath; features -> head == model.
    units = model.residual_units
    assert len(units) > 0
    assert all(isinstance(u, keras.layers.Layer) and hasattr(u, "drop_path") for u in units)
    assert [u.index for u in units] == list(range(len(units)))
    features = model.forward_features(x)
    np.testing.assert_allclose(to_numpy(model.forward_head(features)), out, atol=1e-6)
    assert model.head.units == case.num_classes

    run_config_round_trip_test(case, model, seed=3)

    # Without a head: the pooled features, and no head layer.
    headless = case.build(num_classes=0)
    assert headless.head is None
    pooled = to_numpy(headless(x, training=False))
    assert pooled.ndim == 2 and pooled.shape[0] == len(x)
    np.testing.assert_allclose(to_numpy(headless.forward_head(headless.forward_features(x))), pooled, atol=1e-6)


def run_config_round_trip_test(case, model=None, seed=3):
    """get_config holds every constructor argument (and Keras' own keys), as plain JSON;
    from_config rebuilds the same model: same variables, same outputs from the same seed.
    `model`, if given, was built by `case.build()` right after `set_random_seed(seed)`."""
    x = case.inputs()
    if model is None:
        keras.utils.set_random_seed(seed)
        model = case.build()
    config = model.get_config()
    own = {n for n, p in inspect.signature(case.cls.__init__).parameters.items()
           if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    assert own <= set(config), own - set(config)
    assert set(config) - own <= KERAS_CONFIG_KEYS, set(config) - own
    for key, value in case.kwargs.items():
        assert json.loads(json.dumps(config[key])) == json.loads(json.dumps(value)), key
    keras.utils.set_random_seed(seed)
    rebuilt = case.cls.from_config(json.loads(json.dumps(config)))
    assert type(rebuilt) is case.cls
    assert rebuilt.get_config() == config
    assert [w.path for w in rebuilt.weights] == [w.path for w in model.weights]
    np.testing.assert_array_equal(to_numpy(rebuilt(x, training=False)), to_numpy(model(x, training=False)))


def run_model_saving_test(case, tmp_path):
    """`.keras` (architecture and weights) and `.weights.h5` round trips, outputs bit-identical."""
    x = case.inputs()
    model = trained_a_little(case.build())
    expected = to_numpy(model(x, training=False))
    model.save(tmp_path / f"{case.id}.keras")
    loaded = keras.saving.load_model(tmp_path / f"{case.id}.keras")
    assert type(loaded) is case.cls
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(to_numpy(loaded(x, training=False)), expected)
    model.save_weights(tmp_path / f"{case.id}.weights.h5")
    fresh = case.build()
    fresh.load_weights(tmp_path / f"{case.id}.weights.h5")
    np.testing.assert_array_equal(to_numpy(fresh(x, training=False)), expected)


def run_drop_path_freeze_test(case, max_steps=10):
    """DropPathFreeze on the model: an A step leaves the dropped units untouched and trains the
    rest; a B step trains only the units its A step dropped (variables and optimizer slots)."""
    model = case.build()
    trainer = DropPathFreeze(model, seed=3)
    # JAX compiles the step once (its eager ops are slow); the others run it eagerly, cheaper for
    # a model this small (the compiled step on every backend: tests/test_drop_path_freeze.py).
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=CLASSIFY,
                    run_eagerly=keras.backend.backend() != "jax")
    x = case.inputs(8)
    y = np.arange(8) % case.num_classes
    trainer.train_on_batch(x, y)  # builds the optimizer slots
    num_units = len(model.residual_units)
    outside = num_units  # guarded_variables' owner index for the stem and the head
    seen = set()
    for step in range(max_steps):
        before = [(owner, to_numpy(v).copy()) for v, owner in trainer.guarded_variables()]
        loss = float(trainer.train_on_batch(x, y))
        assert np.isfinite(loss)
        changed = {owner for (owner, b), (v, _) in zip(before, trainer.guarded_variables())
                   if not np.array_equal(b, to_numpy(v))}
        kind = int(to_numpy(trainer.last_kind))
        dropped = {i for i, keep in enumerate(to_numpy(trainer.last_mask)) if keep == 0}
        if kind == 0:
            assert not changed & dropped, (step, changed, dropped)
            assert outside in changed, (step, changed)
        else:
            assert dropped and changed and changed <= dropped, (step, changed, dropped)
        seen.add((kind, bool(dropped)))
        if {(0, True), (1, True)} <= seen:
            return
    raise AssertionError(f"no A step with a dropped unit followed by its B step in {max_steps} steps: {seen}")


def cross_backend_case(case_id, model, x, folder):
    """Save `model`'s weights, inputs and outputs in `folder`; returns its manifest entry
    (read by tests/cross_backend.py)."""
    np.save(folder / f"{case_id}_inputs.npy", x)
    model.save_weights(folder / f"{case_id}.weights.h5")
    np.save(folder / f"{case_id}.npy", to_numpy(model(x, training=False)))
    return {"id": case_id, "class": keras.saving.get_registered_name(type(model)), "config": model.get_config(),
            "inputs": f"{case_id}_inputs.npy", "weights": f"{case_id}.weights.h5", "outputs": f"{case_id}.npy"}


def next_backend(here):
    """The backend that loads what `here` saved: jax -> tensorflow -> torch -> jax. Over the three
    backends' runs every backend both writes files another loads and loads another's files (the
    .weights.h5 format itself is backend-neutral), at one subprocess a run instead of two."""
    return BACKENDS[(BACKENDS.index(here) + 1) % len(BACKENDS)]


def run_cross_backend_test(manifest, folder, atol=1e-5, others=None):
    """Load every manifest entry on the next backend (`others`: these instead), one subprocess
    for all entries."""
    (folder / "manifest.json").write_text(json.dumps(manifest))
    script = Path(__file__).with_name("cross_backend.py")
    here = keras.backend.backend()
    for other in others or [next_backend(here)]:
        if other == here:
            continue
        env = {**os.environ, "KERAS_BACKEND": other}
        run = subprocess.run([sys.executable, str(script), str(folder)], env=env, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        report = json.loads([l for l in run.stdout.splitlines() if l.startswith("RESULT ")][-1][len("RESULT "):])
        assert report["backend"] == other
        assert set(report["diffs"]) == {c["id"] for c in manifest}
        for case_id, diff in report["diffs"].items():
            assert diff <= atol, f"{here} -> {other}, {case_id}: max abs diff {diff}"


def shapes_only(name, **overrides):
    """`zoo.get_model(name)` without initialising its variables (lazy variables): the same
    layers, shapes and unit list, cheap for counting even the deepest presets."""
    with keras.StatelessScope(initialize_variables=False):
        return zoo.get_model(name, **overrides)


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def train_each_one_step(models, x, y, loss=CLASSIFY):
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
