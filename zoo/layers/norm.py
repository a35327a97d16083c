"""BatchNormalization over the global batch of a data-parallel run that spans several processes.

With `keras.distribution` (jax) a model is one SPMD program and BatchNormalization's batch
statistics already cover the global batch. With `tf.distribute` and `torch.distributed` each
replica runs the model on its own rows, so plain BatchNormalization would normalise each part
of the batch by its own statistics: the run would no longer train the model that one process
trains on the same global batch. `BatchNormalization` (what every zoo model builds its
BatchNorms with, through `batch_normalization()`) synchronises its statistics while such a run
is active and is Keras' layer otherwise; it keeps Keras' class name, so weight files are those
of Keras' layer.

The statistics are two-pass, as the single-device ones: the global mean first, then the
global mean of squared deviations (Keras' `synchronized=True` on TensorFlow uses
E[x^2] - E[x]^2, which loses float32 digits where |mean| >> std, e.g. after a stem conv on
raw pixels). The all-reduces are differentiable (tf.distribute's `ReplicaContext.all_reduce`,
`torch.distributed.nn.functional.all_reduce`), so gradients flow through the shared statistics
to every replica's rows, as they would in one process.

On the torch backend the zoo's layer also runs as one fused kernel: Keras' layer builds batch
normalisation from primitives (moments, then a chain of elementwise ops, each with its own
autograd node), where `torch.native_batch_norm` computes the statistics, the normalisation and
(in its backward) every gradient in one pass over channels-last memory. The moving statistics
are updated as Keras does (the biased batch variance, Keras' momentum convention).
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
    """`keras.layers.BatchNormalization` whose training statistics cover every replica's rows,
    and which runs as torch's fused batch-norm kernel on the torch backend.

    In one process, with masked inputs or batch renormalisation it computes what Keras' layer
    computes (on torch in one fused kernel, equal to within float32 rounding). It keeps the
    class name: Keras names a layer's place in a `.weights.h5` file after its class, so a model
    trained over several processes or with the fused kernel writes the same file as Keras' layer.
    """

    def call(self, inputs, training=None, mask=None):
        if BACKEND == "torch" and mask is None and not self.renorm and replica_count() == 1:
            return self._fused_torch_call(inputs, training)
        return super().call(inputs, training=training, mask=mask)

    def _fused_torch_call(self, inputs, training):
        import torch

        x = ops.convert_to_tensor(inputs)
        ndim = x.dim()
        axis = self.axis % ndim
        to_first = [0, axis] + [i for i in range(1, ndim) if i != axis]  # channels to dim 1: a view
        back = [to_first.index(i) for i in range(ndim)]
        x = x.to(torch.float32).permute(to_first)  # Keras computes batch norm in float32 too
        gamma = self.gamma.value.to(torch.float32) if self.scale else None
        beta = self.beta.value.to(torch.float32) if self.center else None
        if training and self.trainable:
            out, mean, invstd = torch.native_batch_norm(x, gamma, beta, None, None, True, 0.0, self.epsilon)
            with torch.no_grad():
                variance = torch.reciprocal(torch.square(invstd)) - self.epsilon  # biased, as Keras'
                self.moving_mean.assign(self.moving_mean.value * self.momentum + mean * (1.0 - self.momentum))
                self.moving_variance.assign(
                    self.moving_variance.value * self.momentum + variance * (1.0 - self.momentum))
        else:
            out = torch.batch_norm(x, gamma, beta, self.moving_mean.value.to(torch.float32),
                                   self.moving_variance.value.to(torch.float32), False, 0.0, self.epsilon, False)
        return ops.cast(out.permute(back), self.compute_dtype)

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
    """The zoo's BatchNormalization layer (see `BatchNormalization`)."""
    return BatchNormalization(**kwargs)
