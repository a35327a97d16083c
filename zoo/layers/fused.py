"""The residual unit's elementwise sums, each computed as one kernel of its own.

A residual stream is elementwise from unit to unit: y = M(x) + F(x), then a ReLU. XLA:CPU
fuses elementwise producers into their consumers and recomputes them there. In a
convolutional stage it fuses the whole stream above a unit (every BatchNorm, ReLU, skip and
add of the stage) into the transposes that the convolutions' weight gradients read, and
recomputes it in every element of every one of them. A skip that adds work to the stream
(the gates' mix: a product with a tensor of its own per unit) adds it to every
recomputation. Measured with jax's profiler on the bench's ResNet-20 (16 px, batch 32, one
run): the transposes took 9.2 ms of an identity step and 12.1 ms of a gate_shortcut step,
which ran at 1.23x the identity's time for 1.074x its FLOPs.

So on jax on a CPU each sum here runs inside a `lax.cond` whose two branches are the same
function. XLA does not fuse across a conditional: the sum is written once, and a transpose
recomputes at most the ReLU after it. The predicate (is the first element NaN?) only has to
be unknown when compiling; either branch gives the same result. A conditional whose branches
do no work is simplified away by XLA, so the sum itself has to be inside it. In training the
gates' sum has a backward pass of its own, one conditional too (`_jax_gated_sum`). Measured
(2026-12-05, this 2-core CPU, bench/): the plain Keras step of ResNet-20 (32 px, batch 64)
went from 242 to 210 ms, ResNet-56's (16 px, batch 32) from 102 to 84 ms (one run each); the
gates' steps from 1.23x the identity's to 1.08x (shortcut) and 1.16x (exclusive) of the now
faster identity step (medians of three paired runs, bench/results/cpu-2026-12-05-*). Inside
a unit's arm of the DropPathFreeze step (`inside_conditional`) the sums need no conditional of
their own.

Elsewhere the sums are plain ops: on a GPU (`lax.platform_dependent`), under a
keras.distribution (a predicate read from a sharded tensor would need a collective per
unit), and on tensorflow. On torch the gates' mixes are torch's own fused kernels
(`torch.lerp`, `torch.addcmul`): one kernel where the ops take three (see `gated_sum`); the sum
of a mapping linear in the channels is one `torch.addmm` (see `linear_sum`).
"""

import contextlib
import contextvars
import functools

import keras
from keras import ops

BACKEND = keras.backend.backend()
_IN_CONDITIONAL = contextvars.ContextVar("zoo_fused_in_conditional", default=False)


@contextlib.contextmanager
def inside_conditional():
    """Within: the sums are computed inside a conditional already (a unit's arm in the
    DropPathFreeze step), a boundary XLA does not fuse across; they need no conditional of
    their own."""
    token = _IN_CONDITIONAL.set(True)
    try:
        yield
    finally:
        _IN_CONDITIONAL.reset(token)


def _jax_cpu(fn, cpu_fn, *tensors):
    """fn(*tensors) everywhere but on jax on a CPU outside a keras.distribution, where it is
    cpu_fn(*tensors) (chosen when lowering: `lax.platform_dependent`)."""
    if (BACKEND != "jax" or keras.distribution.distribution() is not None or _IN_CONDITIONAL.get()
            or any(0 in t.shape for t in tensors)):
        return fn(*tensors)
    import jax

    return jax.lax.platform_dependent(*tensors, cpu=cpu_fn, default=fn)


def _in_cond(fn, *tensors):
    """fn(*tensors) inside a conditional: a kernel XLA does not fuse into its consumers."""
    import jax
    import jax.numpy as jnp

    return jax.lax.cond(jnp.isnan(tensors[0].reshape(-1)[0]), fn, fn, *tensors)


def _sum(a, b):
    return a + b


def _gated(x, logits, bias, branch, scales_branch):
    g = ops.sigmoid(logits + bias)
    return x + g * (branch - x) if scales_branch else x - g * x + branch


@functools.cache
def _jax_gated_sum(scales_branch):
    """The gates' sum on jax on a CPU: its forward and its backward pass each one kernel (a
    conditional). The forward saves g, so that the backward computes no sigmoid again (in
    micro-benchmarks the saved g was 15% faster over both passes than recomputing it)."""
    import jax
    import jax.numpy as jnp

    def forward(x, logits, bias, branch):
        return _gated(x, logits, bias, branch, scales_branch)

    def forward_saving_g(x, logits, bias, branch):
        g = jax.nn.sigmoid(logits + bias)
        return (x + g * (branch - x) if scales_branch else x - g * x + branch), g

    def backward(dy, x, g, branch):
        """(dx, dlogits, dbias) of the sum; the branch's gradient (dy, or dy g) is left to XLA."""
        if scales_branch:  # y = x + g (branch - x)
            dlogits = dy * (branch - x) * (g - g * g)
        else:  # y = x - g x + branch
            dlogits = -(dy * x) * (g - g * g)
        dbias = jnp.sum(dlogits.astype("float32"), axis=tuple(range(dlogits.ndim - 1)))
        return dy - dy * g, dlogits, dbias

    @jax.custom_vjp
    def gated_sum(x, logits, bias, branch):
        return _in_cond(forward, x, logits, bias, branch)

    def gated_sum_fwd(x, logits, bias, branch):
        y, g = _in_cond(forward_saving_g, x, logits, bias, branch)
        return y, (x, g, branch if scales_branch else None, bias)

    def gated_sum_bwd(saved, dy):
        x, g, branch, bias = saved
        if scales_branch:
            dx, dlogits, dbias = _in_cond(backward, dy, x, g, branch)
        else:
            dx, dlogits, dbias = _in_cond(lambda dy, x, g: backward(dy, x, g, None), dy, x, g)
        # the branch's gradient outside the conditional: XLA may fuse dy g into the branch's
        # backward kernels instead of writing it out, and the branch's backward pass need not wait
        # for the conditional (exclusive gating: within this machine's noise in recorded runs)
        return dx, dlogits, dbias.astype(bias.dtype), (dy * g if scales_branch else dy)

    gated_sum.defvjp(gated_sum_fwd, gated_sum_bwd)
    return gated_sum


