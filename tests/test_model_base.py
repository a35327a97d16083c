"""One model base (issue #14, item 2): every model class derives from ResidualModel, which holds
the contract once (residual units, head, forward_features/forward_head, reset_classifier,
get_config = the constructor arguments, from_config, dtype, preprocessing) with one input name."""

import inspect

import keras
import numpy as np
import pytest
from conftest import to_numpy

import zoo
from zoo import preprocessing
from zoo.models.base import INPUT_NAME, ResidualModel
from zoo.registry import registered_entries

CONTRACT = ("residual_units", "head", "feature_extractor", "forward_features", "forward_head", "reset_classifier",
            "get_config", "from_config", "check_input_rank", "__call__", "call", "preprocessing", "preprocess")

# one small model of every class
SMALL = {
    "resnet": ("resnet20_cifar", dict(input_shape=(8, 8, 3))),
    "vit": ("vit_tiny_patch4_28", dict(depth=1, embed_dim=16, num_heads=2, input_shape=(8, 8, 1))),
    "vit_avg": ("vit_tiny_patch4_28", dict(depth=1, embed_dim=16, num_heads=2, input_shape=(8, 8, 1),
                                           global_pool="avg", class_token=False)),
    "mlp": ("resmlp_fmnist_d4", dict(depth=2, width=8, input_shape=(8, 8, 1))),
    "rnn_over_time": ("resrnn_mnist1d", dict(units=8, input_shape=(4, 1))),
    "rnn_over_depth": ("resgru_mnist1d", dict(units=8, depth=1, input_shape=(4, 1))),
}


def small(family, **overrides):
    name, args = SMALL[family]
    return zoo.get_model(name, **{**args, **overrides})


def example(model, batch=2, seed=0):
    shape = tuple(4 if d is None else d for d in model.input_shape[1:])
    return np.random.default_rng(seed).normal(size=(batch, *shape)).astype("float32")


def model_classes():
    return sorted({e.model_class() for e in registered_entries().values()}, key=lambda c: c.__name__)


def test_every_model_class_derives_from_the_base_and_leaves_the_contract_to_it():
    classes = model_classes()
    assert {c.__name__ for c in classes} == {"ResNet", "ViT", "ResidualMLP", "ResidualRNN", "ResidualStackedRNN"}
    for cls in classes:
        assert issubclass(cls, ResidualModel), cls
        for klass in cls.__mro__[: cls.__mro__.index(ResidualModel)]:
            assert not set(CONTRACT) & set(vars(klass)), (cls, klass, set(CONTRACT) & set(vars(klass)))


@pytest.mark.parametrize("family", SMALL)
def test_get_config_is_the_constructor_arguments_and_from_config_rebuilds_it(family):
    model = small(family)
    config = model.get_config()
    parameters = set(inspect.signature(type(model).__init__).parameters) - {"self", "kwargs"}
    assert set(config) == parameters | {"trainable"}
    rebuilt = type(model).from_config(config)
    assert rebuilt.get_config() == config
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model)).get_config() == config


@pytest.mark.parametrize("family", SMALL)
def test_one_input_name_and_forward_features_then_head_is_the_model(family):
    model = small(family)
    assert model.inputs[0].name == INPUT_NAME == "inputs"
    assert list(inspect.signature(model.forward_features).parameters)[0] == INPUT_NAME
    x = example(model)
    features = model.forward_features(x)
    np.testing.assert_allclose(to_numpy(model.forward_head(features)), to_numpy(model(x)), atol=1e-5)
    assert to_numpy(model.feature_extractor()(x)).shape == to_numpy(features).shape
    assert model.head is model.get_layer("head")
    assert len(model.residual_units) >= 1 and all(isinstance(u, keras.layers.Layer) for u in model.residual_units)


@pytest.mark.parametrize("family", SMALL)
def test_reset_classifier_keeps_the_trunk_and_gives_a_new_head_or_the_features(family):
    model = small(family)
    x = example(model)
    before = to_numpy(model(x))
    trunk = {w.path: to_numpy(w) for w in model.weights if not w.path.startswith("head/")}

    five = model.reset_classifier(5)
    assert type(five) is type(model) and five is not model
    assert five.output_shape[-1] == 5 and five.num_classes == 5 and five.get_config()["num_classes"] == 5
    for w in five.weights:
        if not w.path.startswith("head/"):
            np.testing.assert_array_equal(to_numpy(w), trunk[w.path], err_msg=w.path)
    np.testing.assert_array_equal(to_numpy(model(x)), before)  # the original is unchanged
    assert model.num_classes == before.shape[-1] and model.get_config()["num_classes"] == before.shape[-1]

    features = model.reset_classifier(0)
    assert features.head is None
    pooled = keras.Model(model.input, model.head.input)(x)  # what the head sees
    np.testing.assert_allclose(to_numpy(features(x)), to_numpy(pooled), atol=1e-5)
    np.testing.assert_allclose(to_numpy(features.forward_head(features.forward_features(x))), to_numpy(pooled), atol=1e-5)


