"""Train and package the weights the zoo ships (catalogue: recipes/weights.json).

    python -m recipes.ship list                                    # catalogue, shipped or not
    python -m recipes.ship train resnet20_cifar.fmnist_identity    # train, then package
    python -m recipes.ship train --all --jobs 4                    # everything (a GPU session)
    python -m recipes.ship package resnet20_cifar.fmnist_identity  # package a finished run
    python -m recipes.ship table                                   # Markdown table of zoo/weights/

`train` runs `recipes.train` (progress, checkpoints, --resume after a kill) into
runs/weights/NAME/seed0 with the catalogue's config (plus any --set overrides, which are
recorded), then packages it. `package` refuses a run below the catalogue's min_accuracy (on the
full test set) unless --force, evaluates the model once more on a fixed test subset (the
figure tests/test_presets.py reproduces on every backend), and writes zoo/weights/NAME with
zoo.save_preset: config.json, model.weights.h5, metadata.json (dataset, accuracies, recipe
config, the training command, versions, checksums); then zoo/weights/index.json is rewritten.
"""

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import keras
import numpy as np

import zoo
from recipes.experiment import run_all
from recipes.train import deep_update, device_name, load_config, parse_set

CATALOGUE = Path(__file__).resolve().parent / "weights.json"
RUNS = Path("runs") / "weights"


def catalogue():
    return json.loads(CATALOGUE.read_text())


def entry_config(cat, name, overrides=None):
    if name not in cat["weights"]:
        raise zoo.UnknownNameError("catalogued weights", name, cat["weights"])
    entry = cat["weights"][name]
    config = deep_update(cat["bases"].get(entry.get("base"), {}), entry["config"])
    return deep_update(deep_update(load_config(), config), overrides or {})


def preprocessing(data):
    """What zoo.data.Dataset.normalize does to this data set's raw arrays."""
    if data.x_train.dtype == np.uint8:
        return data.preprocessing
    return {**data.preprocessing, "note": "float data, used as loaded"}


def evaluate_subset(model, data, test_subset, seed):
    """Accuracy on a fixed test subset: the record each backend must reproduce."""
    data = data.subset(test=test_subset, seed=seed)
    logits = np.concatenate([
        np.asarray(keras.ops.convert_to_numpy(model(data.normalize(data.x_test[i:i + 250]), training=False)))
        for i in range(0, len(data.x_test), 250)
    ])
    return float(np.mean(logits.argmax(-1) == data.y_test))


def package(cat, name, run, force=False, out_dir=zoo.presets.REPO_WEIGHTS):
    run = Path(run)
    metrics = json.loads((run / "metrics.json").read_text())
    bar = cat["weights"][name].get("min_accuracy", 0.0)
    if metrics["test_accuracy"] < bar and not force:
        raise SystemExit(f"{name}: test accuracy {metrics['test_accuracy']:.4f} is below the catalogue's bar {bar}; "
                         "not shipping it (train longer, or --force to ship anyway).")
    trained = zoo.presets.verify_preset(run / "preset")["metadata"]
    arch = name.split(".")[0]
    # a run with builder arguments (e.g. model_args.depth) is loaded as what it was trained as
    builder_args = zoo.registry.get_model_entry(arch).builder_arguments((trained.get("recipe_config") or {}).get("model_args") or {})
    model = zoo.get_model(arch, weights=run / "preset", **builder_args)
    ev = cat["evaluation"]
    data = zoo.data.load_dataset(trained["dataset"])
    subset_acc = evaluate_subset(model, data, ev["test_subset"], ev["seed"])
    metadata = {
        "arch": name.split(".")[0],
        "dataset": trained["dataset"],
        "accuracy": {f"{trained['dataset']}_test": round(metrics["test_accuracy"], 4), "test_samples": metrics["test_samples"],
                     "min_accuracy": bar},
        "evaluation": {"dataset": trained["dataset"], "test_subset": ev["test_subset"], "seed": ev["seed"],
                       "accuracy": subset_acc, "backend": keras.backend.backend()},
        "preprocessing": preprocessing(data),
        "recipe_config": trained.get("recipe_config"),
        "command": trained.get("command"),
        "training": {"epochs": metrics.get("epochs"), "seconds": metrics.get("seconds"), "device": metrics.get("device") or device_name(),
                     "backend": metrics.get("backend"), "keras": metrics.get("keras")},
        "package_command": f"KERAS_BACKEND={keras.backend.backend()} python -m recipes.ship package {shlex.quote(name)}"
                           + (f" --run {shlex.quote(str(run))}" if run != RUNS / name / "seed0" else ""),
        "license": "Apache-2.0 (trained by this project)",
    }
    folder = zoo.save_preset(model, Path(out_dir) / name, metadata, overwrite=True)
    zoo.presets.write_index(out_dir)
    print(f"{name}: test accuracy {metrics['test_accuracy']:.4f} (bar {bar}), subset {ev['test_subset']}: "
          f"{subset_acc:.4f} -> {folder}", flush=True)
    return folder


