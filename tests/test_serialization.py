"""Every skip mapping inside a model: get_config/from_config, `.keras` and `.weights.h5` round
trips (the shared runners of tests/runners.py, on a ResNet with each mapping variant).

Every model class's own round trips and weights across backends (every mapping variant
included): tests/test_model_runners.py."""

import pytest
from conftest import SKIP_CASES, SKIP_IDS
from runners import MODEL_CASES, ModelCase, run_config_round_trip_test, run_model_saving_test

import zoo

RESNET = next(case for case in MODEL_CASES if case.cls is zoo.ResNet)


@pytest.mark.parametrize("case", SKIP_CASES, ids=SKIP_IDS)
def test_every_mapping_round_trips_config_keras_and_weights_files(case, tmp_path):
    case_id, skip, options = case
    kwargs = {**RESNET.kwargs, "skip": skip, "skip_options": options, "placement": "full_preact"}
    model_case = ModelCase(f"resnet_{case_id}", zoo.ResNet, kwargs, RESNET.input_shape)
    run_config_round_trip_test(model_case)
    run_model_saving_test(model_case, tmp_path)
