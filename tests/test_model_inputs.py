"""Bad input is refused clearly and good input works, for every family (issue #14, items 4 and 6
in part): model names that are not strings, inputs of the wrong rank, non-integer seeds, weights
paths that are not there, dtype policies, skip mappings called on a symbolic input, no warning
on a correct call, and recipes.summary on every family."""

import warnings

import keras
import numpy as np
import pytest
from conftest import SKIP_CASES, SKIP_IDS, tiny_resnet, to_numpy

import zoo


def small_models():
    return {
        "resnet": tiny_resnet(),
        "vit": zoo.get_model("vit_tiny_patch4_28", depth=1, embed_dim=16, num_heads=2, input_shape=(8, 8, 1)),
        "mlp": zoo.get_model("resmlp_fmnist_d4", depth=2, width=8, input_shape=(8, 8, 1)),
        "rnn_over_time": zoo.get_model("resrnn_mnist1d", units=8, input_shape=(4, 1)),
        "rnn_over_depth": zoo.get_model("resgru_mnist1d", units=8, depth=1, input_shape=(4, 1)),
    }


@pytest.mark.parametrize("name", [None, 123, ["resnet20_cifar"]], ids=["none", "int", "list"])
def test_model_names_that_are_not_strings_are_a_type_error(name):
    with pytest.raises(TypeError, match="registered model name"):
        zoo.get_model(name)


def test_inputs_of_the_wrong_rank_are_refused_by_every_family():
    for family, model in small_models().items():
        shape = tuple(8 if d is None else d for d in model.input_shape[1:])
        x = np.zeros((2, *shape), "float32")
        assert to_numpy(model(x)).shape[0] == 2, family
        with pytest.raises(ValueError, match=r"rank .*add the batch axis"):
            model(x[0])  # one example without its batch axis (a (40, 1) sequence, a 28x28x1 image)
        with pytest.raises(ValueError, match=r"Received an input of shape .* takes inputs of rank"):
            model(x[None])
        with pytest.raises(ValueError, match=r"rank .*add the batch axis"):
            model.forward_features(x[0])
        with pytest.raises(ValueError, match=r"Received an input of shape .* takes inputs of rank"):
            model.predict(x[0], verbose=0)  # batched by predict: one axis short


def test_a_correct_call_on_a_numpy_array_warns_about_nothing(capfd, tmp_path):
    # the README's tour: model(np.zeros(...)), model.forward_features(x), on a loaded model too
    shipped = zoo.get_model("resnet20_cifar.cifar10")
    shipped.save(tmp_path / "m.keras")
    models = {**small_models(), "shipped": shipped, "loaded": keras.saving.load_model(tmp_path / "m.keras")}
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for family, model in models.items():
            x = np.zeros((2, *(8 if d is None else d for d in model.input_shape[1:])), "float32")
            model(x)
            model(x, training=False)
            model.forward_head(model.forward_features(x))
            model.feature_extractor()(x)
            model.predict(x, verbose=0)
    messages = [str(w.message) for w in caught if "structure" in str(w.message) or "inputs" in str(w.message)]
    assert not messages, messages
    out, err = capfd.readouterr()
    assert "structure of `inputs`" not in out + err


def test_a_seed_that_is_not_an_integer_names_the_option():
    for seed in (1.5, "0", None):
        with pytest.raises(ValueError, match=rf"Received seed={seed!r}; seed must be an integer"):
            zoo.get_model("resnet20_cifar", skip="sparse", skip_options={"k": 2, "seed": seed})


def test_a_weights_path_that_does_not_exist_says_no_such_file(tmp_path):
    for path in (tmp_path / "missing.weights.h5", str(tmp_path / "run" / "preset"), "runs/x/model.weights.h5"):
        with pytest.raises(zoo.errors.WeightsPathError, match="no such file"):
            zoo.get_model("resnet20_cifar", weights=path)


def test_dtype_policy_is_accepted_and_the_global_policy_comes_back():
    before = keras.config.dtype_policy().name
    model = zoo.get_model("resnet20_cifar", dtype="mixed_bfloat16", input_shape=(8, 8, 3))
    assert keras.config.dtype_policy().name == before
    assert {w.dtype for w in model.weights} == {"float32"}
    assert model.get_layer("head").compute_dtype == "bfloat16"
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    assert "bfloat16" in str(model(x).dtype)
    # shipped weights load into a mixed-precision model and give nearly the float32 logits
    mixed = zoo.get_model("resnet20_cifar.cifar10", dtype="mixed_bfloat16")
    exact = zoo.get_model("resnet20_cifar.cifar10")
    x = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype("float32")
    a, b = to_numpy(exact(x)), to_numpy(mixed(x)).astype("float32")
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max()
    with pytest.raises(ValueError, match="dtype='mixed_float64'.*mixed_bfloat16"):
        zoo.get_model("resnet20_cifar", dtype="mixed_float64")
    assert keras.config.dtype_policy().name == before


@pytest.mark.parametrize("case", SKIP_CASES, ids=SKIP_IDS)
def test_every_skip_mapping_runs_on_a_symbolic_input(case):
    _, skip, options = case
    x = keras.Input((8, 8, 4))
    assert tuple(zoo.make_skip(skip, options)(x).shape) == (None, 8, 8, 4)


def test_summary_runs_for_every_family(capsys):
    from recipes import summary

    # one preset of every family (it read ResNet-only attributes)
    for name in ("resnet20_cifar", "vit_tiny_patch4_28", "resmlp_fmnist_d4", "resrnn_adding", "resgru_mnist1d"):
        line = summary.main([name])
        assert f"{name}: skip=" in line and "output=(1, " in line, line
        assert line in capsys.readouterr().out
