"""Run an experiment: every variant of a config over several seeds, then one results table.

    python -m recipes.experiment recipes/experiments/residual_droppath.json --jobs 4
    python -m recipes.experiment recipes/experiments/he_table1_shortcuts.json --set epochs=3 train_subset=5000

An experiment file holds a base config (as recipes/configs/*.json), `variants` (label ->
config overrides) and `seeds`. Each (variant, seed) trains in its own process
(`python -m recipes.train train`), `--jobs` at a time, into runs/<experiment>/<variant>/seed<k>;
a run that already has metrics.json is not run again, and a killed one resumes from its
checkpoint. The table (test accuracy mean and standard deviation over seeds, with the
schedule and device it was measured on) is written as results.md, results.json and
results.png beside the runs.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from recipes.train import deep_update, device_name, parse_set


def plan(experiment, overrides):
    runs = []
    for label, variant in experiment["variants"].items():
        for seed in experiment.get("seeds", [0]):
            config = deep_update(deep_update(experiment["base"], variant), {"seed": seed, "trainer": {"seed": seed}})
            runs.append((label, seed, deep_update(config, overrides)))
    return runs


def run_all(runs, root, jobs, env):
    pending = [r for r in runs if not (root / r[0] / f"seed{r[1]}" / "metrics.json").is_file()]
    active = []
    print(f"{len(runs)} runs, {len(runs) - len(pending)} already done, {jobs} at a time", flush=True)
    while pending or active:
        while pending and len(active) < jobs:
            label, seed, config = pending.pop(0)
            out = root / label / f"seed{seed}"
            out.mkdir(parents=True, exist_ok=True)
            (out / "run_config.json").write_text(json.dumps(config, indent=2))
            cmd = [sys.executable, "-m", "recipes.train", "train", "--config", str(out / "run_config.json"), "--out", str(out), "--resume"]
            log = open(out / "stdout.log", "a")
            active.append((label, seed, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, time.time()))
            print(f"  started {label} seed {seed}", flush=True)
        time.sleep(1)
        for item in list(active):
            label, seed, proc, log, start = item
            if proc.poll() is not None:
                log.close()
                active.remove(item)
                status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {root / label / f'seed{seed}' / 'stdout.log'})"
                print(f"  finished {label} seed {seed} in {time.time() - start:.0f}s: {status}", flush=True)


PER_SEED = ("test_accuracy", "test_loss", "train_loss", "train_accuracy", "optimizer_steps", "epochs", "seconds")


def loss_curve(log_csv):
    """Each epoch's training loss from a run's Keras CSV log (empty when there is none)."""
    import csv

    if not Path(log_csv).is_file():
        return []
    return [float(row["loss"]) for row in csv.DictReader(Path(log_csv).open()) if row.get("loss")]


def table_row(label, dataset, per_seed):
    accs = [r["test_accuracy"] for r in per_seed]
    return {
        "variant": label,
        "dataset": dataset,
        "runs": len(accs),
        # std over seeds: the sample form (ddof=1), as docs/claims.md
        "test_accuracy_mean": float(np.mean(accs)) if accs else None,
        "test_accuracy_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
        "test_error_pct_mean": float(100 * (1 - np.mean(accs))) if accs else None,
        "accuracies": accs,
        "seeds": per_seed,
    }


def summarize(experiment, runs, root, device, command=None, note=None):
    rows = []
    for label in experiment["variants"]:
        per_seed, dataset = [], None
        for run_label, seed, config in runs:
            f = root / run_label / f"seed{seed}" / "metrics.json"
            if run_label == label and f.is_file():
                metrics = json.loads(f.read_text())
                per_seed.append({"seed": seed, **{k: metrics.get(k) for k in PER_SEED},
                                 "train_loss_curve": loss_curve(f.parent / "log.csv")})
                dataset = config.get("dataset")
        rows.append(table_row(label, dataset, per_seed))
    base = runs[0][2] if runs else {}
    meta = {
        "experiment": experiment.get("name"), "description": experiment.get("description", ""),
        "model": base.get("model"), "dataset": base.get("dataset"), "epochs": base.get("epochs"),
        "train_subset": base.get("train_subset"), "batch_size": base.get("batch_size"),
        "optimizer": base.get("optimizer"), "seeds": experiment.get("seeds", [0]),
        "backend": os.environ.get("KERAS_BACKEND"), "device": device, "date": time.strftime("%Y-%m-%d"),
        "command": command,
    }
    if note:
        meta["note"] = note
    return write_tables(experiment.get("title", experiment.get("name")), rows, meta, root)


def write_tables(title, rows, meta, root):
    """results.md, results.json and results.png in `root` from the rows and their meta."""
    device, note = meta["device"], meta.get("note")
    meta = {**meta, "title": title}
    lines = [
        f"### {title}",
        "",
        f"{meta['model']} on {meta['dataset']}"
        + (f" ({meta['train_subset']} training images)" if meta["train_subset"] else "")
        + f", {meta['epochs']} epochs, batch {meta['batch_size']}, seeds {meta['seeds']}, "
        f"{meta['backend']} backend on {device}, {meta['date']}" + (f" ({note})" if note else "") + ".",
        "",
        "Std is the sample standard deviation over seeds (ddof=1).",
        "",
        "| variant | test accuracy (mean ± std) | test error % | runs |",
        "|---|---|---|---|",
    ]
    for r in rows:
        if r["runs"]:
            lines.append(f"| {r['variant']} | {r['test_accuracy_mean']:.4f} ± {r['test_accuracy_std']:.4f} | {r['test_error_pct_mean']:.2f} | {r['runs']} |")
        else:
            lines.append(f"| {r['variant']} | not run | | 0 |")
    (root / "results.md").write_text("\n".join(lines) + "\n")
    (root / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    plot(rows, root / "results.png", meta)
    return "\n".join(lines)


def retabulate(folder):
    """Rewrite a published study's tables from its results.json: the rows are recomputed from
    each seed's numbers, the meta (command, date, device) kept as measured."""
    data = json.loads((folder / "results.json").read_text())
    if "meta" not in data or any("seeds" not in r for r in data.get("rows", [None])):
        raise SystemExit(f"{folder / 'results.json'} holds no per-seed numbers (a table older than recipes.experiment's "
                         "per-seed rows): there is nothing to recompute it from.")
    meta = data["meta"]
    rows = [table_row(r["variant"], r.get("dataset"), r["seeds"]) for r in data["rows"]]
    source = Path(__file__).parent / "experiments" / f"{meta['experiment']}.json"
    title = meta.get("title") or (json.loads(source.read_text()).get("title") if source.is_file() else None) or meta["experiment"]
    return write_tables(title, rows, {k: v for k, v in meta.items() if k != "title"}, folder)


