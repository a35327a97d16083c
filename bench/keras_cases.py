"""Keras cases (zoo presets, keras.applications.ResNet50): one compiled train step, timed.

Each backend runs the step Keras' own `fit` runs, minus the data pipeline and callbacks, on
one fixed batch already on the device:
  jax         jax.jit(model.train_step, donate_argnums=0) on the stateless state, lowered and
              compiled once (its XLA cost and memory analysis give FLOPs and step memory)
  tensorflow  tf.function(model.train_step, jit_compile=model.jit_compile)
  torch       model.train_step eagerly (Keras' torch default; jit_compile would torch.compile)
A window of steps is timed between two synchronisations (the loss read back to the host).
"""

import os
import resource
import time

import keras
import numpy as np

import zoo
from zoo.training import DropPathFreeze

BACKEND = keras.backend.backend()


def device_name():
    if BACKEND == "jax":
        import jax

        d = jax.devices()[0]
        return f"{d.platform}:{d.device_kind} x{len(jax.devices())}"
    if BACKEND == "torch":
        import torch

        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.get_device_name(0)}"
        return "cpu"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"gpu:{gpus[0].name}" if gpus else "cpu"


def on_gpu():
    return not device_name().startswith("cpu")


def build_model(case):
    """The case's model under its dtype policy (bf16 = mixed_bfloat16: float32 weights)."""
    policy = "mixed_bfloat16" if case["precision"] == "bf16" else "float32"
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        if case["kind"] == "keras_apps":
            return keras.applications.ResNet50(
                weights=None, input_shape=tuple(case["input_shape"]), classes=case["num_classes"]
            )
        return zoo.get_model(case["model"], **case.get("args", {}))
    finally:
        keras.config.set_dtype_policy("float32")


def make_trainer(case, model):
    if case.get("trainer", "plain") == "drop_path_freeze":
        trainer = DropPathFreeze(model, **case.get("trainer_args", {}))
    else:
        trainer = model
    trainer.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return trainer


def synthetic_batch(case):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((case["batch"],) + tuple(case["input_shape"])).astype("float32")
    y = rng.integers(0, case["num_classes"], case["batch"]).astype("int32")
    return x, y


def _cost(stage):
    """FLOPs of one step (a jax Lowered or Compiled) from XLA's cost analysis (None where it has none)."""
    try:
        cost = stage.cost_analysis()
        if isinstance(cost, (list, tuple)):
            cost = cost[0] if cost else None
        return float(cost["flops"]) if cost and cost.get("flops", 0) > 0 else None
    except Exception:  # cost analysis is best effort: a platform may not provide it
        return None


FLOPS_SOURCE = "XLA cost analysis of the jax train step as lowered (before the backend's passes)"


def count_flops(case):
    """GFLOP per image of a case's jax train step, lowered but never compiled or run: FLOPs are
    a count, the same on any device, so a result measured elsewhere can be given them here."""
    if BACKEND != "jax":
        raise RuntimeError(f"count_flops needs KERAS_BACKEND=jax (got {BACKEND})")
    keras.backend.clear_session()
    model = build_model(case)
    runner = JaxRunner(make_trainer(case, model), *synthetic_batch(case), compile=False)
    return runner.lowered_flops / case["batch"] / 1e9 if runner.lowered_flops else None


def _step_bytes(compiled):
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)
    except Exception:
        return None


class JaxRunner:
    def __init__(self, trainer, x, y, compile=True):
        import jax

        self.jax = jax
        self.trainer = trainer
        self.data = (jax.device_put(x), jax.device_put(y))
        trainer._symbolic_build(data_batch=(x, y))  # model, loss and optimizer slots, no step
        self.state = trainer._get_jax_state(
            trainable_variables=True, non_trainable_variables=True, optimizer_variables=True, metrics_variables=True
        )
        start = time.perf_counter()
        step = jax.jit(trainer.train_step, donate_argnums=0)
        lowered = step.lower(self.state, self.data)
        self.lowered_flops = _cost(lowered)
        if not compile:  # count_flops: the step as written, never run
            return
        self.compiled = lowered.compile()
        self.compile_seconds = time.perf_counter() - start
        # FLOPs of the step as written (the HLO before the backend's passes): on a GPU the
        # compiled module's convolutions are cuDNN custom calls that XLA's cost analysis does
        # not count, so the compiled count would be mostly elementwise work.
        self.flops_per_step = self.lowered_flops or _cost(self.compiled)
        self.step_bytes = _step_bytes(self.compiled)
        if getattr(trainer, "dispatches_kinds", lambda: False)():
            # what `fit` runs: DropPathFreeze on jax on a CPU compiles one step per kind of step
            # and picks one before each step (FLOPs, memory and compile time: the single step's)
            self.compiled = trainer.kind_dispatched_step()

    def run(self, steps):
        logs = None
        for _ in range(steps):
            logs, self.state = self.compiled(self.state, self.data)
        return float(logs["loss"])  # waits for the last step

    def close(self):
        t, nt, opt, met = self.state
        for refs, values in ((self.trainer.trainable_variables, t), (self.trainer.non_trainable_variables, nt),
                             (self.trainer.optimizer.variables, opt), (self.trainer.metrics_variables, met)):
            for ref, value in zip(refs, values):
                ref.assign(value)