def add(mapped, branch):
    """M(x) + branch: the residual add of every skip mapping but the gates."""
    return _jax_cpu(_sum, functools.partial(_in_cond, _sum), mapped, branch)


# On torch a mapping linear in the channels adds the branch in its matmul's kernel
# (`linear_sum`, taken by `SkipMapping.add`); elsewhere the matmul and the add stay two ops
# (XLA fuses or places them).
SUMS_IN_MATMUL = BACKEND == "torch"


def channel_matmul(x, kernel):
    """x @ kernel on the last (channel) axis of x, `kernel` C x D.

    On jax as one 2-D product of the (rows, C) view: the kernel's gradient is then a 2-D matmul
    (x^T dy). Written on the 4-D tensor, it is a contraction over batch, height and width, which
    XLA:CPU computed at about twice the time: 191 against 87 us on (32, 16, 16, 16) x (16, 16),
    micro-timing on this 2-core CPU, 2026-12-06. The gates' 1x1 conv and conv1x1's go through
    it. Elsewhere `ops.matmul`: TensorFlow's and torch's matmuls take the 2-D view themselves."""
    if BACKEND != "jax" or len(x.shape) < 3:
        return ops.matmul(x, kernel)
    flat = ops.matmul(ops.reshape(x, (-1, x.shape[-1])), kernel)
    return ops.reshape(flat, (-1,) + tuple(x.shape[1:-1]) + (kernel.shape[-1],))


def linear_sum(x, kernel, branch):
    """x @ kernel + branch, with `kernel` C x C on the last axis (`x.dtype`): the residual sum of
    a mapping linear in the channels (the matrix mappings, a blend of them, conv1x1 without
    its BatchNorm).

    Torch only (taken where `SUMS_IN_MATMUL`): one `addmm` on the (rows, C) views, the branch
    as its addend: one kernel forward, where a matmul and an add take two; its backward pass is
    the matmul's. Speed / identity's in the bench (ResNet-20, 16 px, batch 32; medians of three
    runs each, alternating, docs/benchmarks-cpu-log.md "2026-12-05 (Intel Xeon, midnight)"):
    orthogonal 0.947 -> 0.983, sparse 0.945 -> 0.976, correlation 0.931 -> 0.953, conv1x1
    0.925 -> 0.958, blend 0.918 -> 0.961 (its blended matrix in torch ops too, `BlendSkip.add`)."""
    import torch

    channels = x.shape[-1]
    return torch.addmm(branch.reshape(-1, channels), x.reshape(-1, channels), kernel).view(x.shape)


def gated_sum(x, kernel, bias, branch, scales_branch, training=False):
    """The gates' residual sum, with g = sigmoid(x kernel + bias) (a 1x1 conv on the
    shortcut): (1 - g) x + g branch where `scales_branch` (exclusive gating), else (1 - g) x +
    branch (shortcut-only gating).

    - jax: the bias, the sigmoid, the mix and the sum are one kernel; in training, on a CPU, so
      is their gradient (a custom backward pass); it has no forward-mode derivative
      (`jax.jvp`), which the analysis takes in inference, where the sum is differentiated as
      written.
    - torch: the bias is added by the matmul (`addmm`), the mix and the sum are one kernel
      (`torch.lerp`, `torch.addcmul`).
    - tensorflow: MatMul, BiasAdd and the sigmoid, which TensorFlow's graph optimiser fuses
      into one oneDNN kernel, then the mix.
    Shortcut-only gating on torch and tensorflow takes 1 - g = sigmoid(-(x kernel + bias)) with
    the kernel and the bias negated (C x C and C values, not a tensor the stream's size): the
    sum is then x (1 - g) + branch, one product and one sum, forward and backward, where
    x - g x + branch takes three. Speed / identity's, ResNet-20 (16 px, batch 32), 16 rounds
    alternating in one process, before -> after this form and the bias in the matmul: torch
    shortcut 0.874 -> 0.895, exclusive 0.878 -> 0.884; tensorflow shortcut 0.868 -> 0.877,
    exclusive 0.836 -> 0.850 (docs/benchmarks-cpu-log.md, "2026-12-05 (Intel Xeon, evening)")."""
    if BACKEND == "torch":
        import torch
        import torch.nn.functional as F

        if scales_branch:
            return torch.lerp(x, branch, torch.sigmoid(F.linear(x, kernel.T, bias)))
        return torch.addcmul(branch, x, torch.sigmoid(F.linear(x, -kernel.T, -bias)))
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def sigmoid_of(kernel, bias):
            flat = tf.reshape(x, (-1, x.shape[-1]))
            return tf.reshape(tf.sigmoid(tf.nn.bias_add(tf.matmul(flat, kernel), bias)), tf.shape(x))

        if scales_branch:
            return x + sigmoid_of(kernel, bias) * (branch - x)
        return x * sigmoid_of(-kernel, -bias) + branch
    logits = channel_matmul(x, kernel)
    plain = functools.partial(_gated, scales_branch=scales_branch)
    on_cpu = _jax_gated_sum(bool(scales_branch)) if training else functools.partial(_in_cond, plain)
    return _jax_cpu(plain, on_cpu, x, logits, bias, branch)


__all__ = ["add", "gated_sum", "linear_sum"]
