"""Build a preset on the current backend and print its summary and parameter count.

    KERAS_BACKEND=torch python -m recipes.summary resnet56_cifar --skip sparse
"""

import argparse
import json

import keras
import numpy as np

import zoo


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help=f"a registered model, one of: {', '.join(zoo.list_models())}")
    parser.add_argument("--skip", default=None, help=f"skip mapping, one of: {', '.join(zoo.list_skips())}")
    parser.add_argument("--skip-options", default="{}", help='JSON options of the mapping, e.g. \'{"k": 4}\'')
    parser.add_argument("--full", action="store_true", help="print the layer-by-layer summary")
    args = parser.parse_args(argv)
    overrides = {} if args.skip is None else {"skip": args.skip, "skip_options": json.loads(args.skip_options)}
    model = zoo.get_model(args.model, **overrides)
    if args.full:
        model.summary()
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    # every family: ResNets and ViTs take images, the MLPs flattened images, the RNNs sequences
    # (a length of None, as the adding problem's, is given 8 steps here)
    x = np.zeros((1, *(8 if d is None else d for d in model.input_shape[1:])), "float32")
    out = model.predict(x, verbose=0)
    placement = getattr(model, "placement", None)
    line = (
        f"[{keras.backend.backend():>10}] {args.model}: skip={model.skip}"
        + (f" placement={placement}" if placement else "")
        + f" units={len(model.residual_units)} trainable params={trainable:,} "
        f"all params={model.count_params():,} output={tuple(out.shape)}"
    )
    print(line)
    return line


if __name__ == "__main__":
    main()
