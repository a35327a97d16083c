"""Residual Alignment analysis (SPEC section 6): Jacobian SVDs, metrics on known cases, CLI."""

import json
import time

import keras
import numpy as np
import pytest
from conftest import to_numpy

import zoo
from zoo import analysis
from zoo.analysis import jacobian, metrics


def relu_mlp_unit(width=24, hidden=32, seed=0):
    """A ResidualMLPUnit (no norm) with fixed numpy weights, its input, and its Jacobian in
    closed form: F(x) = relu(x K1 + b1) K2 + b2, so J = K2^T diag(relu'(x K1 + b1)) K1^T."""
    rng = np.random.default_rng(seed)
    unit = zoo.ResidualMLPUnit(width, hidden=hidden, norm="none")
    unit.build((None, width))  # builds dense1 and dense2 too
    k1 = rng.standard_normal((width, hidden)) / np.sqrt(width)
    b1 = 0.1 * rng.standard_normal(hidden)
    k2 = rng.standard_normal((hidden, width)) / np.sqrt(hidden)
    b2 = 0.1 * rng.standard_normal(width)
    k1, b1, k2, b2 = (w.astype("float32") for w in (k1, b1, k2, b2))
    unit.dense1.set_weights([k1, b1])
    unit.dense2.set_weights([k2, b2])
    x = rng.standard_normal((1, width)).astype("float32")
    k1, b1, k2 = (w.astype("float64") for w in (k1, b1, k2))
    active = (x.astype("float64") @ k1 + b1)[0] > 0
    return unit, x, k2.T @ np.diag(active.astype("float64")) @ k1.T


