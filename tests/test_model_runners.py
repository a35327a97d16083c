"""Every zoo model class through the shared runners (tests/runners.py): build and forward, the
model contract, config, `.keras` and `.weights.h5` round trips, a DropPathFreeze step, and
weights across backends. The classes come from the registry, so none is left out."""

import keras
import numpy as np
import pytest
from conftest import SKIP_CASES, tiny_resnet
from runners import (
    MODEL_CASES,
    MODEL_VARIANTS,
    cases_of,
    cross_backend_case,
    model_classes,
    run_cross_backend_test,
    run_drop_path_freeze_test,
    run_model_saving_test,
    run_model_test,
    trained_a_little,
)

import zoo

CLASSES = model_classes()
CLASS_IDS = [c.__name__ for c in CLASSES]


def the_case(cls):
    cases = cases_of(cls)
    assert cases, f"model class {cls.__name__} has no case in tests/runners.py MODEL_CASES: add a tiny one"
    return cases[0]


def test_every_model_class_has_a_runner_case():
    assert {zoo.ResNet, zoo.ViT, zoo.ResidualMLP, zoo.ResidualRNN, zoo.ResidualStackedRNN} <= set(CLASSES)
    missing = [c.__name__ for c in CLASSES if not cases_of(c)]
    assert not missing, f"model classes without a case in tests/runners.py MODEL_CASES: {missing}"
    assert {case.cls for case in MODEL_CASES} <= set(CLASSES)


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_build_forward_contract_and_config(cls):
    run_model_test(the_case(cls))


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_keras_and_weights_files_round_trip_bit_identical(cls, tmp_path):
    run_model_saving_test(the_case(cls), tmp_path)


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_drop_path_freeze_step_changes_only_what_it_should(cls):
    run_drop_path_freeze_test(the_case(cls))


def test_weights_saved_here_load_on_the_next_backend(tmp_path):
    """Every model class, the families' variants, and a ResNet with each skip mapping variant:
    one subprocess on the next backend (jax -> tensorflow -> torch -> jax) loads them all and
    reproduces the outputs."""
    manifest = []
    for case in [the_case(cls) for cls in CLASSES] + MODEL_VARIANTS:
        manifest.append(cross_backend_case(case.id, trained_a_little(case.build()), case.inputs(), tmp_path))
    x = MODEL_CASES[0].inputs()
    for case_id, skip, options in SKIP_CASES:
        model = trained_a_little(tiny_resnet(skip=skip, skip_options=options, placement="original"))
        manifest.append(cross_backend_case(f"resnet_{case_id}", model, x, tmp_path))
    run_cross_backend_test(manifest, tmp_path)
