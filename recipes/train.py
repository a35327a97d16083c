"""Train, evaluate or fine-tune a zoo model from a JSON config.

    python -m recipes.train train    --config recipes/configs/default.json [--set epochs=5] [--out runs/x]
    python -m recipes.train train    --config ... --out runs/x --resume     # continue a killed run
    python -m recipes.train evaluate --config ... --weights runs/x/model.weights.h5
    python -m recipes.train finetune --config ... --weights resnet56_cifar.cifar10 [--freeze-trunk]

`finetune` starts from weights (a shipped `arch.tag`, a tag, a preset folder such as another
run's `preset/`, or a .weights.h5 of the same architecture): the head is replaced when the
number of classes differs, the first conv adapted when the input channels differ, and the
skip swapped when `model_args.skip` differs from the weights' (zoo.get_model(weights=...)).
The config keys `weights` and `freeze_trunk` do the same from a config file.

A run folder holds: config.json (the resolved config), log.csv, tensorboard/, checkpoints/
(one per epoch, written atomically, with a sha256 in latest.json, and only when every weight
and optimizer variable is finite), model.weights.h5,
metrics.json (final test accuracy and loss) and preset/ (the trained model as a checksummed
preset folder, loadable with zoo.get_model(arch, weights="runs/x/preset")). Keras progress
bars show the work.

Determinism: batches and augmentation come from (seed, epoch); the checkpoint holds every
variable of the model, of the DropPathFreeze trainer (its mask generator and step counter)
and of the optimizer, so a run killed at any point and resumed with --resume ends with the
same weights as an uninterrupted run (on the same backend and machine; op determinism is
switched on for TensorFlow and PyTorch). A checkpoint that cannot be resumed from (a torn
latest.json, a corrupted or foreign checkpoint) is refused in one line, with exit code 4.
"""

import argparse
import copy
import hashlib
import importlib.util
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import keras
import numpy as np

import zoo
from zoo.convert.checkpoint import UnsafePathError, resolve_inside
from zoo.data import ArrayBatches, EpochSetter, StreamingDataset, load_dataset
from zoo.training import DropPathFreeze
from zoo.training.distribute import distribute_batches

DEFAULTS = {
    "model": "resnet20_cifar",
    "model_args": {},
    "dataset": "digits",
    "dataset_args": {},
    # read batch by batch from disk (zoo.data.StreamingDataset) instead of into memory: with
    # dataset "image_folder" (dataset_args: path, image_size, color_mode) or "array_record"
    # (dataset_args: path); stream_workers threads decode batches in parallel
    "stream": False,
    "stream_workers": 2,
    "classes": None,  # only these labels, relabelled 0..n-1 (e.g. a 5-class fine-tuning task)
    "train_subset": None,
    "test_subset": None,
    "trainer": {"kind": "drop_path_freeze", "granularity": "batch", "freeze_every": 1, "seed": 0},
    "optimizer": {"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
                  "schedule": "cosine", "warmup_epochs": 0},
    "epochs": 10,
    # validate on the test split every this many epochs (Keras' validation_freq; 0: never during
    # training, only the final evaluation): a study on a small training subset spends most of its
    # time evaluating the full test set each epoch otherwise
    "validation_freq": 1,
    "batch_size": 128,
    "augment": None,
    "pad": 4,
    "seed": 0,
    "keep_checkpoints": 2,
    # also checkpoint every this many training batches inside an epoch (0: at epoch ends only);
    # --resume then continues mid-epoch with the batches the uninterrupted run sees
    "checkpoint_every_steps": 0,
    "weights": None,  # start from these weights (fine-tuning): arch.tag, tag, preset folder or file
    "freeze_trunk": False,  # with weights: train the head only
    # with weights and a model_args.skip that differs from theirs: move to the new skip over
    # this many training steps (zoo.swap_skip(..., warmup_steps=N)) instead of at once
    "skip_warmup_steps": 0,
}


class RunStopped(RuntimeError):
    """Training stopped early; the last good checkpoint is kept."""


class ResumeError(ValueError):
    """The run's checkpoint cannot be resumed from (a torn latest.json, a corrupted, foreign or
    escaping checkpoint); nothing was loaded. `main` prints it as one line and exits with 4."""


