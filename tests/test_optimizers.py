"""Coupled weight decay (issue #15, item 2): zoo.training.SGD / Adam equal PyTorch's optimizers
with `weight_decay`, step for step, on every backend; Keras' decoupled form is not that."""

import keras
import numpy as np
import pytest
import torch
from conftest import to_numpy

import zoo
from recipes.train import load_config, make_optimizer

W0 = np.array([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]], dtype="float32")
GRADS = [np.array([[0.1, 0.2], [-0.3, 0.05], [0.0, -0.4]], dtype="float32") * (k + 1) for k in range(4)]


def keras_trajectory(optimizer):
    w = keras.Variable(W0.copy())
    out = []
    for g in GRADS:
        optimizer.apply([keras.ops.convert_to_tensor(g)], [w])
        out.append(to_numpy(w).copy())
    return out


def torch_trajectory(cls, **kwargs):
    w = torch.nn.Parameter(torch.tensor(W0.copy()))
    optimizer = cls([w], **kwargs)
    out = []
    for g in GRADS:
        w.grad = torch.tensor(g)
        optimizer.step()
        out.append(w.detach().numpy().copy())
    return out


@pytest.mark.parametrize("nesterov", [False, True])
def test_coupled_sgd_is_torch_sgd_with_weight_decay(nesterov):
    ours = keras_trajectory(zoo.training.SGD(learning_rate=0.1, momentum=0.9, nesterov=nesterov, coupled_weight_decay=0.05))
    theirs = torch_trajectory(torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.05)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Keras' own weight_decay (decoupled) is a different optimizer: it is not what torch does.
    keras_decoupled = keras_trajectory(keras.optimizers.SGD(learning_rate=0.1, momentum=0.9, nesterov=nesterov,
                                                            weight_decay=0.05))
    assert np.abs(keras_decoupled[-1] - theirs[-1]).max() > 1e-3


def test_coupled_adam_is_torch_adam_with_weight_decay():
    ours = keras_trajectory(zoo.training.Adam(learning_rate=0.01, coupled_weight_decay=0.1, epsilon=1e-8))
    theirs = torch_trajectory(torch.optim.Adam, lr=0.01, weight_decay=0.1, eps=1e-8)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_coupled_optimizer_serializes_and_rejects_a_negative_decay():
    opt = zoo.training.SGD(learning_rate=0.1, momentum=0.9, coupled_weight_decay=1e-4)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is zoo.training.SGD and again.coupled_weight_decay == 1e-4
    with pytest.raises(ValueError, match="coupled_weight_decay"):
        zoo.training.SGD(coupled_weight_decay=-1.0)


def test_recipe_config_chooses_the_form_of_weight_decay():
    coupled = load_config(None, ["optimizer.weight_decay_mode=coupled", "optimizer.weight_decay=1e-4"])
    opt = make_optimizer(coupled, steps_per_epoch=10)
    assert isinstance(opt, zoo.training.SGD) and opt.coupled_weight_decay == 1e-4 and not opt.weight_decay
    default = make_optimizer(load_config(None, []), steps_per_epoch=10)
    assert type(default) is not zoo.training.SGD and default.weight_decay == 5e-4
    with pytest.raises(ValueError, match="coupled.*AdamW"):
        adamw = 'optimizer={"name": "adamw", "learning_rate": 0.001, "weight_decay_mode": "coupled"}'
        make_optimizer(load_config(None, [adamw]), steps_per_epoch=10)
    with pytest.raises(ValueError, match="weight_decay_mode='l2'"):
        make_optimizer(load_config(None, ["optimizer.weight_decay_mode=l2"]), steps_per_epoch=10)


def test_coupled_sgd_trains_a_model_inside_drop_path_freeze():
    from conftest import tiny_resnet

    model = tiny_resnet(drop_path_rate=0.2)
    trainer = zoo.training.DropPathFreeze(model, granularity="batch", seed=3)
    trainer.compile(optimizer=zoo.training.SGD(0.05, momentum=0.9, coupled_weight_decay=1e-3),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).standard_normal((16, 8, 8, 3)).astype("float32")
    y = np.arange(16) % 3
    history = trainer.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
