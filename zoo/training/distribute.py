"""Data-parallel training over devices and processes, each backend through its own engine.

    from zoo.training import configure_distribution, distribution_scope
    initialize_processes()                            # first: joins a multi-process run, if any
    configure_distribution("data", batch_size=128)   # before the model is built
    with distribution_scope():                        # tf.distribute needs its strategy's scope
        model = zoo.get_model(...); trainer.compile(...)
        prepare_fit(trainer); trainer.fit(distribute_batches(batches), ...)

- jax: `keras.distribution.DataParallel`. Every variable is replicated on every device, each
  batch is split along its first axis, and XLA all-reduces the gradients inside the one compiled
  step. Several processes: Keras' environment (KERAS_DISTRIBUTION_JOB_ADDRESSES = the
  coordinator's host:port, KERAS_DISTRIBUTION_NUM_PROCESSES, KERAS_DISTRIBUTION_PROCESS_ID);
  `initialize_processes()` runs `keras.distribution.initialize` (`jax.distributed`, gloo
  collectives on CPU).
- tensorflow: `tf.distribute.MultiWorkerMirroredStrategy` from TF_CONFIG (its cluster's workers
  and this task's index; without TF_CONFIG, `MirroredStrategy` over this process' devices).
  Keras' `fit` averages the replicas' gradients. Two Keras 3 defects are worked around here
  (keras-team/keras#20585: `fit` under MultiWorkerMirroredStrategy fails in its symbolic build
  and when it averages the step's scalar logs over the workers); see `prepare_fit`.
- torch: `torch.distributed` with the environment torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR,
  MASTER_PORT; gloo on CPU, nccl on GPUs). The replicas' gradients are averaged by an
  all-reduce as each one is accumulated (the all-reduce DistributedDataParallel performs; DDP's
  module wrapper itself needs to own the forward call, which Keras' `fit` makes on the model).

In every case each process feeds its own rows of every global batch (`process_index` /
`process_count` of zoo.data's batches), BatchNorm statistics cover the global batch (zoo.layers.norm
on tensorflow and torch; SPMD on jax), and DropPathFreeze draws the same mask on every replica
(one seeded generator, replicated state), so a run over P processes trains the model that one
process trains on the same global batches, up to the order of float sums.
"""

import atexit
import contextlib
import json
import os

import keras
import numpy as np

from zoo.errors import check_choice

DISTRIBUTE_MODES = ("none", "data")
BACKEND = keras.backend.backend()
_STATE = {"strategy": None, "torch": False}  # what initialize_processes / configure_distribution set up


def _tf_workers():
    """(task index, workers) from TF_CONFIG, or None without a multi-worker TF_CONFIG."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    workers = config.get("cluster", {}).get("worker", [])
    if len(workers) + len(config.get("cluster", {}).get("chief", [])) <= 1:
        return None
    task = config.get("task", {})
    index = int(task.get("index", 0)) + (len(config["cluster"].get("chief", [])) if task.get("type") == "worker" else 0)
    return index, len(workers) + len(config["cluster"].get("chief", []))


def _destroy_torch_group():
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def initialize_processes():
    """Join the multi-process run that this backend's environment describes; returns (index, count).

    jax: KERAS_DISTRIBUTION_NUM_PROCESSES (with KERAS_DISTRIBUTION_JOB_ADDRESSES and
    KERAS_DISTRIBUTION_PROCESS_ID), as `keras.distribution.initialize` reads them.
    tensorflow: TF_CONFIG naming several workers (creates the MultiWorkerMirroredStrategy).
    torch: WORLD_SIZE > 1 with RANK, MASTER_ADDR and MASTER_PORT (what torchrun sets).
    Absent (or one process): nothing to join, (0, 1). Call it first, before any computation."""
    if BACKEND == "jax":
        count = int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES") or 1)
        if count <= 1:
            return 0, 1
        import jax

        if not jax.distributed.is_initialized():
            jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes; GPUs use NCCL
            keras.distribution.initialize()
        return jax.process_index(), jax.process_count()
    if BACKEND == "tensorflow":
        workers = _tf_workers()
        if workers is None:
            return 0, 1
        if _STATE["strategy"] is None:
            import tensorflow as tf

            _STATE["strategy"] = tf.distribute.MultiWorkerMirroredStrategy()
        return workers
    if BACKEND == "torch":
        count = int(os.environ.get("WORLD_SIZE") or 1)
        if count <= 1:
            return 0, 1
        import torch
        import torch.distributed as dist

        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
        if missing:
            raise ValueError(f"Received WORLD_SIZE={count} without {', '.join(missing)}: a torch.distributed run needs "
                             "RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT in every process (torchrun sets them).")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            # shut the group down before the interpreter tears down: a gloo group left to its
            # destructor at exit can abort the process after the run has finished ("terminate
            # called without an active exception", seen once in a clean-clone CI run, 2026-12-06)
            atexit.register(_destroy_torch_group)
        return dist.get_rank(), dist.get_world_size()
    raise ValueError(f"Received the {BACKEND} backend; multi-process training is wired for jax, tensorflow and torch.")


def host_array(value):
    """A numpy copy of `value` (a tensor or a Keras variable) readable in this process: of an
    array replicated over several processes, this process's replica."""
    value = getattr(value, "value", value)
    if keras.backend.backend() == "jax":
        import jax

        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            return np.asarray(value.addressable_data(0))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(value, tf.distribute.DistributedValues):  # a mirrored variable: this worker's copy
            return tf.convert_to_tensor(value).numpy()
    return keras.ops.convert_to_numpy(value)


