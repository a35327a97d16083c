"""Residual Alignment across skip mappings: fully-connected ResNets on Fashion-MNIST.

    KERAS_BACKEND=jax python -m recipes.ra_study --out docs/ra_study
    # the converged regime, 3 seeds (docs/claims.md):
    KERAS_BACKEND=jax python -m recipes.ra_study --out docs/results/ra_converged --seeds 0 1 2 \
        --train-size 1000 --epochs 300 --target-loss 0.001 --depths 4 8 16 32 --detail

Trains `ResidualMLP`s (zoo.get_model("resmlp_fmnist_d4", depth=L), width --width, BatchNorm branches)
of every depth in --depths with every skip in --skips (identity, none as the control, then
orthogonal, sparse and correlation), each with Adam (lr --lr; AdamW with --weight-decay), batch
--batch, --epochs epochs on
the first --train-size Fashion-MNIST training images (seeded, no augmentation; --target-loss
stops a model once its epoch loss is below it), for each of --seeds; then runs
zoo.analysis.analyze_model on --num-inputs test images (exact Jacobians: the width is small)
and writes:
    results.json        every model's summary numbers and test accuracy
    table.md            the Markdown table printed at the end
    ra4_sigma1.png      RA4: mean sigma_1 against depth, log-log, one line per skip
    ra_by_skip.png      RA1 share, RA2 within / across, refinement cosine of the deepest models
    <skip>_d<L>/        metrics.json + PNGs of the deepest identity and none models (--detail)
"""

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from recipes.analyze import FMNIST_DIR, load_fashion_mnist
from recipes.train import device_name

SKIPS = ("identity", "none", "orthogonal", "sparse", "correlation")
SKIP_OPTIONS = {"sparse": {"k": 4}, "correlation": {"rho": 0.5}, "orthogonal": {"mode": "fixed"}}


