"""Measure the composed skip path of every entangled mapping, as built and raw.

    python -m recipes.skip_path [--out docs/results/skip_path] [--quick]

For ResNet-20/56/110/1001 (option A shortcuts, so the path runs through the whole network),
ViT-S (24 units), a 32-unit ResidualMLP and the recurrent cells over their sequence length,
and for `orthogonal`, `sparse` and `correlation` with their default (network-level)
construction and with the raw per-unit one (`depth_scaled=False`, `shared_permutation=False`,
sigma=1 for sparse), writes the extreme singular values of the composed path; and for
ResNet-110 (original and full_preact placements) the stream RMS at initialisation of every
mapping against identity's. Deterministic (fixed seeds): one run is the result. JSON,
Markdown and a PNG in --out.
"""

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np

import zoo
from zoo import analysis

ENTANGLED = ("orthogonal", "sparse", "correlation")
RAW = {
    "orthogonal": {},
    "sparse": {"sigma": 1.0, "depth_scaled": False, "shared_permutation": False},
    "correlation": {"depth_scaled": False},
}


def path_cases(quick):
    depths = (20, 56) if quick else (20, 56, 110, 1001)
    for depth in depths:
        yield f"resnet{depth}_cifar", lambda skip, opts, d=depth: analysis.skip_path(
            zoo.get_model(f"resnet{d}_cifar", skip=skip, skip_options=opts, downsample="pad", input_shape=(8, 8, 1))
        )
    if not quick:
        yield "vit_small_patch16_224", lambda skip, opts: analysis.skip_path(
            zoo.get_model("vit_small_patch16_224", skip=skip, skip_options=opts, input_shape=(32, 32, 3), num_classes=10)
        )
    yield "residual_mlp_32x64", lambda skip, opts: analysis.skip_path(
        zoo.ResidualMLP(depth=32, width=64, input_shape=(16,), num_classes=3, skip=skip, skip_options=opts)
    )
    for preset in ("resrnn_fmnist_rows", "resrnn_mnist1d"):
        yield f"{preset} (M^T over time)", lambda skip, opts, p=preset: analysis.recurrent_skip_path(
            zoo.get_model(p, skip=skip, skip_options=opts).residual_units[0]
        )


def measure_paths(quick):
    rows = []
    for name, build in path_cases(quick):
        for skip in ENTANGLED:
            for construction, opts in (("network", {}), ("raw", RAW[skip])):
                if skip == "orthogonal" and construction == "raw":
                    continue  # one construction: orthogonal products are orthogonal
                s = np.linalg.svd(build(skip, opts), compute_uv=False)
                # Below ~1e-12 of the largest, a float64 SVD resolves nothing: not reported.
                smallest = float(s.min()) if s.min() > 1e-12 * s.max() else None
                rows.append({"model": name, "skip": skip, "construction": construction,
                             "sigma_min": smallest, "sigma_max": float(s.max())})
                low = "unresolved" if smallest is None else f"{smallest:.3g}"
                print(f"  {name:36s} {skip:12s} {construction:8s} sigma in [{low}, {s.max():.3g}]", flush=True)
                keras.backend.clear_session()
    return rows


def measure_streams(quick):
    depth = 56 if quick else 110
    x = np.random.default_rng(0).standard_normal((16, 8, 8, 1)).astype("float32")
    rows = []
    for placement in ("original", "full_preact"):
        streams = {}
        for skip in [s for s in zoo.list_skips() if s != "blend"]:  # blend: identity -> identity by default
            keras.utils.set_random_seed(0)
            model = zoo.get_model(f"resnet{depth}_cifar", skip=skip, placement=placement, downsample="pad",
                                  input_shape=(8, 8, 1))
            streams[skip] = np.array(analysis.stream_rms(model, x, training=True))
            keras.backend.clear_session()
        for skip, rms in streams.items():
            ratio = rms / streams["identity"]
            rows.append({"model": f"resnet{depth}_cifar", "placement": placement, "skip": skip,
                         "last_unit_rms": float(rms[-1]), "ratio_min": float(ratio.min()),
                         "ratio_max": float(ratio.max())})
        print(f"  streams: {placement} done", flush=True)
    return rows


def write(out, paths, streams, meta):
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "paths": paths, "streams": streams}, indent=1) + "\n")
    lines = [f"# Composed skip paths ({meta['date']}, {meta['backend']}, keras {meta['keras']})", "",
             "Singular values of the composed skip path (`zoo.analysis.skip_path`; option A transitions). "
             "`network`: the default construction; `raw`: the former per-unit matrices (sparse with "
             "sigma=1, depth_scaled=False, shared_permutation=False; correlation with depth_scaled=False).", "",
             "| model | skip | construction | sigma_min | sigma_max |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['skip']} | {r['construction']} | "
              f"{'below float64 resolution' if r['sigma_min'] is None else format(r['sigma_min'], '.3g')} | "
              f"{r['sigma_max']:.3g} |" for r in paths]
    lines += ["", f"Stream RMS at initialisation (train-mode BN, 16 inputs of 8x8), {streams[0]['model']}: "
              "every unit's RMS over identity's at the same unit:", "",
              "| placement | skip | last unit RMS | min ratio | max ratio |", "|---|---|---|---|---|"]
    lines += [f"| {r['placement']} | {r['skip']} | {r['last_unit_rms']:.3g} | {r['ratio_min']:.3g} | {r['ratio_max']:.3g} |"
              for r in streams]
    (out / "results.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    models = list(dict.fromkeys(r["model"] for r in paths))
    for skip, color in zip(ENTANGLED, ("tab:blue", "tab:orange", "tab:green")):
        for construction, style in (("network", "o"), ("raw", "x")):
            ys = [next((r["sigma_max"] for r in paths if r["model"] == m and r["skip"] == skip
                        and r["construction"] == construction), np.nan) for m in models]
            if not np.all(np.isnan(ys)):
                ax.plot(range(len(models)), ys, style, color=color, label=f"{skip} ({construction})")
    ax.axhline(5.0, color="gray", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xticks(range(len(models)), models, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("largest singular value of the composed skip path")
    ax.set_title("Composed skip path: network-level construction vs raw per-unit matrices")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "skip_path.png", dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/results/skip_path")
    parser.add_argument("--quick", action="store_true", help="shallow models only (a smoke run)")
    args = parser.parse_args(argv)
    start = time.time()
    print("composed skip paths", flush=True)
    paths = measure_paths(args.quick)
    print("streams at initialisation", flush=True)
    streams = measure_streams(args.quick)
    meta = {"date": time.strftime("%Y-%m-%d"), "backend": keras.backend.backend(), "keras": keras.__version__,
            "command": "python -m recipes.skip_path" + (" --quick" if args.quick else ""),
            "seconds": round(time.time() - start, 1)}
    write(Path(args.out), paths, streams, meta)
    print(f"wrote {args.out} in {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