# === Config ===
def deep_update(base, extra):
    """Merge nested dicts; an optimizer or trainer of another name/kind replaces the old one
    (an AdamW spec must not inherit SGD's momentum)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        old = out.get(key)
        switched = isinstance(value, dict) and isinstance(old, dict) and any(
            k in value and value[k] != old.get(k) for k in ("name", "kind")
        )
        if isinstance(value, dict) and isinstance(old, dict) and not switched:
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def parse_set(items):
    """--set a.b=JSON pairs -> nested dict (a bare word that is not JSON is a string)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"Received --set {item!r}; expected KEY=VALUE, e.g. epochs=5 or model_args.skip=\"sparse\".")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_config(path=None, overrides=()):
    config = copy.deepcopy(DEFAULTS)
    if path:
        user = json.loads(Path(path).read_text())
        unknown = set(user) - set(DEFAULTS) - {"name", "description", "command"}
        if unknown:
            raise ValueError(f"Unknown config keys {sorted(unknown)} in {path}; allowed: {sorted(DEFAULTS)}.")
        config = deep_update(config, user)
    return deep_update(config, parse_set(overrides))


# === Building blocks ===
STREAMING = {"image_folder": StreamingDataset.image_folder, "array_record": StreamingDataset.array_record}


def make_data(config):
    if config["stream"] or config["dataset"] == "array_record":
        if config["dataset"] not in STREAMING:
            raise ValueError(f"Received stream=true with dataset={config['dataset']!r}; streaming reads "
                             f"{' or '.join(repr(k) for k in STREAMING)} (the others fit in memory: stream=false).")
        unsupported = [k for k in ("classes", "train_subset", "test_subset") if config[k]]
        if unsupported:
            raise ValueError(f"Received {', '.join(unsupported)} with a streamed data set; a streamed data set is read "
                             "whole (make a folder or record file of the subset instead).")
        return STREAMING[config["dataset"]](**config["dataset_args"])
    data = load_dataset(config["dataset"], **config["dataset_args"])
    if config["classes"] is not None:
        data = data.select_classes(config["classes"])
    if config["train_subset"] or config["test_subset"]:
        data = data.subset(config["train_subset"], config["test_subset"], seed=config["seed"])
    return data


def make_model(config, data, num_classes=None):
    args = dict(config["model_args"])
    allowed = zoo.registry.get_model_entry(config["model"]).allowed_arguments()
    # The data decide the input (every zoo model calls it input_shape).
    if "input_shape" in allowed:
        args.setdefault("input_shape", data.input_shape)
    args.setdefault("num_classes", num_classes or data.num_classes)
    if config.get("freeze_trunk") and not config.get("weights"):
        raise ValueError("freeze_trunk=true needs weights to start from (config key `weights` or --weights).")
    warmup = int(config.get("skip_warmup_steps") or 0)
    if warmup:
        if not config.get("weights") or "skip" not in args:
            raise ValueError("skip_warmup_steps needs weights to start from and a model_args.skip to move to.")
        skip, options = args.pop("skip"), args.pop("skip_options", {})
        model = zoo.get_model(config["model"], weights=config["weights"], **args)
        model = zoo.swap_skip(model, skip, options, warmup_steps=warmup)
        if config.get("freeze_trunk"):
            zoo.freeze_trunk(model)
        return model
    return zoo.get_model(config["model"], weights=config.get("weights"), freeze_trunk=bool(config.get("freeze_trunk")), **args)


