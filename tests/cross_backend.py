"""Run under another KERAS_BACKEND: rebuild each model in a folder from its config, load its
`.weights.h5`, and print the max abs difference to the recorded outputs, as JSON.

A manifest case may name its model class ("class", Keras' registered name, default
"zoo>ResNet") and its inputs file ("inputs", default inputs.npy).

Used by runners.run_cross_backend_test in a subprocess: python tests/cross_backend.py DIR
"""

import json
import sys
from pathlib import Path

import keras
import numpy as np

import zoo

folder = Path(sys.argv[1])
manifest = json.loads((folder / "manifest.json").read_text())
report = {"backend": keras.backend.backend(), "diffs": {}}
for case in manifest:
    model_class = keras.saving.get_registered_object(case.get("class", "zoo>ResNet"))
    model = model_class.from_config(case["config"])
    inputs = np.load(folder / case.get("inputs", "inputs.npy"))
    model.load_weights(folder / case["weights"])
    out = np.asarray(keras.ops.convert_to_numpy(model(inputs, training=False)))
    report["diffs"][case["id"]] = float(np.max(np.abs(out - np.load(folder / case["outputs"]))))
print("RESULT " + json.dumps(report))
