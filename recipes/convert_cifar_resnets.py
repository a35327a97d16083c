"""Convert the akamaster CIFAR-10 ResNets (PyTorch, BSD-2-Clause) into zoo presets in zoo/weights/.

    KERAS_BACKEND=jax python -m recipes.convert_cifar_resnets --source ../shared/ref/cifar10-resnets

For each of ResNet-20/32/44/56: import `resnetN.th` (torch.load(weights_only=True)), check the
logits of the reference images against `reference_logits.npz` (max abs <= 1e-4, or stop), and
write `zoo/weights/resnetN_cifar.cifar10/` in the keras-hub preset layout: `config.json`,
`model.weights.h5`, `metadata.json` (reported accuracy, preprocessing, source, licence,
versions, checksums, this command) and `LICENSE` (the source's BSD-2 notice), with
`zoo.save_preset`; then refresh `zoo/weights/index.json`.
"""

import argparse
import shlex
import sys
from pathlib import Path

import keras
import numpy as np

import zoo
from zoo.convert import CIFAR_MEAN, CIFAR_STD, import_cifar_resnet

DEPTHS = (20, 32, 44, 56)
SOURCE = "github.com/akamaster/pytorch_resnet_cifar10 (Yerlan Idelbayev), BSD-2-Clause"
TOLERANCE = 1e-4


def normalise(images_uint8, mean, std):
    return ((images_uint8.astype("float32") / 255.0 - np.asarray(mean, "float32")) / np.asarray(std, "float32")).astype("float32")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="../shared/ref/cifar10-resnets", help="folder with resnetN.th, LICENSE, reference_logits.npz")
    parser.add_argument("--out", default=str(zoo.presets.REPO_WEIGHTS), help="where the preset folders go (default: the shipped zoo/weights)")
    parser.add_argument("--depths", type=int, nargs="+", default=list(DEPTHS))
    args = parser.parse_args(argv)
    source = Path(args.source)
    reference = np.load(source / "reference_logits.npz")
    mean, std = [round(float(v), 6) for v in reference["mean"]], [round(float(v), 6) for v in reference["std"]]
    if not (np.allclose(mean, CIFAR_MEAN) and np.allclose(std, CIFAR_STD)):
        sys.exit(f"reference_logits.npz has mean {mean}, std {std}; zoo.convert.CIFAR_MEAN/STD disagree.")
    x = normalise(reference["images_uint8_nhwc"], mean, std)
    command = f"KERAS_BACKEND={keras.backend.backend()} python -m recipes.convert_cifar_resnets " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    for depth in args.depths:
        model, report = import_cifar_resnet(source / f"resnet{depth}.th")
        logits = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))
        diff = float(np.max(np.abs(logits - reference[f"logits_resnet{depth}"])))
        if diff > TOLERANCE:
            sys.exit(f"resnet{depth}: logits differ from the reference by {diff:.3g} > {TOLERANCE}; not shipping.")
        name = f"resnet{depth}_cifar.cifar10"
        metadata = {
            "arch_overrides": {"downsample": "pad", "placement": "original"},
            "dataset": "cifar10",
            "accuracy": {"cifar10_test": round(float(report.metadata["best_prec1"]) / 100, 4), "reported_by": "source (best_prec1)"},
            "preprocessing": {"rescale": 1 / 255, "mean": mean, "std": std},
            "source": SOURCE,
            "source_file": f"resnet{depth}.th",
            "license": "BSD-2-Clause",
            "license_file": "LICENSE",
            "conversion_check": {"reference_logits_max_abs_diff": diff, "images": int(x.shape[0])},
            "command": command,
        }
        folder = zoo.save_preset(model, Path(args.out) / name, metadata, overwrite=True, extra_files={"LICENSE": source / "LICENSE"})
        size = sum(f.stat().st_size for f in folder.iterdir())
        print(f"{name}: {len(report.loaded)} weights, logits max abs diff {diff:.2e}, accuracy "
              f"{metadata['accuracy']['cifar10_test']}, {size / 1e6:.2f} MB -> {folder}")
    if Path(args.out).resolve() == zoo.presets.REPO_WEIGHTS:
        zoo.presets.write_index(args.out)


if __name__ == "__main__":
    main()