def make_optimizer(config, steps_per_epoch):
    opt = dict(config["optimizer"])
    name = opt.pop("name")
    lr = opt.pop("learning_rate")
    schedule = opt.pop("schedule", None)
    warmup = int(opt.pop("warmup_epochs", 0)) * steps_per_epoch
    total = config["epochs"] * steps_per_epoch
    if schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else lr, decay_steps=max(1, total - warmup),
            warmup_target=lr if warmup else None, warmup_steps=warmup,
        )
    elif schedule == "step":  # He et al.: /10 at 50% and 75% of training
        bounds = [int(total * 0.5), int(total * 0.75)]
        lr = keras.optimizers.schedules.PiecewiseConstantDecay(bounds, [lr, lr / 10, lr / 100])
    elif schedule not in (None, "constant"):
        raise ValueError(f"Received schedule={schedule!r}; allowed: 'cosine', 'step', 'constant'.")
    optimizers = {"sgd": keras.optimizers.SGD, "adamw": keras.optimizers.AdamW, "adam": keras.optimizers.Adam}
    if name not in optimizers:
        raise zoo.UnknownNameError("optimizer", name, optimizers)
    # "decoupled": Keras' weight_decay (w -= lr * wd * w). "coupled": PyTorch's / Torch7's, an
    # L2 term added to the gradient, through the momentum (what the papers trained with).
    mode = opt.pop("weight_decay_mode", "decoupled")
    if mode == "coupled":
        coupled = {"sgd": zoo.training.SGD, "adam": zoo.training.Adam}
        if name not in coupled:
            raise ValueError(f"Received weight_decay_mode='coupled' with optimizer {name!r}; coupled weight "
                             f"decay is offered for {sorted(coupled)} (AdamW's decay is decoupled by definition).")
        return coupled[name](learning_rate=lr, coupled_weight_decay=opt.pop("weight_decay", 0.0) or 0.0, **opt)
    if mode != "decoupled":
        raise ValueError(f"Received weight_decay_mode={mode!r}; allowed: 'decoupled' (Keras), 'coupled' (PyTorch).")
    return optimizers[name](learning_rate=lr, **opt)


def make_trainer(config, model):
    spec = dict(config["trainer"])
    kind = spec.pop("kind")
    if kind == "drop_path_freeze":
        return DropPathFreeze(model, **spec)
    if kind == "plain":
        return model
    raise ValueError(f"Received trainer.kind={kind!r}; allowed: 'drop_path_freeze', 'plain'.")


def training_record(log_csv, trainer):
    """The last epoch's training loss (and accuracy) from the CSV log (a resumed run's history
    holds only its own epochs), and the optimizer steps taken (DropPathFreeze's B steps count:
    runs compared "at equal steps" read this)."""
    import csv

    record = {"optimizer_steps": int(keras.ops.convert_to_numpy(trainer.optimizer.iterations))}
    rows = list(csv.DictReader(Path(log_csv).open())) if Path(log_csv).is_file() else []
    if rows:
        record["train_loss"] = float(rows[-1]["loss"])
        if "accuracy" in rows[-1]:
            record["train_accuracy"] = float(rows[-1]["accuracy"])
    return record


def set_determinism(seed):
    keras.utils.set_random_seed(seed)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)


def device_name():
    """The accelerator this backend trains on, or the CPU: recorded with every result."""
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            if jax.devices()[0].platform != "cpu":
                return str(jax.devices()[0].device_kind)
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                return torch.cuda.get_device_name(0)
        elif backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    except Exception:  # reporting only
        pass
    return f"CPU ({os.cpu_count()} cores, {platform.machine()})"


# === Checkpoints: atomic, checksummed, resumable ===
def _atomic_write_bytes(path, write):
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def state_variables(trainer):
    return list(trainer.variables) + list(trainer.optimizer.variables)


def non_finite_variables(arrays, paths):
    """Paths of the float arrays holding a NaN or an infinity."""
    return [p for p, a in zip(paths, arrays) if a.dtype.kind == "f" and not np.all(np.isfinite(a))]


def save_checkpoint(folder, trainer, epoch, keep=2, step=0):
    """checkpoints/epoch-N.npz then latest.json pointing at it, each replaced atomically:
    a crash while writing leaves the previous checkpoint and pointer intact. Refuses (with
    RunStopped, writing nothing) a state holding non-finite values: a checkpoint is good
    only if every weight and optimizer variable is finite."""
    folder = Path(folder)
    variables = state_variables(trainer)
    values = [zoo.training.distribute.host_array(v) for v in variables]
    bad = non_finite_variables(values, [v.path for v in variables])
    if bad:
        where = f"batch {step} of epoch {epoch + 1}" if step else f"epoch {epoch}"
        raise RunStopped(f"non-finite weights after {where} ({len(bad)} variables, e.g. {bad[0]})")
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {f"v{i}": value for i, value in enumerate(values)}
    # epoch-N.npz: N epochs done; epoch-N.step-K.npz: N epochs and K batches of the next one
    # (the names sort in training order)
    path = folder / (f"epoch-{epoch:04d}.step-{step:07d}.npz" if step else f"epoch-{epoch:04d}.npz")
    _atomic_write_bytes(path, lambda f: np.savez(f, **arrays))
    pointer = {"epoch": epoch, "step": step, "file": path.name, "sha256": zoo.presets.sha256_file(path), "num_variables": len(arrays),
               "paths": [v.path for v in variables]}
    _atomic_write_bytes(folder / "latest.json", lambda f: f.write(json.dumps(pointer, indent=1).encode()))
    for old in sorted(folder.glob("epoch-*.npz"))[:-keep]:
        old.unlink()
    return path


