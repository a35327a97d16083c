"""The timm-style registry: get_model, list_models, arch.tag names, user extensions."""

import keras
import numpy as np
import pytest
from conftest import tiny_resnet, to_numpy

import zoo


def test_list_models_filters_by_pattern():
    cifar = zoo.list_models("resnet*_cifar")
    assert cifar == sorted(
        f"resnet{d}_cifar" for d in (20, 32, 44, 56, 110, 164, 1001)
    )
    assert set(zoo.list_models("resnet*")) >= {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200"}
    assert zoo.list_models("no_such_*") == []
    assert set(zoo.list_models(family="resnet")) == set(zoo.list_models("resnet*"))


def test_get_model_applies_overrides():
    model = zoo.get_model(
        "resnet20_cifar", skip="sparse", skip_options={"k": 4, "seed": 0}, num_classes=5,
        input_shape=(28, 28, 1), placement="full_preact", downsample="pad", drop_path_rate=0.1,
    )
    assert isinstance(model, zoo.ResNet)
    assert model.skip == "sparse" and model.num_classes == 5 and model.placement == "full_preact"
    assert all(u.skip.k == 4 for u in model.residual_units)
    assert model.name == "resnet20_cifar"


def test_presets_are_data():
    from zoo.models.resnet import RESNET_PRESETS

    builder, defaults = RESNET_PRESETS["resnet164_cifar"]
    assert defaults == {"depth": 164, "placement": "full_preact", "shared_first_preact": True}


def test_unknown_model_name_lists_the_closest():
    with pytest.raises(zoo.UnknownNameError) as err:
        zoo.get_model("resnet56_cifr")
    message = str(err.value)
    assert "Unknown model 'resnet56_cifr'" in message
    assert "Did you mean: 'resnet56_cifar'" in message
    with pytest.raises(KeyError):
        zoo.get_model("resnt50")


def test_unknown_argument_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown argument of model 'resnet20_cifar' 'skip_option'.*'skip_options'"):
        zoo.get_model("resnet20_cifar", skip_option={"k": 2})


def test_unknown_weights_tag_is_an_error_not_random_weights():
    with pytest.raises(zoo.UnknownNameError, match=r"weights tag"):
        zoo.get_model("resnet20_cifar.no_such_weights")


def test_register_model_adds_a_preset():
    zoo.register_model("tiny_test_resnet", zoo.ResNet, family="test", stage_depths=(1,), stage_widths=(4,), input_shape=(8, 8, 3), num_classes=2)
    assert "tiny_test_resnet" in zoo.list_models("tiny_*")
    assert tuple(zoo.get_model("tiny_test_resnet")(np.zeros((1, 8, 8, 3))).shape) == (1, 2)
    with pytest.raises(ValueError, match="'.'"):
        zoo.register_model("bad.name", zoo.ResNet, family="test")


@zoo.register_skip("halfway_test")
class HalfwaySkip(zoo.SkipMapping):
    """A user mapping: M(x) = alpha * x with a learned scalar alpha."""

    def __init__(self, init=0.5, **kwargs):
        super().__init__(**kwargs)
        self.init = init

    def build(self, input_shape):
        self.alpha = self.add_weight(name="alpha", shape=(), initializer=keras.initializers.Constant(self.init))

    def map(self, x):
        return x * self.alpha

    def get_config(self):
        return {**super().get_config(), "init": self.init}


def test_user_mapping_works_in_every_model_and_round_trips(tmp_path):
    assert "halfway_test" in zoo.list_skips()
    model = tiny_resnet(skip="halfway_test", skip_options={"init": 0.25})
    assert all(float(to_numpy(u.skip.alpha)) == 0.25 for u in model.residual_units)
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype("float32")
    path = tmp_path / "user.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))
    with pytest.raises(ValueError, match=r"'init'"):
        tiny_resnet(skip="halfway_test", skip_options={"int": 0.1})