def test_dtype_is_a_constructor_argument_that_reaches_every_layer_and_survives_saving(tmp_path):
    before = keras.config.dtype_policy().name
    model = zoo.models.ResNet(stage_depths=(1,), stage_widths=(4,), input_shape=(8, 8, 3), dtype="mixed_bfloat16")
    assert keras.config.dtype_policy().name == before
    assert model.dtype_policy.name == "mixed_bfloat16" and model.get_config()["dtype"] == "mixed_bfloat16"
    assert {layer.dtype_policy.name for layer in model.layers} == {"mixed_bfloat16"}
    assert {w.dtype for w in model.weights} == {"float32"}
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.get_layer("head").compute_dtype == "bfloat16"
    x = example(model)
    np.testing.assert_allclose(to_numpy(loaded(x)).astype("float32"), to_numpy(model(x)).astype("float32"), atol=1e-6)


def test_preprocessing_of_shipped_weights_is_attached_and_survives_config_and_keras_files(tmp_path):
    model = zoo.get_model("resnet20_cifar.cifar10")
    metadata = zoo.presets.get_preset_metadata("resnet20_cifar.cifar10")["preprocessing"]
    mean, std = preprocessing.NORMALIZATION["imagenet"]
    assert model.preprocessing == {"rescale": pytest.approx(1 / 255), "mean": pytest.approx(list(mean)),
                                   "std": pytest.approx(list(std)), "input_shape": [32, 32, 3]}
    assert metadata["mean"] == pytest.approx(model.preprocessing["mean"])
    raw = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3)).astype("uint8")
    expected = ((raw / 255.0 - np.array(mean)) / np.array(std)).astype("float32")
    np.testing.assert_allclose(model.preprocess(raw), expected, atol=1e-5)

    assert type(model).from_config(model.get_config()).preprocessing == model.preprocessing
    assert model.reset_classifier(3).preprocessing == model.preprocessing
    model.save(tmp_path / "m.keras")
    assert keras.saving.load_model(tmp_path / "m.keras").preprocessing == model.preprocessing
    # a stem adapted to gray images takes the average of the per-channel values
    gray = zoo.get_model("resnet20_cifar.cifar10", input_shape=(32, 32, 1), num_classes=2)
    assert gray.preprocessing["mean"] == pytest.approx([float(np.mean(mean))])
    # weights trained on Fashion-MNIST carry that data set's statistics
    fmnist = zoo.get_model("resnet20_cifar.fmnist_identity")
    assert fmnist.preprocessing["mean"] == pytest.approx(list(preprocessing.NORMALIZATION["fashion_mnist"][0]))


def test_a_model_without_weights_has_no_preprocessing_until_given_one():
    model = small("mlp")
    assert model.preprocessing is None and model.get_config()["preprocessing"] is None
    with pytest.raises(ValueError, match="no preprocessing config"):
        model.preprocess(np.zeros((1, 8, 8, 1), "uint8"))
    model.preprocessing = {"rescale": 1 / 255, "mean": [0.5], "std": [0.25]}
    assert model.get_config()["preprocessing"] == {"rescale": 1 / 255, "mean": [0.5], "std": [0.25]}
    np.testing.assert_allclose(model.preprocess(np.full((1, 8, 8, 1), 255, "uint8")), 2.0, atol=1e-6)
    with pytest.raises(ValueError, match=r"std=.*> 0"):
        model.preprocessing = {"rescale": 1.0, "mean": [0.0], "std": [0.0]}
    with pytest.raises(ValueError, match="3 values for inputs of 1 channels"):
        model.preprocessing = {"rescale": 1.0, "mean": [0.0, 0.0, 0.0], "std": [1.0]}
    with pytest.raises(ValueError, match="rescale"):
        zoo.get_model("resmlp_fmnist_d4", preprocessing={"rescale": -1, "mean": [0.0], "std": [1.0]})


def test_the_data_sets_and_converters_take_their_constants_from_one_place():
    from zoo.convert import timm_resnet, timm_vit
    from zoo.convert.cifar_resnet import CIFAR_MEAN

    assert CIFAR_MEAN == timm_resnet.IMAGENET_MEAN == preprocessing.NORMALIZATION["imagenet"][0]
    assert timm_vit.VIT_MEAN == preprocessing.NORMALIZATION["inception"][0]
    data = zoo.data.Dataset("d", np.zeros((1, 2, 2, 1), "uint8"), np.zeros(1, "int32"), np.zeros((1, 2, 2, 1), "uint8"),
                            np.zeros(1, "int32"), 2, "test", *preprocessing.NORMALIZATION["fashion_mnist"])
    x = np.arange(4, dtype="uint8").reshape(1, 2, 2, 1) * 60
    np.testing.assert_allclose(preprocessing.apply(data.preprocessing, x), data.normalize(x), atol=1e-6)
