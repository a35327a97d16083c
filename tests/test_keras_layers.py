"""Every public layer of the zoo through Keras' own layer harness, `run_layer_test`.

The harness (keras.src.testing.TestCase, the checks Keras holds its own layers to; its import
is private, there is no public one) checks: config serialization round trip, `build(shape)`
creating every variable, symbolic and eager calls with the expected shapes, a compiled
training step, and, where the backend supports it, a `mixed_float16` policy reaching every
sublayer (float32 variables, outputs in the compute dtype). Keras skips its mixed precision
check on torch without CUDA; `test_mixed_bfloat16_*` below run on every backend.

Shapes are tiny: the file runs on three backends in CI.
"""

import keras
import numpy as np
import pytest
from keras.src.testing import TestCase

import zoo
from zoo.layers.drop_path import DropPath
from zoo.layers.residual import PLACEMENTS, ResidualUnit, SymmetricConv2D
from zoo.layers.skip import get_skip_class, list_skips
from zoo.layers.transformer import AttentionUnit, ClassToken, MLPUnit, PositionEmbedding, TokenPool
from zoo.layers.unit import BaseResidualUnit
from zoo.models.rnn import RecurrentResidualUnit, ResidualRNNCell, SequencePool

from conftest import SKIP_CASES, to_numpy


class _Harness(TestCase):
    __test__ = False  # a helper, not a test case of its own

    def runTest(self):  # unittest needs a test method to instantiate the case
        pass


@pytest.fixture
def harness():
    case = _Harness()
    case.setUp()
    yield case
    case.tearDown()


# The warm-up mapping of swap_skip(..., warmup_steps=N): a blend of two mappings (here only:
# the model-level cases of conftest.SKIP_CASES are the mappings a user picks).
BLEND_CASES = [
    ("blend", "blend", {"start": "identity", "end": "orthogonal", "steps": 2}),
    ("blend_gate_sparse", "blend", {"start": "gate_shortcut", "end": "sparse", "end_options": {"k": 2}, "steps": 3}),
]
LAYER_SKIP_CASES = SKIP_CASES + BLEND_CASES
LAYER_SKIP_IDS = [c[0] for c in LAYER_SKIP_CASES]


def test_skip_cases_cover_every_registered_mapping():
    # the zoo's own mappings: other test modules register mappings of their own (test_registry)
    own = [name for name in list_skips() if get_skip_class(name).__module__.startswith("zoo.")]
    assert sorted({skip for _, skip, _ in LAYER_SKIP_CASES}) == own


# === Skip mappings ===
@pytest.mark.parametrize("skip, options", [c[1:] for c in LAYER_SKIP_CASES], ids=LAYER_SKIP_IDS)
def test_skip_mapping(harness, skip, options):
    harness.run_layer_test(
        get_skip_class(skip),
        init_kwargs=dict(options),
        input_shape=(2, 3, 6),
        expected_output_shape=(2, 3, 6),
    )


@pytest.mark.parametrize("skip, options", [c[1:] for c in LAYER_SKIP_CASES], ids=LAYER_SKIP_IDS)
def test_skip_mapping_symbolic_pair(skip, options):
    """skip(x) and skip(x, branch) on KerasTensors: compute_output_shape matches call."""
    layer = zoo.make_skip(skip, options)
    x = keras.Input((8, 8, 16))
    assert tuple(layer(x).shape) == (None, 8, 8, 16)
    mapped, branch = zoo.make_skip(skip, options)(x, keras.Input((8, 8, 16)))
    assert tuple(mapped.shape) == tuple(branch.shape) == (None, 8, 8, 16)


def test_orthogonal_learned_mixed_bfloat16():
    """ops.solve has no bfloat16 kernel: the Cayley map runs in float32 and Q is cast."""
    layer = zoo.make_skip("orthogonal", {"mode": "learned"}, dtype="mixed_bfloat16")
    x = keras.random.normal((2, 3, 6))
    y = layer(x)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(layer.cayley.dtype) == "float32"
    np.testing.assert_allclose(to_numpy(y).astype("float32"), to_numpy(x), atol=0.05)  # Q = I at init
    unit = zoo.ResidualMLPUnit(6, skip="orthogonal", skip_options={"mode": "learned"}, dtype="mixed_bfloat16")
    assert keras.backend.standardize_dtype(unit(keras.random.normal((2, 6))).dtype) == "bfloat16"