def _read_pointer(folder):
    """latest.json, checked: its fields, and a file name inside `folder`."""
    pointer_path = folder / "latest.json"
    kept = ", ".join(p.name for p in sorted(folder.glob("epoch-*.npz"))) or "none"
    fix = (f"remove {str(folder)!r} to start over, or rewrite latest.json for an intact epoch-N.npz "
           f"(present: {kept})")
    try:
        pointer = json.loads(pointer_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResumeError(f"Cannot resume: {str(pointer_path)!r} is not valid JSON ({e}; a torn write?); {fix}.") from None
    fields = {"epoch": int, "file": str, "sha256": str, "num_variables": int}
    if not isinstance(pointer, dict) or not all(isinstance(pointer.get(k), t) and not isinstance(pointer.get(k), bool)
                                                for k, t in fields.items()):
        raise ResumeError(f"Cannot resume: {str(pointer_path)!r} lacks {', '.join(fields)} of the right types; {fix}.")
    step = pointer.get("step", 0)  # absent in checkpoints written before step checkpoints existed
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ResumeError(f"Cannot resume: {str(pointer_path)!r} has step={step!r}, not a count of batches; {fix}.")
    try:
        path = resolve_inside(folder, pointer["file"], "Checkpoint named by latest.json")
    except UnsafePathError as e:
        raise ResumeError(f"Cannot resume: {e} {fix[0].upper()}{fix[1:]}.") from None
    return pointer, path, fix


def load_checkpoint(folder, trainer, with_step=False):
    """Restore every variable; refuse (ResumeError, nothing loaded) a checkpoint whose pointer,
    checksum, layout or values are not the run's. Returns the epochs done (with `with_step`,
    (epochs done, batches done of the next epoch))."""
    folder = Path(folder)
    pointer_path = folder / "latest.json"
    if not pointer_path.is_file():
        raise FileNotFoundError(f"No checkpoint to resume from: {pointer_path} does not exist.")
    pointer, path, fix = _read_pointer(folder)
    if not path.is_file() or zoo.presets.sha256_file(path) != pointer["sha256"]:
        raise ResumeError(f"Checkpoint {path} is missing or corrupted (sha256 differs from latest.json); refusing to load it; {fix}.")
    variables = state_variables(trainer)
    if pointer["num_variables"] != len(variables):
        raise ResumeError(
            f"Checkpoint {path} holds {pointer['num_variables']} variables, this model and optimizer have "
            f"{len(variables)}: it was written by a different configuration; refusing to load it "
            "(resume with the run's own config.json, or start a new --out)."
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            values = [data[f"v{i}"] for i in range(len(variables))]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ResumeError(f"Checkpoint {path} matches its sha256 but cannot be read ({type(e).__name__}: {e}); {fix}.") from None
    for v, value in zip(variables, values):
        if tuple(v.shape) != value.shape:
            raise ResumeError(f"Checkpoint {path}: {v.path} has shape {value.shape}, the model expects {tuple(v.shape)}; "
                              "it was written by a different configuration.")
    bad = non_finite_variables(values, [v.path for v in variables])
    if bad:
        raise ResumeError(f"Checkpoint {path} holds non-finite values ({bad[0]}, ...); {fix}.")
    for v, value in zip(variables, values):
        v.assign(value)
    return (pointer["epoch"], pointer.get("step", 0)) if with_step else pointer["epoch"]


class EpochCheckpoint(keras.callbacks.Callback):
    """Writes the epoch's checkpoint unless the epoch went wrong: a non-finite loss on any
    step (the guard) or non-finite weights after the last update (checked here, since the
    loss of a step is computed before its update)."""

    def __init__(self, folder, keep, guard, every_steps=0, steps_per_epoch=None, write=True):
        super().__init__()
        self.folder, self.keep, self.guard, self.write = folder, keep, guard, write
        self.every_steps = int(every_steps or 0)
        self.steps_per_epoch = steps_per_epoch
        self.offset = 0  # batches of the current epoch done before this fit call (a resumed run)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        done = self.offset + batch + 1
        if not self.every_steps or done % self.every_steps or done >= (self.steps_per_epoch or done + 1):
            return
        self._save(self.epoch, done)

    def on_epoch_end(self, epoch, logs=None):
        self._save(epoch + 1, 0)

    def _save(self, epoch, step):
        if self.guard.failed or not self.write:
            return
        try:
            save_checkpoint(self.folder, self.model, epoch, keep=self.keep, step=step)
        except RunStopped as stop:
            self.guard.failed = str(stop)
            self.model.stop_training = True


class StopOnNaN(keras.callbacks.Callback):
    """Stop at the first non-finite loss; the epoch's checkpoint is then not written."""

    def __init__(self):
        super().__init__()
        self.failed = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.failed = f"non-finite loss {loss} at batch {batch}"
            self.model.stop_training = True


# === Commands ===
def prepare(config, out):
    set_determinism(config["seed"])
    data = make_data(config)
    model = make_model(config, data)
    return data, model


def compile_trainer(config, trainer, steps_per_epoch):
    trainer.compile(
        optimizer=make_optimizer(config, steps_per_epoch),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return trainer


def process_part():
    """This process's part of each batch: {} alone, or its index and count (and every batch
    whole, drop_last) in data-parallel training over several processes."""
    index, count = zoo.training.process_info()
    return dict(process_index=index, process_count=count, drop_last=True) if count > 1 else {}


def train_batches(config, data):
    """The shuffled, augmented training batches: from memory (ArrayBatches) or streamed from disk."""
    common = dict(shuffle=True, seed=config["seed"], augment=config["augment"], pad=config["pad"], **process_part())
    if isinstance(data, StreamingDataset):
        return data.train_batches(config["batch_size"], workers=config["stream_workers"], **common)
    return ArrayBatches(data.x_train, data.y_train, config["batch_size"], normalize=data.normalize, **common)


def test_batches(data, batch_size, workers=1):
    if isinstance(data, StreamingDataset):
        return data.test_batches(batch_size, workers=workers, **process_part())
    return ArrayBatches(data.x_test, data.y_test, batch_size, normalize=data.normalize, **process_part())


def data_sizes(data):
    """(training examples, test examples)."""
    if isinstance(data, StreamingDataset):
        return data.num_train, data.num_test
    return len(data.x_train), len(data.x_test)


def evaluate(model, data, batch_size, workers=1):
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    zoo.training.prepare_fit(model)
    loss, acc = model.evaluate(distribute_batches(test_batches(data, batch_size, workers)), verbose=0)
    loss, acc = zoo.training.distribute.mean_over_processes([loss, acc])  # torch: each process saw its part
    samples = data_sizes(data)[1]
    if zoo.training.process_info()[1] > 1:  # whole batches only: every process takes an equal part
        samples = samples // batch_size * batch_size
    return {"test_loss": float(loss), "test_accuracy": float(acc), "test_samples": int(samples)}


class EpochWindow(keras.utils.PyDataset):
    """Batches `start`, `start` + 1, ... of `batches`' epoch `epoch`: the rest of an epoch that a
    resumed run finishes (the batches are functions of (seed, epoch, index), so these are the
    ones the uninterrupted run saw)."""

    def __init__(self, batches, epoch, start):
        super().__init__()  # one Keras worker, as the batches it wraps
        self.batches, self.start = batches, int(start)
        batches.set_epoch(epoch)

    def set_epoch(self, epoch):
        self.batches.set_epoch(epoch)

    def __len__(self):
        return len(self.batches) - self.start

    def __getitem__(self, index):
        return self.batches[self.start + index]


def fit(config, out, data, model, resume=False):
    out = Path(out)
    freq = config["validation_freq"]
    if not isinstance(freq, int) or isinstance(freq, bool) or freq < 0:
        raise ValueError(f"Received validation_freq={freq!r}; allowed: an epoch count >= 1, or 0 for no validation "
                         "during training (the final evaluation still runs).")
    chief = zoo.training.process_info()[0] == 0  # in a multi-process run only process 0 writes files
    out.mkdir(parents=True, exist_ok=True)
    if chief:
        (out / "config.json").write_text(json.dumps(config, indent=2))
    train = train_batches(config, data)
    test = test_batches(data, config["batch_size"], workers=config["stream_workers"])
    validation = {"validation_data": distribute_batches(test), "validation_freq": freq} if freq else {}
    trainer = zoo.training.prepare_fit(compile_trainer(config, make_trainer(config, model), len(train)))
    trainer.optimizer.build(trainer.trainable_variables)
    initial_epoch, initial_step = 0, 0
    if resume and (out / "checkpoints" / "latest.json").is_file():
        initial_epoch, initial_step = load_checkpoint(out / "checkpoints", trainer, with_step=True)
        where = f"batch {initial_step} of epoch {initial_epoch + 1}" if initial_step else f"the end of epoch {initial_epoch}"
        print(f"Resuming {out} from {where}.", flush=True)
    elif resume:
        print(f"No checkpoint in {out / 'checkpoints'} yet: starting from the beginning.", flush=True)
    guard = StopOnNaN()
    checkpoints = EpochCheckpoint(out / "checkpoints", config["keep_checkpoints"], guard,
                                  every_steps=config["checkpoint_every_steps"], steps_per_epoch=len(train), write=chief)
    callbacks = [EpochSetter(train), guard, checkpoints]
    if chief:  # logs are the chief's too
        callbacks.append(keras.callbacks.CSVLogger(str(out / "log.csv"), append=resume))
        if importlib.util.find_spec("tensorflow") and importlib.util.find_spec("tensorboard"):
            callbacks.append(keras.callbacks.TensorBoard(str(out / "tensorboard"), write_graph=False, profile_batch=0))
        else:  # TensorBoard writes through tensorflow; everything else works without it
            print("TensorBoard logging off: tensorflow and tensorboard are not both installed.", file=sys.stderr)
    start = time.time()
    # shuffle=False: the batches shuffle themselves from (seed, epoch); fit's own shuffle would
    # reorder them from the global RNG, and a resumed run would diverge.
    verbose = 2 if os.environ.get("CI") else 1
    if initial_step and initial_epoch < config["epochs"]:  # finish the epoch a step checkpoint was in
        checkpoints.offset = initial_step
        trainer.fit(distribute_batches(EpochWindow(train, initial_epoch, initial_step)),
                    epochs=initial_epoch + 1, initial_epoch=initial_epoch, callbacks=callbacks,
                    shuffle=False, verbose=verbose, **validation)
        checkpoints.offset, initial_epoch = 0, initial_epoch + 1
    if initial_epoch < config["epochs"] and not guard.failed:
        trainer.fit(distribute_batches(train), epochs=config["epochs"], initial_epoch=initial_epoch,
                    callbacks=callbacks, shuffle=False, verbose=verbose, **validation)
    if guard.failed:
        kept = (f"The last good checkpoint is kept in {out / 'checkpoints'} (resume with --resume"
                if (out / "checkpoints" / "latest.json").is_file() else "No good checkpoint was written (start again")
        raise RunStopped(
            f"Training stopped: {guard.failed}. {kept} after lowering the learning rate, e.g. "
            "--set optimizer.learning_rate=0.01)."
        )
    record = training_record(out / "log.csv", trainer) if chief else {}  # before evaluate, which recompiles `model`
    index, count = zoo.training.process_info()
    if count > 1:  # every replica must hold the same weights, bit for bit: the log shows each one's digest
        digest = hashlib.sha256(b"".join(zoo.training.distribute.host_array(v).tobytes() for v in trainer.variables))
        print(f"process {index} of {count}: weights sha256 {digest.hexdigest()}", flush=True)
    metrics = evaluate(model, data, config["batch_size"], workers=config["stream_workers"])
    metrics.update(record)
    metrics.update({
        "model": config["model"], "dataset": data.name, "epochs": config["epochs"], "seconds": round(time.time() - start, 1),
        "backend": keras.backend.backend(), "device": device_name(), "keras": keras.__version__, "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
    })
    if not chief and not zoo.training.distribute.saving_is_collective():
        return metrics
    if keras.backend.backend() == "jax" and count > 1:
        model = zoo.training.distribute.local_copy(model)  # its replica, computing nothing with the others
    if not chief:  # tf.distribute's multi-worker rule: every worker saves, all but the chief into a scratch folder
        with tempfile.TemporaryDirectory() as scratch:
            save_outputs(config, Path(scratch), data, model, metrics)
        return metrics
    save_outputs(config, out, data, model, metrics)
    return metrics


def save_outputs(config, out, data, model, metrics):
    """The trained weights, metrics.json and the preset of a finished run."""
    model.save_weights(out / "model.weights.h5")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    model.preprocessing = data.preprocessing  # kept in the preset's config.json too
    zoo.save_preset(model, out / "preset", overwrite=True, metadata={
        "arch": config["model"], "dataset": data.name, "accuracy": {f"{data.name}_test": round(metrics["test_accuracy"], 4),
                                           "test_samples": metrics["test_samples"]},
        # what Dataset.normalize does: uint8 -> (x / 255 - mean) / std; float data as loaded
        "preprocessing": data.preprocessing,
        "command": config.get("command"),  # set by main() (or the wrapper that ran it)
        "recipe_config": config,
    })


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["train", "evaluate", "finetune"])
    parser.add_argument("--config", help="JSON config (see recipes/configs/)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config entries")
    parser.add_argument("--out", default=None, help="run folder (default runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    parser.add_argument("--weights", help="evaluate: a .weights.h5 or preset of the model; finetune: the weights to "
                        "start from (arch.tag, tag, preset folder or .weights.h5)")
    parser.add_argument("--freeze-trunk", action="store_true", help="finetune: train the head only")
    parser.add_argument("--distribute", choices=list(zoo.training.DISTRIBUTE_MODES), default="none",
                        help="data: data parallel through the backend's engine (jax keras.distribution, tensorflow "
                        "tf.distribute, torch torch.distributed under torchrun); batch_size is the global batch")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    if args.command == "finetune":
        if not (args.weights or config["weights"]):
            parser.error("finetune needs --weights (or the config key `weights`)")
        config = deep_update(config, {"weights": args.weights or config["weights"],
                                      "freeze_trunk": args.freeze_trunk or config["freeze_trunk"]})
    elif args.freeze_trunk:
        parser.error("--freeze-trunk belongs to finetune")
    # the command recorded with the weights: a wrapper (recipes.ship) puts its own in the config
    config["command"] = config.get("command") or f"KERAS_BACKEND={keras.backend.backend()} python -m recipes.train " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    name = config.get("name") or (Path(args.config).stem if args.config else "default")
    out = Path(args.out or Path("runs") / name)
    processes = 1
    if args.distribute == "data":  # several processes when the backend's environment names them (docs: README)
        processes = zoo.training.initialize_processes()[1]
        if config["batch_size"] % processes:
            raise ValueError(f"Received batch_size={config['batch_size']} over {processes} processes; the global batch "
                             f"is split evenly over them, so it must be a multiple of {processes}.")
    # before any model exists; each process feeds its part of the global batch
    zoo.training.configure_distribution(args.distribute, batch_size=config["batch_size"] // processes)
    with zoo.training.distribution_scope():  # tf.distribute's strategy (nothing elsewhere)
        return run(args, parser, config, out)


def run(args, parser, config, out):
    data, model = prepare(config, out)
    sizes = data_sizes(data)
    print(f"[{keras.backend.backend()}] {config['model']} on {data.name} ({sizes[0]} train / {sizes[1]} test"
          f"{', streamed' if isinstance(data, StreamingDataset) else ''}), "
          f"skip={getattr(model, 'skip', '?')}, trainer={config['trainer']['kind']}", flush=True)
    try:
        if args.command == "evaluate":
            if not args.weights:
                parser.error("evaluate needs --weights")
            zoo.load_weights(model, args.weights)
            metrics = evaluate(model, data, config["batch_size"])
        else:
            metrics = fit(config, out, data, model, resume=args.resume)
    except RunStopped as err:
        print(f"ERROR: {err}", file=sys.stderr, flush=True)
        return 3
    except ResumeError as err:
        print(f"ERROR: {err}", file=sys.stderr, flush=True)
        return 4
    print(json.dumps(metrics, indent=2))
    print(f"test accuracy: {metrics['test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
