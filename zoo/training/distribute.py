"""Multi-device training through `keras.distribution`: data parallel, on the JAX backend.

    from zoo.training import configure_distribution
    configure_distribution("data", batch_size=128)   # before the model is built
    model = zoo.get_model(...); model.compile(...); model.fit(...)   # unchanged

"data" sets `keras.distribution.DataParallel`: every variable is replicated on every device,
each batch is split along its first axis, and XLA all-reduces the gradients inside the one
compiled step, so the update equals the single-device update up to the order of the sums.
Several processes (hosts, or processes on one machine): start one per host with Keras'
environment (KERAS_DISTRIBUTION_JOB_ADDRESSES = the coordinator's host:port,
KERAS_DISTRIBUTION_NUM_PROCESSES, KERAS_DISTRIBUTION_PROCESS_ID) and call
`initialize_processes()` in each before anything else: it runs `keras.distribution.initialize`
(`jax.distributed.initialize`, gloo collectives on CPU). `list_devices()` then holds every
device of every process, and each process feeds its own part of the global batch
(`process_index` / `process_count` of zoo.data's batches).

Keras implements `keras.distribution` for JAX; on TensorFlow and PyTorch "data" raises a
ValueError that says so, and "none" (one device) works everywhere.
"""

import os

import keras
import numpy as np

from zoo.errors import check_choice

DISTRIBUTE_MODES = ("none", "data")


def initialize_processes():
    """Join the multi-process run described by Keras' environment; returns (index, count).

    Reads KERAS_DISTRIBUTION_NUM_PROCESSES (absent or 1: one process, nothing to join, (0, 1)),
    KERAS_DISTRIBUTION_JOB_ADDRESSES and KERAS_DISTRIBUTION_PROCESS_ID, as
    `keras.distribution.initialize` does. Call it first, before any computation."""
    count = int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES") or 1)
    if count <= 1:
        return 0, 1
    backend = keras.backend.backend()
    if backend != "jax":
        raise ValueError(
            f"Received KERAS_DISTRIBUTION_NUM_PROCESSES={count} on the {backend} backend: training over several "
            "processes goes through keras.distribution, which the zoo supports on the jax backend (run with "
            "KERAS_BACKEND=jax); tf.distribute and torch.distributed are not wired in yet."
        )
    import jax

    if not jax.distributed.is_initialized():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes; GPUs use NCCL
        keras.distribution.initialize()
    return jax.process_index(), jax.process_count()


def host_array(value):
    """A numpy copy of `value` (a tensor or a Keras variable) readable in this process: of an
    array replicated over several processes, this process's replica."""
    value = getattr(value, "value", value)
    if keras.backend.backend() == "jax":
        import jax

        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            return np.asarray(value.addressable_data(0))
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
    if keras.backend.backend() != "jax":
        return 0, 1
    import jax

    if not jax.distributed.is_initialized():
        return 0, 1
    return jax.process_index(), jax.process_count()


def configure_distribution(mode="none", devices=None, batch_size=None):
    """Set the global Keras distribution for `mode`; returns it (None for "none").

    Args:
        mode: "none" (leave Keras' default: one device) or "data" (DataParallel).
        devices: device names for "data" (default: `keras.distribution.list_devices()`, every
            device of every process).
        batch_size: the batch this process feeds each step; checked to split evenly over this
            process' devices.

    Call it before building the model: variables created earlier are not laid out.
    """
    check_choice("distribute", mode, DISTRIBUTE_MODES)
    if mode == "none":
        return None
    backend = keras.backend.backend()
    if backend != "jax":
        raise ValueError(
            f"Received distribute={mode!r} on the {backend} backend: data-parallel training goes through "
            f"keras.distribution, which Keras (and so the zoo) implements for the jax backend only. Run with "
            f"KERAS_BACKEND=jax for several devices, or use distribute='none' to train on one device with {backend}."
        )
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
