"""Residual Alignment analysis of a zoo model: metrics.json and PNG plots (SPEC section 6).

    python -m recipes.analyze --model resmlp_fmnist_d8 --weights m.weights.h5 --data fmnist \
        --num-inputs 4 --k 16 --out runs/ra_d8
    python -m recipes.analyze --model resnet56_cifar --data random --num-inputs 1 --k 4 \
        --method subspace --out runs/ra_r56

--weights takes a .weights.h5 (loaded into the preset built with --model and --skip) or a
.keras file (the whole model; --model then only names the run). Data: `fmnist` (the IDX files
of /usr/share/datasets/fashion-mnist, or --data-dir), `digits` (scikit-learn's 8x8 digits),
`random` (Gaussian inputs of the model's input shape, random labels).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from zoo.data import read_idx  # the one IDX reader (also used by zoo.data.load_fashion_mnist)

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


def load_fashion_mnist(split="train", data_dir=FMNIST_DIR):
    """(images (N, 28, 28, 1) float32 in [0, 1], labels (N,) int32) from the IDX files."""
    prefix = "train" if split == "train" else "t10k"
    folder = Path(data_dir)
    images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    return (images.astype("float32") / 255.0)[..., None], labels.astype("int32")


def load_inputs(data, model, num_inputs, seed=0, data_dir=FMNIST_DIR):
    """`num_inputs` inputs shaped for `model` and their labels."""
    shape = tuple(int(d) for d in model.input_shape[1:])
    rng = np.random.default_rng(seed)
    if data == "random":
        x = rng.standard_normal((num_inputs,) + shape).astype("float32")
        y = rng.integers(0, max(int(getattr(model, "num_classes", 0) or 1), 1), num_inputs).astype("int32")
        return x, y
    if data == "fmnist":
        x, y = load_fashion_mnist("test", data_dir)
    elif data == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x, y = (digits.images / 16.0).astype("float32"), digits.target.astype("int32")
    else:
        raise ValueError(f"Received --data {data!r}; expected fmnist, digits or random.")
    pick = rng.choice(len(x), size=num_inputs, replace=False)
    x, y = x[pick], y[pick]
    if int(np.prod(x.shape[1:])) != int(np.prod(shape)):
        raise ValueError(
            f"--data {data} gives inputs of shape {x.shape[1:]}, the model takes {shape}; "
            "pick a model with that input size (e.g. --input-shape) or --data random."
        )
    return x.reshape((num_inputs,) + shape), y


def build_model(name, weights=None, skip=None, input_shape=None):
    import keras

    import zoo

    if weights and str(weights).endswith(".keras"):
        return keras.saving.load_model(weights)
    overrides = {}
    if skip:
        overrides["skip"] = skip
    if input_shape:
        overrides["input_shape"] = tuple(input_shape)
    model = zoo.get_model(name, **overrides)
    if weights:
        model.load_weights(weights)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="registered model name (zoo.list_models())")
    parser.add_argument("--weights", help=".weights.h5 for the preset, or a whole-model .keras file")
    parser.add_argument("--skip", help="skip mapping of the preset (default: the preset's)")
    parser.add_argument("--input-shape", type=int, nargs="+", help="override the preset's input shape")
    parser.add_argument("--data", default="random", choices=("fmnist", "digits", "random"))
    parser.add_argument("--data-dir", default=FMNIST_DIR, help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--num-inputs", type=int, default=4)
    parser.add_argument("--k", type=int, default=8, help="singular triplets per unit")
    parser.add_argument("--method", default="auto", choices=("auto", "dense", "subspace"))
    parser.add_argument("--max-iters", type=int, default=200, help="subspace iterations at most")
    parser.add_argument("--tol", type=float, default=1e-7, help="subspace convergence tolerance")
    parser.add_argument("--rank-tol", type=float, default=1e-2, help="RA3: rank counts sigma > rank_tol * sigma_1")
    parser.add_argument("--units", type=int, nargs="+", help="analyse only these unit indices")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--out", required=True, help="output folder (metrics.json, *.png)")
    args = parser.parse_args(argv)

    from zoo import analysis

    def log(line):
        print(f"[analyze {time.strftime('%H:%M:%S')}] {line}", flush=True)

    start = time.time()
    model = build_model(args.model, args.weights, args.skip, args.input_shape)
    log(f"model {model.name}: {len(model.residual_units)} residual units, {model.count_params():,} parameters")
    x, y = load_inputs(args.data, model, args.num_inputs, seed=args.seed, data_dir=args.data_dir)
    log(f"{len(x)} inputs from {args.data}, shape {x.shape[1:]}")
    report = analysis.analyze_model(
        model, x, y, k=args.k, method=args.method, rank_tol=args.rank_tol, max_iters=args.max_iters,
        tol=args.tol, seed=args.seed, units=args.units, log=log,
    )
    report["data"] = args.data
    report["weights"] = args.weights
    written = analysis.write_report(report, args.out, plots=not args.no_plots)
    summary = {
        "ra1_variance_share": report["ra1"]["variance_share"],
        "ra1_step_cv": report["ra1"]["step_cv"],
        "ra2_within_unit": report["ra2"]["within_unit"],
        "ra2_across_units": report["ra2"]["across_units"],
        "ra3_mean_rank": report["ra3"]["mean_rank"],
        "ra4_mean_sigma_1": report["ra4"]["mean_sigma_1"],
        "refinement_mean_cos": report["refinement"]["mean_cos"],
    }
    log("summary " + json.dumps(summary))
    log(f"wrote {', '.join(str(p) for p in written)} in {time.time() - start:.1f}s")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