def train_and_analyze(depth, skip, data, args, log, seed=0):
    import keras

    import zoo
    from zoo import analysis

    (x_train, y_train), (x_test, y_test), (x_probe, y_probe) = data
    keras.utils.set_random_seed(seed)
    model = zoo.get_model(
        "resmlp_fmnist_d4", depth=depth, width=args.width, skip=skip, skip_options=SKIP_OPTIONS.get(skip, {})
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(args.lr, weight_decay=args.weight_decay) if args.weight_decay
        else keras.optimizers.Adam(args.lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.time()
    history = model.fit(x_train, y_train, batch_size=args.batch, epochs=args.epochs, verbose=0, shuffle=True,
                        callbacks=[StopBelowLoss(args.target_loss)] if args.target_loss else [])
    train_seconds = time.time() - start
    _, test_accuracy = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)
    start = time.time()
    report = analysis.analyze_model(model, x_probe, y_probe, k=args.k, rank_tol=args.rank_tol, seed=seed)
    summary = {
        "depth": depth,
        "skip": skip,
        "seed": seed,
        "epochs_run": len(history.history["loss"]),
        "skip_options": SKIP_OPTIONS.get(skip, {}),
        "train_loss": float(history.history["loss"][-1]),
        "test_accuracy": float(test_accuracy),
        "ra1_variance_share": report["ra1"]["variance_share"],
        "ra1_step_cv": report["ra1"]["step_cv"],
        "ra2_within_unit": report["ra2"]["within_unit"],
        "ra2_across_units": report["ra2"]["across_units"],
        "ra3_mean_rank": report["ra3"]["mean_rank"],
        "ra3_share_rank_at_most_C": report["ra3"]["share_rank_at_most_classes"],
        "mean_sigma_1": report["ra4"]["mean_sigma_1"],
        "refinement_mean_cos": report["refinement"]["mean_cos"],
        "train_seconds": train_seconds,
        "analysis_seconds": time.time() - start,
    }
    log(
        f"d{depth:<3d} {skip:12s} seed {seed} loss {summary['train_loss']:.4f} acc {test_accuracy:.4f}  RA1 {summary['ra1_variance_share']:.3f}  "
        f"RA2 {summary['ra2_within_unit']:.3f}/{summary['ra2_across_units']:.3f}  "
        f"rank {summary['ra3_mean_rank']:.1f}  sigma_1 {summary['mean_sigma_1']:.3f}  "
        f"cos {summary['refinement_mean_cos']:.3f}  ({train_seconds:.0f}s + {summary['analysis_seconds']:.0f}s)"
    )
    return summary, report


def StopBelowLoss(target):  # a callback factory: keras is imported late here
    """A callback that stops training once an epoch's loss is below `target`."""
    import keras

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs and logs.get("loss", float("inf")) < target:
                self.model.stop_training = True

    return Stop()


def fmt(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_table(results, slopes, depths):
    lines = [
        "| skip | L | seed | train loss | test acc | RA1 var. share | RA1 step CV | RA2 u1.v1 | RA2 u1^i.u1^j | RA3 rank (C=10) | mean sigma_1 | refinement cos |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['skip']} | {r['depth']} | {r.get('seed', 0)} | {fmt(r['train_loss'], 4)} | {fmt(r['test_accuracy'], 4)} | {fmt(r['ra1_variance_share'])} | "
            f"{fmt(r['ra1_step_cv'])} | {fmt(r['ra2_within_unit'])} | {fmt(r['ra2_across_units'])} | "
            f"{fmt(r['ra3_mean_rank'], 1)} | {fmt(r['mean_sigma_1'])} | {fmt(r['refinement_mean_cos'])} |"
        )
    lines += ["", f"RA4, slope of log mean sigma_1 against log L (L = {', '.join(map(str, depths))}), per seed:", ""]
    lines += ["| skip | slope per seed |", "|---|---|"] + [
        f"| {s} | {', '.join(fmt(x) for x in v.values())} |" for s, v in slopes.items()]
    return "\n".join(lines)


def plot_by_skip(results, depth, path):
    from zoo.analysis.plots import _pyplot, _save

    plt = _pyplot()
    rows = [r for r in results if r["depth"] == depth and r.get("seed", 0) == results[0].get("seed", 0)]
    keys = [("ra1_variance_share", "RA1 share"), ("ra2_within_unit", "RA2 u1.v1"),
            ("ra2_across_units", "RA2 u1^i.u1^j"), ("refinement_mean_cos", "refinement cos")]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.8 / len(rows)
    for j, r in enumerate(rows):
        ax.bar(np.arange(len(keys)) + j * width, [r[k] or 0.0 for k, _ in keys], width, label=r["skip"])
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, [label for _, label in keys], fontsize=8)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title(f"Residual Alignment by skip mapping, depth {depth}", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--skips", nargs="+", default=list(SKIPS))
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0,
                        help="AdamW's (decoupled) weight decay; 0: Adam without decay")
    parser.add_argument("--num-inputs", type=int, default=6, help="test images analysed per model")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--rank-tol", type=float, default=1e-2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--target-loss", type=float, default=None,
                        help="stop a model's training once its epoch loss is below this (the converged regime)")
    parser.add_argument("--data-dir", default=FMNIST_DIR)
    parser.add_argument("--detail", nargs="*", default=["identity", "none"], help="skips whose deepest model's full report and plots are written")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import keras

    from zoo import analysis
    from zoo.analysis import metrics, plots

    def log(line):
        print(f"[ra_study {time.strftime('%H:%M:%S')}] {line}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train = load_fashion_mnist("train", args.data_dir)
    x_test, y_test = load_fashion_mnist("test", args.data_dir)
    rng = np.random.default_rng(0)  # the same probe images for every model
    probe = rng.choice(len(x_test), args.num_inputs, replace=False)
    data = ((x_train[: args.train_size], y_train[: args.train_size]), (x_test, y_test), (x_test[probe], y_test[probe]))
    log(f"backend {keras.backend.backend()}; {args.train_size} training images, {args.epochs} epochs, "
        f"width {args.width}, depths {args.depths}, skips {args.skips}")

    start = time.time()
    results = []
    for seed in args.seeds:
        for skip in args.skips:
            for depth in args.depths:
                summary, report = train_and_analyze(depth, skip, data, args, log, seed=seed)
                results.append(summary)
                if skip in args.detail and depth == max(args.depths) and seed == args.seeds[0]:
                    analysis.write_report(report, out / f"{skip}_d{depth}")
    slopes = {}
    by_skip_depths, by_skip_sigma = {}, {}
    for skip in args.skips:
        slopes[skip] = {}
        for seed in args.seeds:
            rows = [r for r in results if r["skip"] == skip and r["seed"] == seed]
            if len(rows) > 1:
                slopes[skip][str(seed)] = metrics.log_log_slope([r["depth"] for r in rows], [r["mean_sigma_1"] for r in rows])
        rows = [r for r in results if r["skip"] == skip]
        by_skip_depths[skip] = sorted({r["depth"] for r in rows})
        by_skip_sigma[skip] = [float(np.mean([r["mean_sigma_1"] for r in rows if r["depth"] == d])) for d in by_skip_depths[skip]]
    plots.plot_sigma1_against_depth(by_skip_depths, by_skip_sigma, out / "ra4_sigma1.png")
    plot_by_skip(results, max(args.depths), out / "ra_by_skip.png")
    table = markdown_table(results, slopes, args.depths)
    settings = {k: v for k, v in vars(args).items()}
    settings["backend"] = keras.backend.backend()
    settings["seconds"] = time.time() - start
    settings["device"] = device_name()
    settings["command"] = f"KERAS_BACKEND={keras.backend.backend()} python -m recipes.ra_study " + " ".join(
        map(shlex.quote, sys.argv[1:] if argv is None else argv))
    (out / "results.json").write_text(json.dumps({"settings": settings, "results": results, "ra4_slopes_per_seed": slopes}, indent=1))
    (out / "table.md").write_text(table + "\n")
    print(table)
    log(f"done in {time.time() - start:.0f}s; wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