def moved_off_init(model, scale=0.05, seed=1):
    """Move every weight, BatchNorm statistics included, so eval-mode BN is not the identity."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if "seed_generator" in w.path or "keep_override" in w.path:
            continue
        value = to_numpy(w)
        noise = scale * rng.standard_normal(value.shape).astype("float32")
        w.assign(np.abs(value + noise) if "variance" in w.path else value + noise)
    return model


# === Top-k singular values: matrix-free against dense ===
def test_matrix_free_top_k_matches_the_closed_form_jacobian_on_every_backend():
    # The reference is numpy's SVD of the closed-form Jacobian, the same on every backend, so
    # passing on jax, tensorflow and torch means the same numbers come out of each.
    unit, x, exact = relu_mlp_unit()
    reference = np.linalg.svd(exact, compute_uv=False)
    op = analysis.JacobianOperator(lambda h: unit.branch(h), x)
    top = analysis.top_singular_triplets(op, k=5)
    assert top.converged and top.method == "subspace"
    np.testing.assert_array_less(np.abs(top.values - reference[:5]) / reference[:5], 1e-4)
    dense = analysis.dense_singular_triplets(analysis.JacobianOperator(lambda h: unit.branch(h), x), k=5)
    np.testing.assert_allclose(dense.spectrum, reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(analysis.explicit_jacobian(op), exact, atol=1e-5)


def test_top_singular_vectors_are_singular_vectors():
    unit, x, exact = relu_mlp_unit(seed=3)
    top = analysis.top_singular_triplets(analysis.JacobianOperator(lambda h: unit.branch(h), x), k=3)
    for s, u, v in zip(top.values, top.left, top.right):
        np.testing.assert_allclose(exact @ v, s * u, atol=1e-4 * top.values[0])
        np.testing.assert_allclose(exact.T @ u, s * v, atol=1e-4 * top.values[0])


@pytest.mark.parametrize("unit_index", [1, 2], ids=["square", "strided"])
def test_matrix_free_matches_dense_svd_on_conv_units(unit_index):
    keras.utils.set_random_seed(0)
    model = moved_off_init(
        zoo.ResNet(stage_depths=(2, 1), stage_widths=(2, 4), input_shape=(8, 8, 3), num_classes=3, placement="full_preact")
    )
    images = np.random.default_rng(0).standard_normal((1, 8, 8, 3)).astype("float32")
    unit = model.residual_units[unit_index]
    h = analysis.unit_tensors(model, images)[0][unit_index]
    dense = analysis.dense_singular_triplets(analysis.JacobianOperator(unit.branch, h), k=4)
    top = analysis.top_singular_triplets(analysis.JacobianOperator(unit.branch, h), k=4)
    assert dense.left.shape[1] == (128 if unit_index == 1 else 64) and dense.right.shape[1] == 128
    np.testing.assert_array_less(np.abs(top.values - dense.values) / dense.values, 1e-4)


def test_branch_is_the_residual_branch_of_the_unit():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype("float32")
    unit = zoo.ResidualUnit(4, placement="relu_before_add", skip="none")
    np.testing.assert_allclose(to_numpy(unit(x)), to_numpy(unit.branch(x)), atol=1e-6)
    gated = zoo.ResidualUnit(4, placement="relu_before_add", skip="gate_exclusive", skip_options={"bias_init": 0.0})
    y = to_numpy(gated(x))
    g = to_numpy(gated.skip.gate(x))
    np.testing.assert_allclose(y, (1 - g) * x + g * to_numpy(gated.branch(x)), atol=1e-5)


# === Metrics on constructed cases with known answers ===
def test_ra1_of_a_line_is_one_and_equispaced():
    a, b = np.random.default_rng(0).standard_normal((2, 50))
    line = a + np.arange(7)[:, None] * b
    assert metrics.line_variance_share(line) == pytest.approx(1.0, abs=1e-12)
    assert metrics.step_length_cv(line) == pytest.approx(0.0, abs=1e-12)
    uneven = a + np.array([0, 1, 3, 4, 8])[:, None] * b
    assert metrics.line_variance_share(uneven) == pytest.approx(1.0, abs=1e-12)
    assert metrics.step_length_cv(uneven) > 0.3
    circle = np.stack([np.cos(np.linspace(0, 2 * np.pi, 9)[:-1]), np.sin(np.linspace(0, 2 * np.pi, 9)[:-1])], 1)
    assert metrics.line_variance_share(circle) == pytest.approx(0.5, abs=1e-9)


def test_ra2_alignment_of_parallel_and_orthogonal_vectors():
    u = np.random.default_rng(0).standard_normal(10)
    assert metrics.vector_alignment(u, -3 * u) == pytest.approx(1.0)
    assert metrics.vector_alignment([1, 0], [0, 1]) == 0.0
    matrix = metrics.alignment_matrix([u, 2 * u, np.ones(3)])
    assert matrix[0, 1] == pytest.approx(1.0) and np.isnan(matrix[0, 2])
    assert metrics.mean_off_diagonal(matrix) == pytest.approx(1.0)


def test_ra3_rank_of_a_rank_r_product():
    rng = np.random.default_rng(0)
    for r in (1, 3, 7):
        j = rng.standard_normal((20, r)) @ rng.standard_normal((r, 20))
        assert metrics.numerical_rank(np.linalg.svd(j, compute_uv=False), tol=1e-6) == r


def test_ra4_slope_of_sigma_proportional_to_one_over_depth_is_minus_one():
    depths = np.array([4, 8, 16, 32])
    assert metrics.log_log_slope(depths, 3.0 / depths) == pytest.approx(-1.0)
    assert metrics.log_log_slope(depths, np.full(4, 2.0)) == pytest.approx(0.0, abs=1e-12)


def test_refinement_cosine():
    g = np.random.default_rng(0).standard_normal(8)
    assert metrics.cosine(-0.1 * g, -g) == pytest.approx(1.0)
    assert metrics.cosine(g, -g) == pytest.approx(-1.0)


def constructed_mlp(kernel1, bias1, kernel2, bias2, depth=3):
    """A ResidualMLP (identity skips, no norm) whose every unit has the given branch weights."""
    width, hidden = kernel1.shape
    model = zoo.ResidualMLP(depth=depth, width=width, hidden=hidden, norm="none", input_shape=(width,), num_classes=3)
    model.get_layer("stem").set_weights([np.eye(width, dtype="float32"), np.zeros(width, "float32")])
    for unit in model.residual_units:
        unit.dense1.set_weights([kernel1.astype("float32"), bias1.astype("float32")])
        unit.dense2.set_weights([kernel2.astype("float32"), bias2.astype("float32")])
    return model


def test_analysis_of_a_constant_branch_gives_a_straight_equispaced_trajectory():
    # F(h) = relu(b1) K2 + b2 is constant, so h_{i+1} = h_i + c: a line, equal steps, J = 0.
    rng = np.random.default_rng(0)
    model = constructed_mlp(np.zeros((6, 4)), np.ones(4), rng.standard_normal((4, 6)), rng.standard_normal(6), depth=5)
    x = rng.standard_normal((2, 6)).astype("float32")
    report = analysis.analyze_model(model, x, k=2)
    assert report["ra1"]["variance_share"] == pytest.approx(1.0, abs=1e-6)
    assert report["ra1"]["step_cv"] == pytest.approx(0.0, abs=1e-5)
    assert all(u["sigma_1"] == pytest.approx(0.0, abs=1e-6) for u in report["units"])


def test_analysis_of_rank_r_branches_reports_rank_r():
    # hidden = r < width and every ReLU active: J = K2^T K1^T has rank r exactly.
    rng = np.random.default_rng(0)
    width, r = 12, 3
    model = constructed_mlp(0.1 * rng.standard_normal((width, r)), np.full(r, 50.0), 0.1 * rng.standard_normal((r, width)), np.zeros(width))
    x = rng.standard_normal((2, width)).astype("float32")
    for method in ("dense", "subspace"):
        report = analysis.analyze_model(model, x, k=6, method=method)
        assert report["ra3"]["rank_per_unit"] == [r, r, r]
        assert report["ra3"]["share_rank_at_most_classes"] == 1.0


def test_analysis_of_symmetric_shared_branches_gives_ra2_one():
    # K2 = K1^T with every ReLU active: J = K1 K1^T is symmetric PSD, so u_1 = v_1 (RA2 within
    # a unit = 1), and every unit has that same J (RA2 across units = 1).
    rng = np.random.default_rng(0)
    k1 = 0.2 * rng.standard_normal((10, 6))
    model = constructed_mlp(k1, np.full(6, 50.0), k1.T, np.zeros(10), depth=4)
    x = rng.standard_normal((2, 10)).astype("float32")
    report = analysis.analyze_model(model, x, [0, 1], k=2)
    assert report["ra2"]["within_unit"] == pytest.approx(1.0, abs=1e-5)
    assert report["ra2"]["across_units"] == pytest.approx(1.0, abs=1e-5)
    assert all(-1.0 <= c <= 1.0 for c in report["refinement"]["cos_per_unit"])


# === ResNet-56 at 32x32: matrix-free, bounded memory ===
def test_resnet56_analysis_is_matrix_free_and_bounded(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the matrix-free path formed an explicit Jacobian")

    monkeypatch.setattr(jacobian, "explicit_jacobian", refuse)
    blocks = []
    matvec, rmatvec = jacobian.JacobianOperator.matvec, jacobian.JacobianOperator.rmatvec

    def record(method):
        def wrapped(self, vectors):
            blocks.append((np.shape(vectors), self.in_dim, self.out_dim))
            return method(self, vectors)

        return wrapped

    monkeypatch.setattr(jacobian.JacobianOperator, "matvec", record(matvec))
    monkeypatch.setattr(jacobian.JacobianOperator, "rmatvec", record(rmatvec))
    model = zoo.get_model("resnet56_cifar")
    images = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype("float32")
    start = time.time()
    # Units 0 (16384 -> 16384) and 9 (the first strided unit, 16384 -> 8192).
    report = analysis.analyze_model(model, images, k=2, method="subspace", max_iters=2, units=[0, 9], dense_max_dim=0)
    elapsed = time.time() - start
    assert [u["in_dim"] for u in report["units"]] == [16384, 16384]
    assert [u["out_dim"] for u in report["units"]] == [16384, 8192]
    assert all(u["method"] == "subspace" and u["sigma_1"] > 0 for u in report["units"])
    # Every product block is at most (k + oversample) x D: never D x D.
    assert max(shape[0] for shape, _, _ in blocks) <= 2 + 8
    assert elapsed < 300


# === Report, plots and the command ===
def test_write_report_writes_json_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    model = zoo.ResidualMLP(depth=3, width=8, input_shape=(5,), num_classes=3)
    x = np.random.default_rng(0).standard_normal((2, 5)).astype("float32")
    report = analysis.analyze_model(model, x, [0, 2], k=3)
    paths = analysis.write_report(report, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["alignment.png", "metrics.json", "sigma1.png", "spectra.png", "trajectory.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    loaded = json.loads((tmp_path / "metrics.json").read_text())
    assert loaded["depth"] == 3 and len(loaded["units"]) == 3
    for key in ("ra1", "ra2", "ra3", "ra4", "refinement"):
        assert key in loaded


def test_analyze_command_on_a_preset_with_saved_weights(tmp_path):
    pytest.importorskip("matplotlib")
    from recipes import analyze

    model = zoo.get_model("resmlp_fmnist_d4", skip="sparse")
    model.save_weights(tmp_path / "m.weights.h5")
    report = analyze.main([
        "--model", "resmlp_fmnist_d4", "--skip", "sparse", "--weights", str(tmp_path / "m.weights.h5"),
        "--data", "random", "--num-inputs", "1", "--k", "3", "--method", "subspace", "--max-iters", "20", "--units", "0", "3",
        "--out", str(tmp_path / "out"),
    ])
    assert report["model_config"]["skip"] == "sparse" and report["weights"].endswith(".weights.h5")
    assert (tmp_path / "out" / "metrics.json").exists() and (tmp_path / "out" / "spectra.png").exists()


def test_idx_reader(tmp_path):
    import gzip

    from recipes.analyze import read_idx

    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(tmp_path / "a-idx3-ubyte.gz", "wb") as f:
        f.write(header + array.tobytes())
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz"), array)
