"""Multi-device training through `keras.distribution`: data parallel, on the JAX backend.

    from zoo.training import configure_distribution
    configure_distribution("data", batch_size=128)   # before the model is built
    model = zoo.get_model(...); model.compile(...); model.fit(...)   # unchanged

"data" sets `keras.distribution.DataParallel`: every variable is replicated on every device,
each batch is split along its first axis, and XLA all-reduces the gradients inside the one
compiled step, so the update equals the single-device update up to the order of the sums.
Several hosts: call `keras.distribution.initialize()` (which runs `jax.distributed.initialize`)
in every process first; `list_devices()` then holds every device of every host, and each
process feeds its own part of the global batch.

Keras implements `keras.distribution` for JAX; on TensorFlow and PyTorch "data" raises a
ValueError that says so, and "none" (one device) works everywhere.
"""

import keras

from zoo.errors import check_choice

DISTRIBUTE_MODES = ("none", "data")


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
    distribution = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(distribution)
    return distribution