def local_copy(model):
    """`model` rebuilt outside any distribution, with this process's replica of its weights:
    what one process of a multi-process run saves (its variables span the others' devices)."""
    keras.distribution.set_distribution(None)
    copy = type(model).from_config(model.get_config())
    copy.set_weights([host_array(w) for w in model.weights])
    return copy


def vit_layout_map(device_mesh, model_axis="model"):
    """A `keras.distribution.LayoutMap` for a zoo ViT (any size; ViT-L is what needs it): the
    attention and MLP kernels split over `model_axis` as Megatron-LM splits them (qkv and fc1 by
    output columns with their biases, proj and fc2 by input rows), everything else replicated."""
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for name in ("qkv", "fc1"):
        layout_map[rf".*/{name}/kernel"] = (None, model_axis)
        layout_map[rf".*/{name}/bias"] = (model_axis,)
    for name in ("proj", "fc2"):
        layout_map[rf".*/{name}/kernel"] = (model_axis, None)
    return layout_map


def configure_vit_model_parallel(model_shards, devices=None):
    """Set `keras.distribution.ModelParallel` for a ViT built afterwards: a (data, model) mesh
    with `model_shards` devices along "model" (the kernels of `vit_layout_map`) and the rest
    along "data" (the batch). jax backend. Returns the distribution."""
    if keras.backend.backend() != "jax":
        raise ValueError(f"Received model parallelism on the {keras.backend.backend()} backend; keras.distribution "
                         "(and so ModelParallel) is implemented for jax: run with KERAS_BACKEND=jax.")
    devices = list(devices) if devices is not None else keras.distribution.list_devices()
    if model_shards < 1 or len(devices) % model_shards:
        raise ValueError(f"Received model_shards={model_shards} for {len(devices)} devices; it must divide the "
                         "device count.")
    mesh = keras.distribution.DeviceMesh((len(devices) // model_shards, model_shards), ("data", "model"), devices)
    distribution = keras.distribution.ModelParallel(layout_map=vit_layout_map(mesh), batch_dim_name="data")
    keras.distribution.set_distribution(distribution)
    return distribution


def process_info():
    """(index, count) of this process in a multi-process run ((0, 1) in a single process)."""
    if BACKEND == "jax":
        import jax

        if not jax.distributed.is_initialized():
            return 0, 1
        return jax.process_index(), jax.process_count()
    if BACKEND == "tensorflow":
        return (_tf_workers() if _STATE["strategy"] is not None else None) or (0, 1)
    if BACKEND == "torch":
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    return 0, 1


def configure_distribution(mode="none", devices=None, batch_size=None):
    """Set up data-parallel training for models built afterwards; returns what was set (None for "none").

    Args:
        mode: "none" (one device, Keras' default) or "data" (data parallel: jax
            `keras.distribution.DataParallel` over `devices`; tensorflow the strategy of
            `initialize_processes`, else `tf.distribute.MirroredStrategy` over this process'
            devices; torch the process group of `initialize_processes`, one device a process).
        devices: jax device names for "data" (default: `keras.distribution.list_devices()`,
            every device of every process).
        batch_size: the batch this process feeds each step; on jax checked to split evenly over
            this process' devices.

    Call it before building the model (inside `distribution_scope()` on tensorflow): variables
    created earlier are not laid out.
    """
    check_choice("distribute", mode, DISTRIBUTE_MODES)
    if mode == "none":
        return None
    if BACKEND == "tensorflow":
        if _STATE["strategy"] is None:
            import tensorflow as tf

            _STATE["strategy"] = tf.distribute.MirroredStrategy()
        return _STATE["strategy"]
    if BACKEND == "torch":
        if process_info()[1] == 1:
            raise ValueError(
                "Received distribute='data' on the torch backend in a single process: torch.distributed trains one "
                "process per device. Launch one process per device with torchrun (e.g. torchrun --nproc-per-node 2 "
                "-m recipes.train train --distribute data), or use distribute='none' for one device."
            )
        _STATE["torch"] = True
        return "torch.distributed"
    if BACKEND != "jax":
        raise ValueError(f"Received distribute={mode!r} on the {BACKEND} backend; data parallel training is wired "
                         "for jax, tensorflow and torch.")
    import jax  # the jax backend is active: process counts come from jax itself

    devices = list(devices) if devices is not None else keras.distribution.list_devices()
    if not devices:
        raise ValueError("Received devices=[]; distribute='data' needs at least one device.")
    local = max(1, len(devices) // jax.process_count())
    if batch_size is not None and int(batch_size) % local:
        raise ValueError(
            f"Received batch_size={batch_size} with distribute='data' over {local} device(s) of this process; "
            f"each batch is split evenly over them, so batch_size must be a multiple of {local} "
            f"(e.g. {max(local, int(batch_size) // local * local)})."
        )
    # over several processes each feeds its own part of the batch (zoo.data's process_index):
    # Keras' own sharding of the input is for tf.data input only
    distribution = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=jax.process_count() == 1)
    keras.distribution.set_distribution(distribution)
    return distribution


def distribution_scope():
    """The context to build, compile and fit models in: the tf.distribute strategy's scope on
    tensorflow once `configure_distribution("data")` set one, else nothing."""
    strategy = _STATE["strategy"]
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def _multi_worker():
    return _STATE["strategy"] is not None and _tf_workers() is not None


def prepare_fit(model):
    """Make `model` (a compiled model or trainer) train data-parallel in `fit` and `evaluate`.

    tensorflow, several workers: Keras 3's fit fails under MultiWorkerMirroredStrategy
    (keras-team/keras#20585). Its symbolic build averages a distributed batch with a
    cross-worker reduce that fails eagerly (the model is built already, so it is skipped: the
    model forgets the strategy it was created under and `fit` runs inside `distribution_scope()`,
    which supplies it), and it averages each step's logs over the workers along axis 0, which
    scalars lack (the steps here return them with shape (1,); the average is then a scalar).
    torch, several processes: every trainable variable's gradient is all-reduced (averaged over
    the processes) as soon as backward has accumulated it, before the optimizer reads it.
    Elsewhere it changes nothing. Returns `model`."""
    if BACKEND == "tensorflow" and _multi_worker() and not getattr(model, "_zoo_multi_worker", False):
        import types

        import tensorflow as tf

        def rank_one(step):
            def wrapped(self, data):
                return {k: tf.reshape(v, (1,)) for k, v in step(data).items()}

            return wrapped

        model._distribute_strategy = None
        model.train_step = types.MethodType(rank_one(model.train_step), model)
        model.test_step = types.MethodType(rank_one(model.test_step), model)
        model._zoo_multi_worker = True
    if BACKEND == "torch" and _STATE["torch"] and process_info()[1] > 1:
        import torch.distributed as dist

        world = dist.get_world_size()

        def average(parameter):
            dist.all_reduce(parameter.grad)
            parameter.grad.div_(world)

        for variable in model.trainable_variables:
            value = variable.value
            if not getattr(value, "_zoo_all_reduce", False):
                value.register_post_accumulate_grad_hook(average)
                value._zoo_all_reduce = True
    return model


def saving_is_collective():
    """Whether every process must take part in saving a model (tf.distribute across workers:
    reading or building the mirrored state runs collectives, so the others save to scratch)."""
    return BACKEND == "tensorflow" and _multi_worker()


def mean_over_processes(values):
    """The mean of each float in `values` over the processes of a torch.distributed run, whose
    `evaluate` reports each process' own rows (equal parts: whole batches only). jax and
    tensorflow average inside their steps already; there, and in one process, `values` as given."""
    values = [float(v) for v in values]
    if BACKEND != "torch" or process_info()[1] == 1:
        return values
    import torch
    import torch.distributed as dist

    total = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(total)
    return (total / dist.get_world_size()).tolist()


def distribute_batches(batches):
    """What `fit` should read for `batches` (a keras PyDataset of this process' rows).

    tensorflow with several workers: a `tf.distribute` dataset whose per-replica batches are
    exactly this process' batches (Keras would otherwise re-split them as global batches).
    Elsewhere `batches` itself."""
    if BACKEND != "tensorflow" or not _multi_worker():
        return batches
    import tensorflow as tf

    first = batches[0]
    signature = tuple(tf.TensorSpec((None, *np.shape(a)[1:]), tf.as_dtype(np.asarray(a).dtype)) for a in first)

    def generate():
        for i in range(len(batches)):
            yield tuple(batches[i])

    def dataset(_):
        data = tf.data.Dataset.from_generator(generate, output_signature=signature)
        return data.apply(tf.data.experimental.assert_cardinality(len(batches)))

    options = tf.distribute.InputOptions(experimental_fetch_to_device=False)
    return _STATE["strategy"].distribute_datasets_from_function(dataset, options)
