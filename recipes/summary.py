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
    x = np.zeros((1, *model.image_shape), "float32")
    out = model.predict(x, verbose=0)
    print(
        f"[{keras.backend.backend():>10}] {args.model}: skip={model.skip} placement={model.placement} "
        f"units={len(model.residual_units)} trainable params={trainable:,} "
        f"all params={model.count_params():,} output={tuple(out.shape)}"
    )


if __name__ == "__main__":
    main()