def plot(rows, path, meta):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["runs"]]
    if not done:
        return
    curves = [r for r in done if any(len(seed.get("train_loss_curve") or []) > 1 for seed in r["seeds"])]
    width = max(4, 0.9 * len(done) + 2)
    if curves:  # accuracy bars beside the training-loss curves (mean over seeds, per epoch)
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(width + 4.5, 3.2), gridspec_kw={"width_ratios": [width, 4.5]})
        for r in curves:
            seeds = [seed["train_loss_curve"] for seed in r["seeds"] if seed.get("train_loss_curve")]
            n = min(len(c) for c in seeds)
            ax2.plot(range(1, n + 1), np.mean([c[:n] for c in seeds], axis=0), marker=".", label=r["variant"])
        ax2.set_yscale("log")
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("training loss (mean over seeds)")
        ax2.legend(fontsize=6)
    else:
        fig, ax = plt.subplots(figsize=(width, 3.2))
    ax.bar(range(len(done)), [r["test_accuracy_mean"] for r in done], yerr=[r["test_accuracy_std"] for r in done], capsize=3)
    ax.set_xticks(range(len(done)), [r["variant"] for r in done], rotation=30, ha="right", fontsize=8)
    lo = min(r["test_accuracy_mean"] for r in done)
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{meta['experiment']}: {meta['model']} on {meta['dataset']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", nargs="?", help="experiment JSON (recipes/experiments/)")
    parser.add_argument("--retabulate", default=None, metavar="DIR",
                        help="rewrite DIR's results.{md,png} and the spreads in its results.json from the per-seed "
                             "numbers it holds (no runs; e.g. after a change to how tables are written)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run (e.g. epochs=3)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (a GPU is mostly idle with one small run)")
    parser.add_argument("--out", default=None, help="default runs/<experiment name>")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds, overriding the file's")
    parser.add_argument("--no-run", action="store_true", help="only tabulate the runs that finished")
    parser.add_argument("--publish", default=None, metavar="DIR",
                        help="also copy results.{json,md,png} there (e.g. docs/results/<name>, read by recipes.claims)")
    args = parser.parse_args(argv)
    if args.retabulate:
        print(retabulate(Path(args.retabulate)))
        return
    if not args.experiment:
        parser.error("an experiment JSON is needed (or --retabulate DIR)")
    experiment = json.loads(Path(args.experiment).read_text())
    if args.seeds:
        experiment["seeds"] = [int(s) for s in args.seeds.split(",")]
    name = experiment.get("name") or Path(args.experiment).stem
    root = Path(args.out or Path("runs") / name)
    root.mkdir(parents=True, exist_ok=True)
    runs = plan(experiment, parse_set(args.set))
    env = {**os.environ, "CI": "1"}  # one log line an epoch in the run logs
    if env.get("KERAS_BACKEND") == "jax":  # several processes share one GPU
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if not args.no_run:
        run_all(runs, root, args.jobs, env)
    argv = list(sys.argv[1:] if argv is None else argv)
    note = None
    if args.no_run:  # the table of runs made by the same command without --no-run, perhaps not all of them
        argv = [a for a in argv if a not in ("--no-run", "--out") and a != args.out]
        done = sum((root / label / f"seed{seed}" / "metrics.json").is_file() for label, seed, _ in runs)
        note = f"tabulated with --no-run when {done} of the {len(runs)} runs had finished"
    command = " ".join(["python -m recipes.experiment", *map(shlex.quote, argv)])
    print(summarize(experiment, runs, root, device_name(), command=f"KERAS_BACKEND={os.environ.get('KERAS_BACKEND')} {command}",
                    note=note))
    if args.publish:
        publish = Path(args.publish)
        publish.mkdir(parents=True, exist_ok=True)
        for name in ("results.json", "results.md", "results.png"):
            if (root / name).is_file():
                shutil.copy2(root / name, publish / name)
        print(f"published to {publish}")


if __name__ == "__main__":
    main()