def table():
    """The README's table of shipped weights, from the index and each metadata.json."""
    lines = ["| weights | dataset | test accuracy | trained / made by | size |", "|---|---|---|---|---|"]
    for name in zoo.presets.list_pretrained():
        meta = zoo.get_preset_metadata(name)
        acc = {k: v for k, v in meta["accuracy"].items() if k.endswith("_test")}
        (split, value), = acc.items()
        note = " (reported by the source)" if meta["accuracy"].get("reported_by") else ""
        where = meta.get("training") or {}
        made = (f"{where.get('epochs')} epochs, {where.get('backend')} on {where.get('device')}: " if where else "") + f"`{meta['command']}`"
        size = sum(meta["bytes"].values()) / 1e6
        lines.append(f"| `{name}` | {meta['dataset']} | {value:.4f}{note} | {made} | {size:.1f} MB |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["list", "train", "package", "table"])
    parser.add_argument("names", nargs="*", help="catalogue names (arch.tag)")
    parser.add_argument("--all", action="store_true", help="every catalogued weight")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (recorded in the metadata)")
    parser.add_argument("--jobs", type=int, default=1, help="trainings at a time")
    parser.add_argument("--run", help="package: the run folder (default runs/weights/NAME/seed0)")
    parser.add_argument("--force", action="store_true", help="package a run below the catalogue's min_accuracy")
    args = parser.parse_args(argv)
    cat = catalogue()
    names = list(cat["weights"]) if args.all else args.names
    for n in names:
        entry_config(cat, n)  # unknown names fail before anything runs
    if args.command == "table":
        print(table())
        return 0
    if args.command == "list":
        shipped = set(zoo.presets.list_pretrained())
        for n in names or cat["weights"]:
            acc = zoo.get_preset_metadata(n)["accuracy"] if n in shipped else "not shipped"
            print(f"{n:38s} bar {cat['weights'][n].get('min_accuracy', 0):.3f}  {acc}")
        return 0
    if not names:
        parser.error(f"{args.command} needs names or --all")
    if args.command == "train":
        overrides = parse_set(args.set)
        command = f"KERAS_BACKEND={keras.backend.backend()} python -m recipes.ship train {{}}" + "".join(
            f" --set {shlex.quote(x)}" for x in args.set)
        runs = [(n, 0, {**entry_config(cat, n, overrides), "command": command.format(n)}) for n in names]
        env = {**os.environ, "CI": "1"}
        if env.get("KERAS_BACKEND") == "jax":
            env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        run_all(runs, RUNS, args.jobs, env)
    failed = []
    for n in names:
        run = Path(args.run) if args.run and len(names) == 1 else RUNS / n / "seed0"
        if not (run / "metrics.json").is_file():
            failed.append(f"{n}: no finished run in {run}")
            continue
        try:
            package(cat, n, run, force=args.force)
        except SystemExit as e:
            failed.append(str(e))
    for f in failed:
        print(f"NOT SHIPPED: {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