# === DropPath ===
@pytest.mark.parametrize("granularity", ["sample", "batch"])
def test_drop_path(harness, granularity):
    harness.run_layer_test(
        DropPath,
        init_kwargs={"rate": 0.5, "granularity": granularity, "seed": 3},
        input_shape=(2, 3, 4),
        call_kwargs={"training": True},
        expected_output_shape=(2, 3, 4),
        expected_num_seed_generators=1,
        # No variables to train: Keras' training step still runs (it checks the layer
        # traces inside a compiled step); nothing else to train.
    )


# === Residual units ===
RESNET_CASES = [
    *[(f"basic_{p}", dict(filters=4, placement=p), (2, 4, 4, 4), (2, 4, 4, 4)) for p in PLACEMENTS],
    ("basic_projection", dict(filters=8, stride=2), (2, 4, 4, 4), (2, 2, 2, 8)),
    ("basic_projection_preact", dict(filters=8, stride=2, placement="full_preact"), (2, 4, 4, 4), (2, 2, 2, 8)),
    ("basic_pad", dict(filters=8, stride=2, downsample="pad"), (2, 4, 4, 4), (2, 2, 2, 8)),
    ("bottleneck", dict(filters=2, block="bottleneck"), (2, 4, 4, 8), (2, 4, 4, 8)),
    ("bottleneck_projection", dict(filters=2, block="bottleneck", stride=2, placement="relu_preact"), (2, 4, 4, 4), (2, 2, 2, 8)),
    ("bottleneck_bn_after_add", dict(filters=2, block="bottleneck", placement="bn_after_add", zero_init_last=True), (2, 4, 4, 8), (2, 4, 4, 8)),
    ("shared_preact_sparse", dict(filters=4, placement="full_preact", shared_preact=True, skip="sparse", skip_options={"k": 2}, index=2, num_units=3), (2, 4, 4, 4), (2, 4, 4, 4)),
    ("gate_drop_path", dict(filters=4, skip="gate_exclusive", drop_path_rate=0.2), (2, 4, 4, 4), (2, 4, 4, 4)),
    ("conv1x1_norm_projection", dict(filters=8, stride=2, skip="conv1x1", skip_options={"norm": True}), (2, 4, 4, 4), (2, 2, 2, 8)),
]


@pytest.mark.parametrize("kwargs, in_shape, out_shape", [c[1:] for c in RESNET_CASES], ids=[c[0] for c in RESNET_CASES])
def test_resnet_unit(harness, kwargs, in_shape, out_shape):
    harness.run_layer_test(ResidualUnit, init_kwargs=kwargs, input_shape=in_shape, expected_output_shape=out_shape)


TOKEN_CASES = [
    ("attention", AttentionUnit, dict(num_heads=2)),
    ("attention_orthogonal", AttentionUnit, dict(num_heads=2, skip="orthogonal", skip_options={"mode": "learned"})),
    ("mlp", MLPUnit, dict(hidden_dim=8, drop_path_rate=0.1)),
    ("mlp_correlation", MLPUnit, dict(hidden_dim=8, skip="correlation", num_units=4, index=1)),
    ("mlp_rms_norm", MLPUnit, dict(hidden_dim=8, norm="rms")),
]


@pytest.mark.parametrize("cls, kwargs", [c[1:] for c in TOKEN_CASES], ids=[c[0] for c in TOKEN_CASES])
def test_transformer_unit(harness, cls, kwargs):
    harness.run_layer_test(cls, init_kwargs=kwargs, input_shape=(2, 3, 4), expected_output_shape=(2, 3, 4))


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_residual_mlp_unit(harness, norm):
    harness.run_layer_test(
        zoo.ResidualMLPUnit,
        init_kwargs=dict(width=4, hidden=6, norm=norm, skip="gate_shortcut", drop_path_rate=0.1),
        input_shape=(2, 4),
        expected_output_shape=(2, 4),
    )


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_residual_unit(harness, cell):
    harness.run_layer_test(
        RecurrentResidualUnit,
        init_kwargs=dict(units=4, cell=cell, skip="scale", drop_path_rate=0.1),
        input_shape=(2, 3, 4),
        expected_output_shape=(2, 3, 4),
    )


