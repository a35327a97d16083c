"""Run under another KERAS_BACKEND: rebuild each model in a folder from its config, load its
`.weights.h5`, and print the max abs difference to the recorded outputs, as JSON.

Used by test_serialization.py in subprocesses: python tests/cross_backend.py DIR
"""

import json
import sys
from pathlib import Path

import keras
import numpy as np

import zoo

folder = Path(sys.argv[1])
manifest = json.loads((folder / "manifest.json").read_text())
inputs = np.load(folder / "inputs.npy")
report = {"backend": keras.backend.backend(), "diffs": {}}
for case in manifest:
    model = zoo.ResNet.from_config(case["config"])
    model.load_weights(folder / case["weights"])
    out = np.asarray(keras.ops.convert_to_numpy(model(inputs, training=False)))
    report["diffs"][case["id"]] = float(np.max(np.abs(out - np.load(folder / case["outputs"]))))
print("RESULT " + json.dumps(report))
