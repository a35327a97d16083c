"""The training recipe: runs end to end, resumes a killed run exactly, writes atomically,
and stops on NaN keeping the last good checkpoint."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import to_numpy

import zoo

from recipes import ship
from recipes import train as recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model_args={\"depth\": 8, \"skip\": \"orthogonal\", \"drop_path_rate\": 0.3}",
    "train_subset=192", "test_subset=64", "batch_size=32", "augment=\"crop\"", "pad=1",
]


def tiny_config(**extra):
    config = recipe.load_config(None, TINY)
    return recipe.deep_update(config, extra)


def run_cli(out, *args, epochs=3):
    cmd = [sys.executable, "-m", "recipes.train", "train", "--out", str(out), "--set", *TINY, f"epochs={epochs}", *args]
    env = {**os.environ, "CI": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_metrics_count_the_steps_of_a_plain_trainer_too(tmp_path):
    """... and validation_freq=0 trains without evaluating each epoch (studies on a small
    training subset), the final evaluation still made."""
    plain = tiny_config(epochs=1, trainer={"kind": "plain"}, validation_freq=0)
    data, model = recipe.prepare(plain, tmp_path)
    metrics = recipe.fit(plain, tmp_path, data, model)  # its evaluation recompiles the model afterwards
    assert metrics["optimizer_steps"] == math.ceil(len(data.x_train) / plain["batch_size"])
    last = list(csv.DictReader((tmp_path / "log.csv").open()))[-1]  # Keras' CSVLogger writes NA for a skipped validation
    assert last.get("val_loss") in (None, "NA") and 0.0 <= metrics["test_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="validation_freq=-1; allowed: an epoch count"):
        recipe.fit(recipe.deep_update(plain, {"validation_freq": -1}), tmp_path / "bad", data, model)


def test_train_writes_logs_checkpoints_and_metrics(tmp_path):
    config = tiny_config(epochs=2)
    data, model = recipe.prepare(config, tmp_path)
    metrics = recipe.fit(config, tmp_path, data, model)
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["test_samples"] == 64
    assert json.loads((tmp_path / "metrics.json").read_text())["test_accuracy"] == metrics["test_accuracy"]
    assert len((tmp_path / "log.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs
    assert float(list(csv.DictReader((tmp_path / "log.csv").open()))[-1]["val_loss"]) > 0  # validated every epoch by default
    steps = math.ceil(len(data.x_train) / config["batch_size"])
    assert metrics["optimizer_steps"] == 2 * steps and np.isfinite(metrics["train_loss"])  # what studies compare on
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["epoch"] == 2
    assert (tmp_path / "model.weights.h5").is_file() and (tmp_path / "tensorboard").is_dir()
    meta = zoo.presets.verify_preset(tmp_path / "preset")["metadata"]  # checksummed preset folder
    assert meta["arch"] == "resnet20_cifar" and meta["accuracy"]["digits_test"] == round(metrics["test_accuracy"], 4)

    # recipes.ship packages the run (records, index) and refuses a run below its bar
    cat = {"weights": {"resnet20_cifar.digits_tiny": {"min_accuracy": 0.0}, "resnet20_cifar.digits_high": {"min_accuracy": 1.01}},
           "evaluation": {"test_subset": 60, "seed": 0}}
    folder = ship.package(cat, "resnet20_cifar.digits_tiny", tmp_path, out_dir=tmp_path / "weights")
    shipped = zoo.presets.verify_preset(folder)["metadata"]
    assert shipped["accuracy"]["digits_test"] == round(metrics["test_accuracy"], 4)
    assert shipped["evaluation"]["test_subset"] == 60 and shipped["recipe_config"]["model_args"]["depth"] == 8
    assert shipped["versions"]["keras"] == keras.__version__ and "command" in shipped
    assert list(json.loads((tmp_path / "weights" / "index.json").read_text())["presets"]) == ["resnet20_cifar.digits_tiny"]
    sub = zoo.data.load_dataset("digits").subset(test=60, seed=0)  # what ship evaluated on
    model_acc = float(np.mean(to_numpy(zoo.get_model("resnet20_cifar", depth=8, weights=folder)(sub.normalize(sub.x_test))).argmax(-1) == sub.y_test))
    assert model_acc == shipped["evaluation"]["accuracy"]
    with pytest.raises(SystemExit, match="below the catalogue's bar"):
        ship.package(cat, "resnet20_cifar.digits_high", tmp_path, out_dir=tmp_path / "weights")

    # fine-tune the run's preset on a 5-class task, trunk frozen: a new head, the trunk as it was
    # (the run's model is a CIFAR ResNet of depth 8, so it is asked for as one: weights are
    # checked against the architecture asked for)
    with pytest.raises(zoo.presets.WeightsArchitectureError, match=r"stage_depths=\[1, 1, 1\].*model_args"):
        zoo.get_model("resnet20_cifar", weights=tmp_path / "preset")
    assert recipe.main(["finetune", "--weights", str(tmp_path / "preset"), "--freeze-trunk", "--out",
                        str(tmp_path / "ft"), "--set", 'model_args={"depth": 8}', *TINY[1:], "epochs=1",
                        "classes=[0,1,2,3,4]"]) == 0
    tuned = zoo.get_model("resnet20_cifar", depth=8, weights=tmp_path / "ft" / "preset")
    assert tuned.num_classes == 5 and json.loads((tmp_path / "ft" / "metrics.json").read_text())["test_samples"] > 0
    trained = {w.path: to_numpy(w) for w in model.weights}
    for w in tuned.weights:
        if not w.path.startswith("head/"):
            np.testing.assert_array_equal(to_numpy(w), trained[w.path], err_msg=w.path)


def test_killed_run_resumes_to_the_same_final_weights(tmp_path):
    config = tiny_config(epochs=3)
    data, model = recipe.prepare(config, tmp_path / "whole")
    recipe.fit(config, tmp_path / "whole", data, model)
    whole = [to_numpy(w) for w in model.weights]

    run = run_cli(tmp_path / "killed")
    marker = tmp_path / "killed" / "checkpoints" / "latest.json"
    deadline = time.time() + 300
    while not marker.exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert run.poll() is None, "the run ended before it could be killed:\n" + run.stdout.read()
    os.kill(run.pid, signal.SIGKILL)  # mid-epoch 2
    run.wait()
    resumed = run_cli(tmp_path / "killed", "--resume")
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output[-3000:]
    assert "Resuming" in output

    again = recipe.make_model(config, data)
    again.load_weights(tmp_path / "killed" / "model.weights.h5")
    for a, b in zip(whole, again.weights):
        np.testing.assert_array_equal(to_numpy(b), a, err_msg=b.path)


def test_checkpoint_interrupted_while_written_leaves_the_previous_one(tmp_path, monkeypatch):
    config = tiny_config(epochs=1)
    data, model = recipe.prepare(config, tmp_path)
    recipe.fit(config, tmp_path, data, model)
    folder = tmp_path / "checkpoints"
    trainer = recipe.compile_trainer(config, recipe.make_trainer(config, model), 6)
    trainer.optimizer.build(trainer.trainable_variables)

    def dies_half_way(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(recipe.np, "savez", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        recipe.save_checkpoint(folder, trainer, 2)
    monkeypatch.undo()
    assert json.loads((folder / "latest.json").read_text())["epoch"] == 1
    assert recipe.load_checkpoint(folder, trainer) == 1


def test_corrupted_checkpoint_is_refused(tmp_path):
    config = tiny_config(epochs=1)
    data, model = recipe.prepare(config, tmp_path)
    recipe.fit(config, tmp_path, data, model)
    path = tmp_path / "checkpoints" / "epoch-0001.npz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    trainer = recipe.compile_trainer(config, recipe.make_trainer(config, model), 6)
    trainer.optimizer.build(trainer.trainable_variables)
    before = [to_numpy(v).copy() for v in model.weights]
    with pytest.raises(ValueError, match="corrupted"):
        recipe.load_checkpoint(tmp_path / "checkpoints", trainer)
    for v, b in zip(model.weights, before):
        np.testing.assert_array_equal(to_numpy(v), b)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_config(epochs=1)
    data, model = recipe.prepare(config, tmp_path)
    recipe.fit(config, tmp_path, data, model)
    pointer = (tmp_path / "checkpoints" / "latest.json").read_text()
    # A NaN logit makes the loss NaN on every backend (XLA's CPU max drops NaN inputs to a
    # ReLU, so poisoned images would not reach the loss on jax).
    bias = model.get_layer("head").bias
    bias.assign(np.full(bias.shape, np.nan, "float32"))
    with pytest.raises(recipe.RunStopped, match=r"non-finite loss.*last good checkpoint"):
        recipe.fit(recipe.deep_update(config, {"epochs": 2}), tmp_path, data, model)
    assert (tmp_path / "checkpoints" / "latest.json").read_text() == pointer
    assert json.loads(pointer)["epoch"] == 1


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="KEY=VALUE"):
        recipe.parse_set(["epochs"])
    with pytest.raises(ValueError, match="schedule='linear'"):
        recipe.make_optimizer(tiny_config(optimizer={"schedule": "linear"}), 10)
    with pytest.raises(ValueError, match="trainer.kind='fancy'"):
        recipe.make_trainer(tiny_config(trainer={"kind": "fancy"}), None)


def test_he_et_al_experiment_configs_use_the_papers_shortcuts():
    """Table 1: ResNet-110 with option A, He-initialised gates with b_g fixed, the 1x1 conv
    shortcut He-initialised with BN, the paper's (attenuating) dropout; Table 2: option A for
    ResNet-110 and the first pre-activation unit activated before the split."""
    from recipes.experiment import plan

    table1 = plan(json.loads((ROOT / "recipes/experiments/he_table1_shortcuts.json").read_text()), {})
    variants = {label: config["model_args"] for label, seed, config in table1 if seed == 0}
    assert all(args["downsample"] == "pad" and args["placement"] == "original" for args in variants.values())
    for label, args in variants.items():
        options = args.get("skip_options", {})
        if args["skip"].startswith("gate"):
            assert options["kernel_initializer"] == "he_normal", label
        if args["skip"] == "conv1x1":
            assert options == {"kernel_initializer": "he_normal", "norm": True}
        if args["skip"] == "dropout":
            assert not options.get("inverted", False)
        # Every variant builds (at ResNet-20 size here) and runs a train-mode forward pass.
        model = zoo.get_model("resnet20_cifar", **args, input_shape=(8, 8, 1), num_classes=3)
        out = to_numpy(model(np.ones((4, 8, 8, 1), "float32"), training=True))
        assert np.all(np.isfinite(out)), label
    table2 = plan(json.loads((ROOT / "recipes/experiments/he_table2_placements.json").read_text()), {})
    for label, seed, config in table2:
        args = config["model_args"]
        assert args["shared_first_preact"] is True
        assert (args.get("downsample") == "pad") == (config["model"] == "resnet110_cifar"), label
    preact = zoo.get_model("resnet20_cifar", placement="full_preact", shared_first_preact=True, input_shape=(8, 8, 1))
    assert [u.shared_preact for u in preact.residual_units] == [True] + [False] * 8


def test_experiment_table_of_unfinished_runs_says_how_many_finished(tmp_path, monkeypatch):
    """--no-run tabulates the runs that finished; the table names the command that made them
    (without --no-run) and how many of the planned runs it holds."""
    from recipes import experiment as runner

    spec = {"name": "tiny", "base": {"model": "resnet20_cifar", "dataset": "digits", "epochs": 1},
            "variants": {"a": {}, "b": {}}, "seeds": [0, 1]}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    root = tmp_path / "runs"
    for label, seed, accuracy in (("a", 0, 0.5), ("a", 1, 0.7), ("b", 0, 0.6)):
        (root / label / f"seed{seed}").mkdir(parents=True)
        (root / label / f"seed{seed}" / "metrics.json").write_text(json.dumps({"test_accuracy": accuracy}))
        (root / label / f"seed{seed}" / "log.csv").write_text(f"epoch,loss\n0,{1 + seed}\n1,{0.5 + seed}\n")
    monkeypatch.setattr(sys, "argv", ["experiment", str(path), "--no-run", "--out", str(root)])
    runner.main()
    result = json.loads((root / "results.json").read_text())
    assert result["meta"]["note"] == "tabulated with --no-run when 3 of the 4 runs had finished"
    assert "--no-run" not in result["meta"]["command"] and str(root) not in result["meta"]["command"]
    rows = {r["variant"]: r for r in result["rows"]}
    assert rows["a"]["runs"] == 2 and rows["a"]["test_accuracy_mean"] == pytest.approx(0.6) and rows["b"]["runs"] == 1
    assert rows["a"]["test_accuracy_std"] == pytest.approx(0.1 * 2 ** 0.5)  # sample std (ddof=1), as the claims page
    assert [s["train_loss_curve"] for s in rows["a"]["seeds"]] == [[1.0, 0.5], [2.0, 1.5]]  # each epoch's loss
    assert (root / "results.png").stat().st_size > 0  # bars beside the loss curves

    # --retabulate rewrites the tables from results.json's per-seed numbers alone, meta kept.
    table = (root / "results.md").read_text()
    for name in ("results.md", "results.png"):
        (root / name).unlink()
    runner.main(["--retabulate", str(root)])
    assert (root / "results.md").read_text() == table and (root / "results.png").is_file()
    assert json.loads((root / "results.json").read_text())["meta"]["command"] == result["meta"]["command"]
    (root / "results.json").write_text(json.dumps({"rows": [{"variant": "a", "test_accuracy_mean": 0.6}]}))
    with pytest.raises(SystemExit, match="holds no per-seed numbers"):
        runner.main(["--retabulate", str(root)])