def residual_rnn(dtype=None, **cell_kwargs):
    """keras.layers.RNN over a ResidualRNNCell, the cell taking the RNN's dtype policy."""
    return keras.layers.RNN(ResidualRNNCell(dtype=dtype, **cell_kwargs), return_sequences=True, dtype=dtype)


RNN_CELL_CASES = [
    ("identity", dict(units=4)),
    ("orthogonal_drop_path", dict(units=4, skip="orthogonal", drop_path_rate=0.3, index=1)),
    ("dropout", dict(units=4, skip="dropout")),
    ("sparse_horizon", dict(units=4, skip="sparse", skip_options={"k": 2}, horizon=3)),
]


@pytest.mark.parametrize("kwargs", [c[1] for c in RNN_CELL_CASES], ids=[c[0] for c in RNN_CELL_CASES])
def test_residual_rnn_cell(harness, kwargs):
    harness.run_layer_test(residual_rnn, init_kwargs=kwargs, input_shape=(2, 3, 5), expected_output_shape=(2, 3, 4))


# === Transformer parts, convs, pools ===
def test_class_token(harness):
    harness.run_layer_test(ClassToken, init_kwargs={}, input_shape=(2, 3, 4), expected_output_shape=(2, 4, 4))


def test_position_embedding(harness):
    harness.run_layer_test(PositionEmbedding, init_kwargs={}, input_shape=(2, 3, 4), expected_output_shape=(2, 3, 4))


@pytest.mark.parametrize("mode", ["token", "avg"])
def test_token_pool(harness, mode):
    # Stateless: nothing to train; the training step still checks it traces in a compiled step.
    harness.run_layer_test(
        TokenPool, init_kwargs={"mode": mode, "num_prefix_tokens": 1}, input_shape=(2, 3, 4), expected_output_shape=(2, 4)
    )


@pytest.mark.parametrize("mode", ["last", "mean"])
def test_sequence_pool(harness, mode):
    harness.run_layer_test(SequencePool, init_kwargs={"mode": mode}, input_shape=(2, 3, 4), expected_output_shape=(2, 4))


def test_symmetric_conv2d(harness):
    harness.run_layer_test(
        SymmetricConv2D,
        init_kwargs={"filters": 4, "kernel_size": 3, "strides": 2, "use_bias": False},
        input_shape=(2, 5, 5, 3),
        expected_output_shape=(2, 3, 3, 4),
    )


# === What the harness does not check ===
def sublayers(layer):
    """Every layer held by `layer`'s attributes, recursively."""
    for value in vars(layer).values():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, keras.layers.Layer) and item is not layer:
                yield item
                yield from sublayers(item)


UNITS = [
    (ResidualUnit, dict(filters=8, stride=2), (2, 4, 4, 4)),
    (AttentionUnit, dict(num_heads=2), (2, 3, 4)),
    (MLPUnit, dict(hidden_dim=8), (2, 3, 4)),
    (zoo.ResidualMLPUnit, dict(width=4), (2, 4)),
    (RecurrentResidualUnit, dict(units=4), (2, 3, 4)),
]


@pytest.mark.parametrize("cls, kwargs, shape", UNITS, ids=[u[0].__name__ for u in UNITS])
def test_unit_build_creates_every_variable_and_policy_reaches_sublayers(cls, kwargs, shape):
    unit = cls(**kwargs, skip="gate_shortcut", dtype="mixed_bfloat16")
    assert isinstance(unit, BaseResidualUnit)
    unit.build(shape)
    count = len(unit.weights)
    assert count and all(v.dtype == "float32" for v in unit.weights)
    inner = list(sublayers(unit))
    assert len(inner) >= 3 and all(layer.dtype_policy.name == "mixed_bfloat16" for layer in inner)
    y = unit(keras.random.normal(shape))
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    assert len(unit.weights) == count  # the call created nothing build had not


def test_rnn_cell_policy_reaches_sublayers():
    layer = residual_rnn(units=4, skip="conv1x1", dtype="mixed_bfloat16")
    y = layer(keras.random.normal((2, 3, 5)))
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    inner = list(sublayers(layer.cell))
    assert len(inner) >= 2 and all(sub.dtype_policy.name == "mixed_bfloat16" for sub in inner)