class TensorFlowRunner:
    def __init__(self, trainer, x, y):
        import tensorflow as tf

        self.data = (tf.constant(x), tf.constant(y))
        trainer._symbolic_build(data_batch=self.data)
        jit = trainer.jit_compile if trainer.jit_compile != "auto" else True
        self.step = tf.function(trainer.train_step, reduce_retracing=True, jit_compile=bool(jit))
        start = time.perf_counter()
        self.run(1)  # trace and compile
        self.compile_seconds = time.perf_counter() - start
        self.flops_per_step = None
        self.step_bytes = None

    def run(self, steps):
        logs = None
        for _ in range(steps):
            logs = self.step(self.data)
        return float(logs["loss"])

    def close(self):
        pass


class TorchRunner:
    def __init__(self, trainer, x, y):
        import torch

        self.torch = torch
        self.trainer = trainer
        self.data = (keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y))
        trainer._symbolic_build(data_batch=self.data)
        self.compile_seconds = 0.0
        self.flops_per_step = None
        self.step_bytes = None

    def run(self, steps):
        logs = None
        for _ in range(steps):
            logs = self.trainer.train_step(self.data)
        if self.torch.cuda.is_available():
            self.torch.cuda.synchronize()
        return float(logs["loss"])

    def close(self):
        pass


RUNNERS = {"jax": JaxRunner, "tensorflow": TensorFlowRunner, "torch": TorchRunner}


def reset_peak_memory():
    if BACKEND == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    elif BACKEND == "tensorflow" and on_gpu():
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("GPU:0")


def peak_memory():
    """(bytes, what was measured): the device's peak where the backend reports one, else the
    process' peak resident memory (monotone over the process: cases run in order)."""
    if BACKEND == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"]), "jax peak_bytes_in_use (process peak so far)"
    if BACKEND == "torch":
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated (this case)"
    if BACKEND == "tensorflow" and on_gpu():
        import tensorflow as tf

        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"]), "tf GPU peak (this case)"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS so far (CPU)"


def _runner(case):
    """(runner, model, trainer, setup seconds) of a zoo or keras.applications case, compiled;
    a plain-PyTorch anchor's runner (model and trainer None) for a "torch" case."""
    built = time.perf_counter()
    if case["runner"] == "torch":
        from bench.torch_anchors import AnchorRunner

        return AnchorRunner(case), None, None, time.perf_counter() - built
    model = build_model(case)
    trainer = make_trainer(case, model)
    x, y = synthetic_batch(case)
    runner = RUNNERS[BACKEND](trainer, x, y)
    return runner, model, trainer, time.perf_counter() - built


def run_case(case, warmup, steps, windows, profile=False, paired_with=None):
    """Build, compile, warm up and time one case; returns the result fields.

    `paired_with`: the case's baseline case, built beside it and timed in alternation with it
    (baseline window, case window, and so on), so that whatever else the machine does in a
    window slows both: the ratio of each pair of windows, their median and the ratio of the
    totals are the comparison (`paired`). A ratio of two cases timed minutes apart carries the machine's drift between
    them, about 10% on a shared CPU."""
    keras.backend.clear_session()
    reset_peak_memory()
    base = _runner(paired_with)[0] if paired_with else None
    runner, model, trainer, setup_seconds = _runner(case)
    loss = runner.run(warmup)
    if base is not None:
        base.run(warmup)
    times, base_times = [], []
    for _ in range(windows):
        if base is not None:
            start = time.perf_counter()
            base.run(steps)
            base_times.append((time.perf_counter() - start) / steps)
        start = time.perf_counter()
        loss = runner.run(steps)
        times.append((time.perf_counter() - start) / steps)
    profile_table = None
    if profile and BACKEND == "torch":
        from bench.torch_anchors import torch_profile

        profile_table = torch_profile(runner.run, steps)
    runner.close()
    step_s = min(times)  # best window: on a shared machine other jobs only ever add time
    peak, peak_kind = peak_memory()
    params = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    out = {
        "images_per_s": case["batch"] / step_s,
        "ms_per_step": 1000 * step_s,
        "ms_per_step_median": 1000 * float(np.median(times)),
        "ms_per_step_windows": [round(1000 * t, 3) for t in times],
        "setup_s": round(setup_seconds, 2),
        "compile_s": round(runner.compile_seconds, 2),
        "final_loss": loss,
        "trainable_params": params,
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        "jit_compile": str(trainer.jit_compile),
        "dtype_policy": model.dtype_policy.name,
    }
    # XLA's cost analysis counts a loop body once: FLOPs of recurrent models would be far too low.
    if runner.flops_per_step and not case.get("loop"):
        out["gflop_per_image"] = runner.flops_per_step / case["batch"] / 1e9
        out["flops_source"] = FLOPS_SOURCE
    if runner.step_bytes:
        out["xla_step_bytes"] = runner.step_bytes
    if profile_table:
        out["profile_top_ops"] = profile_table
    if base is not None:
        ratios = [b / t for b, t in zip(base_times, times)]
        out["paired"] = {
            "baseline": paired_with["name"],
            "baseline_ms_windows": [round(1000 * t, 3) for t in base_times],
            "speed_ratios": [round(r, 4) for r in ratios],
            "speed_ratio_median": float(np.median(ratios)),
            "speed_ratio_total": float(sum(base_times) / sum(times)),
            "note": "baseline and case timed in alternating windows in this process; peak memory holds both",
        }
        base.close()
    if not np.isfinite(loss):
        out["note"] = "non-finite loss (synthetic data, lr 0.1): timing still valid"
    del runner, trainer, model, base
    return out


def environment():
    return {"backend": BACKEND, "device": device_name(), "keras": keras.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", "")}
