"""BatchNormalization over the global batch of a data-parallel run that spans several processes.

With `keras.distribution` (jax) a model is one SPMD program and BatchNormalization's batch
statistics already cover the global batch. With `tf.distribute` and `torch.distributed` each
replica runs the model on its own rows, so plain BatchNormalization would normalise each part
of the batch by its own statistics: the run would no longer train the model that one process
trains on the same global batch. `batch_normalization()` (what every zoo model builds its
BatchNorms with) returns `zoo.layers.norm.BatchNormalization` (synchronised) while such a run is active and plain
`keras.layers.BatchNormalization` otherwise, so single-process models and their saved configs
are unchanged.

The statistics are two-pass, as the single-device ones: the global mean first, then the
global mean of squared deviations (Keras' `synchronized=True` on TensorFlow uses
E[x^2] - E[x]^2, which loses float32 digits where |mean| >> std, e.g. after a stem conv on
raw pixels). The all-reduces are differentiable (tf.distribute's `ReplicaContext.all_reduce`,
`torch.distributed.nn.functional.all_reduce`), so gradients flow through the shared statistics
to every replica's rows, as they would in one process.
"""

import keras
from keras import ops

BACKEND = keras.backend.backend()


def replica_count():
    """Replicas training one model in step, each on its own rows: 1 unless a tf.distribute
    strategy (in its scope) or a torch.distributed process group spans several."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.distribute.get_strategy().num_replicas_in_sync if tf.distribute.has_strategy() else 1
    if BACKEND == "torch":
        import torch.distributed as dist

        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return 1


def all_reduce_sum(x):
    """Differentiable sum of `x` over the replicas (x itself with one replica)."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return x
        return context.all_reduce(tf.distribute.ReduceOp.SUM, x)
    if BACKEND == "torch":
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return x
        import warnings

        from torch.distributed.nn.functional import all_reduce

        with warnings.catch_warnings():  # "deprecated": its successor's backward is not documented yet
            warnings.simplefilter("ignore", FutureWarning)
            return all_reduce(x)  # SUM; its backward all-reduces the gradient (SUM)
    return x


@keras.saving.register_keras_serializable(package="zoo")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training statistics cover every replica's rows.

    Outside a multi-replica run (and for masked inputs) it is Keras' layer exactly. It keeps the
    class name: Keras names a layer's place in a `.weights.h5` file after its class, so a model
    trained over several processes writes the same file as one trained alone.
    """

    def _moments(self, inputs, mask):
        if mask is not None or replica_count() == 1:
            return super()._moments(inputs, mask)
        axes = self._reduction_axes
        local = ops.cast(ops.prod(ops.take(ops.shape(inputs), axes)), inputs.dtype)
        totals = all_reduce_sum(ops.concatenate([ops.sum(inputs, axis=axes), ops.reshape(local, (1,))]))
        count = totals[-1]
        mean = totals[:-1] / count
        shape = [1] * len(inputs.shape)
        shape[self.axis] = -1
        deviation = inputs - ops.reshape(mean, shape)
        variance = all_reduce_sum(ops.sum(ops.square(deviation), axis=axes)) / count
        return mean, variance


def batch_normalization(**kwargs):
    """A BatchNormalization layer: synchronised over the replicas in a multi-replica run."""
    if replica_count() > 1:
        return BatchNormalization(**kwargs)
    return keras.layers.BatchNormalization(**kwargs)
