"""Residual Alignment analysis of any zoo model (SPEC section 6; Li & Papyan, arXiv 2401.09018).

    report = analyze_model(model, images, labels, k=8)   # plain dict (JSON-ready)
    write_report(report, "out/")                         # metrics.json + PNG plots

What is analysed, per residual unit i of `model.residual_units` (eval mode):
- h_i, the unit's input, and J_i = dF_i(h_i)/dh_i, where F_i = `unit.branch(h)` is the residual
  branch alone: before DropPath and before the branch scale a gating mapping imposes
  (gate_exclusive, scale with scale_branch=True), so the unscaled F of y = M(x) + g F(x).
- Units whose branch changes the shape (stride or width) have rectangular Jacobians: their
  singular values, sigma_1 and rank are reported; RA2 within the unit (u_1 . v_1) and the
  refinement cosine need equal input and output spaces and are None there; RA2 across units
  compares only units whose outputs have the same dimension.
- The trajectory h_0..h_L is the first unit's input followed by every unit's actual output
  (skip mapping, scaled branch and post-add activation included). RA1 is measured on each
  run of equal dimension (one run for a fully-connected ResNet, one per stage for a CNN);
  the headline numbers average those runs.
- Iterative refinement: cos(F_i(h_i), -dLoss/dh_i), Loss the cross-entropy of the logits
  against the label, h_i the unit's input (square units only).
- Several inputs: every number is computed per input; the summary averages them.
"""

import json
import time
import warnings
from pathlib import Path

import keras
import numpy as np

from zoo.analysis import autodiff, metrics
from zoo.analysis.jacobian import DENSE_MAX_DIM, singular_triplets
from zoo.errors import check_range

SPECTRUM_KEEP = 64  # singular values per unit and input kept in the report (for plots)


def residual_units_of(model):
    units = getattr(model, "residual_units", None)
    if not units:
        raise ValueError(
            f"Model {model.name!r} has no `residual_units`; the analysis needs a zoo model "
            "(its ordered residual units, each with a `branch(x)` method)."
        )
    for unit in units:
        if not callable(getattr(unit, "branch", None)):
            raise ValueError(f"Residual unit {unit.name!r} has no `branch(x)` method returning F(x).")
    return units


def unit_tensors(model, inputs):
    """(inputs of every unit, trajectory h_0..h_L), numpy arrays with the batch axis first."""
    units = residual_units_of(model)
    probe = keras.Model(model.input, [u.input for u in units] + [u.output for u in units])
    values = [np.asarray(keras.ops.convert_to_numpy(t)) for t in probe(inputs, training=False)]
    unit_inputs = values[: len(units)]
    trajectory = [unit_inputs[0]] + values[len(units) :]
    return unit_inputs, trajectory


def loss_gradients(model, unit_inputs, labels, indices=None):
    """{i: dLoss/dh_i} for the inputs of units `indices` (default all): the cross-entropy of
    the logits against integer `labels`, per sample."""
    units = residual_units_of(model)
    labels = keras.ops.convert_to_tensor(np.asarray(labels, dtype="int32"))
    gradients = {}
    for i in range(len(units)) if indices is None else indices:
        tail = keras.Model(units[i].input, model.output)

        def loss(h_, tail=tail):
            logits = tail(h_, training=False)
            return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)

        gradients[i] = autodiff.grad(loss, unit_inputs[i])[1]
    return gradients


def analyze_model(
    model,
    inputs,
    labels=None,
    k=8,
    method="auto",
    rank_tol=1e-2,
    dense_max_dim=DENSE_MAX_DIM,
    max_iters=200,
    tol=1e-7,
    seed=0,
    units=None,
    log=None,
):
    """Residual Alignment report of `model` at `inputs` (N, ...) with integer `labels` (N,).

    k: singular triplets per unit (the rank of a matrix-free run is a lower bound once all
    k + oversample values exceed rank_tol * sigma_1). method: "auto" | "dense" | "subspace".
    units: indices of the units to analyse (default all). `log` receives progress lines.
    Returns a plain dict (see write_report); never forms a Jacobian above `dense_max_dim`.
    """
    log = log or (lambda line: None)
    inputs = np.asarray(inputs, dtype="float32")
    n = inputs.shape[0]
    all_units = residual_units_of(model)
    chosen = list(range(len(all_units))) if units is None else [int(i) for i in units]
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    check_range("k", k, low=1, integer=True)
    start = time.time()

    unit_inputs, trajectory = unit_tensors(model, inputs)
    gradients = loss_gradients(model, unit_inputs, labels, chosen) if (labels is not None and num_classes) else None

    unit_reports = []
    top_left = [[] for _ in range(n)]  # u_1 per input, per analysed unit
    for i in chosen:
        unit = all_units[i]

        def branch(h, unit=unit):
            return unit.branch(h, training=False)

        record = {"index": i, "name": unit.name, "singular_values": [], "rank": [], "ra2_within": [],
                  "refinement_cos": [], "iterations": [], "converged": [], "products": []}
        for s in range(n):
            h = unit_inputs[i][s : s + 1]
            kk = min(k, int(np.prod(h.shape[1:])))
            triplets = singular_triplets(
                branch, h, kk, method=method, dense_max_dim=dense_max_dim,
                **({} if method == "dense" else {"max_iters": max_iters, "tol": tol, "seed": seed}),
            )
            square = triplets.left.shape[1] == triplets.right.shape[1]
            record.update(in_shape=list(h.shape[1:]), out_dim=int(triplets.left.shape[1]),
                          in_dim=int(triplets.right.shape[1]), square=bool(square), method=triplets.method)
            record["singular_values"].append(triplets.spectrum[:SPECTRUM_KEEP].tolist())
            record["rank"].append(metrics.numerical_rank(triplets.spectrum, rank_tol))
            record["ra2_within"].append(
                metrics.vector_alignment(triplets.left[0], triplets.right[0]) if square else None
            )
            if gradients is not None and square:
                f = np.asarray(keras.ops.convert_to_numpy(branch(keras.ops.convert_to_tensor(h))))
                record["refinement_cos"].append(metrics.cosine(f, -gradients[i][s]))
            else:
                record["refinement_cos"].append(None)
            record["iterations"].append(triplets.iterations)
            record["converged"].append(bool(triplets.converged))
            record["products"].append(int(triplets.products))
            top_left[s].append(triplets.left[0])
        record["sigma_1"] = float(np.mean([sv[0] for sv in record["singular_values"]]))
        record["rank_is_lower_bound"] = record["method"] == "subspace" and any(
            r >= len(sv) for r, sv in zip(record["rank"], record["singular_values"])
        )
        unit_reports.append(record)
        log(
            f"unit {i:3d} {unit.name}: {record['in_dim']}->{record['out_dim']} {record['method']}, "
            f"sigma_1={record['sigma_1']:.4g}, rank={record['rank']}, "
            f"{time.time() - start:.1f}s"
        )

    # RA1 on every run of equal dimension of each input's trajectory.
    shapes = [t.shape[1:] for t in trajectory]
    segments = [seg for seg in metrics.equal_shape_segments(shapes) if seg[1] - seg[0] >= 3]
    ra1_inputs = []
    for s in range(n):
        runs = []
        for a, b in segments:
            m = metrics.trajectory_line_metrics(np.stack([t[s] for t in trajectory[a:b]]))
            runs.append({"points": [a, b], **m})
        ra1_inputs.append(runs)

    def mean_of(values):
        values = [v for v in values if v is not None and np.isfinite(v)]
        return float(np.mean(values)) if values else None

    # RA2 across units: |u_1^i . u_1^j|, averaged over inputs.
    matrices = np.stack([metrics.alignment_matrix(vectors) for vectors in top_left])
    with warnings.catch_warnings():  # pairs of units in different stages are NaN throughout
        warnings.simplefilter("ignore", RuntimeWarning)
        alignment = np.nanmean(matrices, axis=0)
    sigma_1 = [u["sigma_1"] for u in unit_reports]
    square_ranks = [np.mean(u["rank"]) for u in unit_reports]

    report = {
        "model": model.name,
        "model_config": _jsonable(model.get_config()),
        "backend": keras.backend.backend(),
        "num_inputs": int(n),
        "num_classes": num_classes,
        "depth": len(all_units),
        "settings": {"k": int(k), "method": method, "rank_tol": rank_tol, "dense_max_dim": dense_max_dim,
                     "max_iters": max_iters, "tol": tol, "seed": seed},
        "units": unit_reports,
        "ra1": {
            "variance_share": mean_of([np.mean([r["variance_share"] for r in runs]) for runs in ra1_inputs if runs]),
            "step_cv": mean_of([np.mean([r["step_cv"] for r in runs]) for runs in ra1_inputs if runs]),
            "per_input": ra1_inputs,
        },
        "ra2": {
            "within_unit": mean_of([v for u in unit_reports for v in u["ra2_within"]]),
            "across_units": metrics.mean_off_diagonal(alignment) if len(unit_reports) > 1 else None,
            "alignment_matrix": _nan_to_none(alignment),
        },
        "ra3": {
            "rank_tol": rank_tol,
            "num_classes": num_classes,
            "rank_per_unit": [float(r) for r in square_ranks],
            "mean_rank": mean_of(square_ranks),
            "share_rank_at_most_classes": (
                float(np.mean([r <= num_classes for r in square_ranks])) if num_classes else None
            ),
        },
        "ra4": {
            "sigma_1_per_unit": sigma_1,
            "mean_sigma_1": mean_of(sigma_1),
            "depth": len(all_units),
        },
        "refinement": {
            "cos_per_unit": [mean_of(u["refinement_cos"]) for u in unit_reports],
            "mean_cos": mean_of([v for u in unit_reports for v in u["refinement_cos"]]),
        },
        "seconds": time.time() - start,
    }
    if report["ra2"]["across_units"] is not None and not np.isfinite(report["ra2"]["across_units"]):
        report["ra2"]["across_units"] = None
    return report


def _nan_to_none(matrix):
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in np.asarray(matrix)]


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def write_report(report, out_dir, plots=True):
    """Write `metrics.json` (and, with plots, the PNGs of zoo.analysis.plots) into out_dir.

    Returns the list of written paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "metrics.json"
    path.write_text(json.dumps(report, indent=1))
    written = [path]
    if plots:
        from zoo.analysis import plots as plotting  # matplotlib only when plotting

        written += plotting.plot_report(report, out_dir)
    return written
