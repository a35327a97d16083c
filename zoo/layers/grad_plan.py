"""Which gradients a training step needs, and convolutions that compute only those.

The DropPathFreeze step (zoo.training.drop_path_freeze) knows, per residual unit, whether the
step changes the unit's variables (`weights`) and whether anything at or below the unit does
(`inputs`: whether the gradient must flow on below it). It sets them as a plan on each unit
(`BaseResidualUnit.plan_gradients`); the unit opens `needed_gradients(weights, inputs, xla)`
around its call, and the zoo's Conv2D reads `current()`.

On jax and tensorflow a conv under a plan is `gated_conv`: the same convolution, whose
backward pass computes the weight gradient and the input gradient each under a conditional,
only where the plan needs it: a frozen unit's convs compute no weight gradient, and no conv
computes an input gradient that nothing below it uses. (A unit the plan needs nothing of is
cut from the gradient as a whole, BatchNorms and activations too: BaseResidualUnit.call.)
How the two gradients are written
depends on the compiler:
- XLA (jax; tensorflow with jit_compile=True): as two forward convolutions in the canonical
  layouts (NHWC input, HWIO kernel). The backward convolutions jax's own rule emits lose
  XLA:CPU's fast convolution inside a conditional (30x slower there, `python -m
  bench.jax_cond`); the canonical ones keep it, so a dropped unit under `lax.cond` costs
  nothing. On jax the gradients are bit-identical to jax's own (tests/test_drop_path_freeze.py).
- tensorflow's graph executor (Keras' default on a CPU): TensorFlow's own gradient kernels,
  with "SAME"/"VALID" padding where the explicit pairs are those (its CPU kernels are slower
  with explicit pairs).
Outside a plan (ordinary training, the analysis' forward-mode products) convs take Keras' path
unchanged; torch leaves frozen variables out of autograd instead.
"""

import contextlib
import contextvars
import functools

_PLAN = contextvars.ContextVar("zoo_gradient_plan", default=None)


@contextlib.contextmanager
def needed_gradients(weights, inputs, xla=True):
    """Within: convs need their weight gradient where `weights` and their input gradient
    where `inputs` (scalar boolean tensors, decided inside the compiled step). `xla`: the step
    is compiled by XLA (jax, or tensorflow with jit_compile), which needs the canonical forms;
    tensorflow's graph executor runs its own gradient kernels faster."""
    token = _PLAN.set((weights, inputs, xla))
    try:
        yield
    finally:
        _PLAN.reset(token)


def current():
    """(weights, inputs, xla) of the innermost `needed_gradients`, or None outside any."""
    return _PLAN.get()


def explicit_padding(padding, sizes, kernel_size, strides, dilation):
    """Keras' "same" / "valid" as (low, high) pairs per spatial axis (TensorFlow's rule)."""
    if padding == "valid":
        return tuple((0, 0) for _ in sizes)
    pairs = []
    for n, k, s, d in zip(sizes, kernel_size, strides, dilation):
        reach = (k - 1) * d + 1
        total = max((-(-n // s) - 1) * s + reach - n, 0)
        pairs.append((total // 2, total - total // 2))
    return tuple(pairs)


@functools.cache
def _jax_gated_conv(every_weight_gradient=False, every_input_gradient=False):
    """The conv whose backward pass computes its gradients as two canonical forward convs, each
    under a conditional on its flag; `every_weight_gradient` / `every_input_gradient`: that
    gradient always, without a conditional (its flag is ignored)."""
    import jax
    import jax.numpy as jnp

    numbers = ("NHWC", "HWIO", "NHWC")

    def forward(x, w, strides, padding, dilation):
        return jax.lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=numbers)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
    def conv(x, w, need_weights, need_inputs, strides, padding, dilation):
        return forward(x, w, strides, padding, dilation)

    def conv_fwd(x, w, need_weights, need_inputs, strides, padding, dilation):
        return forward(x, w, strides, padding, dilation), (x, w, need_weights, need_inputs)

    def conv_bwd(strides, padding, dilation, saved, dy):
        x, w, need_weights, need_inputs = saved
        input_padding, weight_padding = _paddings(padding, strides, dilation, w.shape, x.shape, dy.shape)

        def input_gradient():
            # the transposed conv: dy (dilated by the stride) with the flipped, in/out-swapped kernel
            flipped = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
            return jax.lax.conv_general_dilated(
                dy, flipped, (1, 1), input_padding, lhs_dilation=strides, rhs_dilation=dilation,
                dimension_numbers=numbers,
            ).astype(x.dtype)

        def weight_gradient():
            # channels as the batch, the batch as the channels: x^T (C_in, H, W, N) with dy^T
            # (H', W', N, C_out) as the kernel, dilated by the stride
            out = jax.lax.conv_general_dilated(
                x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), dilation, weight_padding,
                rhs_dilation=strides, dimension_numbers=numbers,
            )
            return out.transpose(1, 2, 0, 3).astype(w.dtype)

        dx = input_gradient() if every_input_gradient else jax.lax.cond(
            need_inputs, input_gradient, lambda: jnp.zeros_like(x))
        dw = weight_gradient() if every_weight_gradient else jax.lax.cond(
            need_weights, weight_gradient, lambda: jnp.zeros_like(w))
        return dx, dw, None, None

    conv.defvjp(conv_fwd, conv_bwd)
    return conv


def _paddings(padding, strides, dilation, kernel_shape, x_shape, dy_shape):
    """(input, weight) gradient paddings, (low, high) per axis, of a conv with `padding` pairs."""
    input_padding, weight_padding = [], []
    for i, ((low, _), s, d) in enumerate(zip(padding, strides, dilation)):
        k, n, m = kernel_shape[i], x_shape[1 + i], dy_shape[1 + i]
        reach = (k - 1) * d + 1
        input_padding.append((reach - 1 - low, n - 1 - (m - 1) * s + low))
        weight_padding.append((low, reach + (m - 1) * s - n - low))
    return input_padding, weight_padding


def _tf_gated_conv(x, w, need_weights, need_inputs, strides, padding, dilation, canonical):
    import tensorflow as tf

    explicit = [[0, 0], *map(list, padding), [0, 0]]
    # TensorFlow's CPU kernels are slower with explicit paddings than with the named ones
    named = None
    if all(pair == (0, 0) for pair in padding):
        named = "VALID"
    elif padding == explicit_padding("same", x.shape[1:3], w.shape[:2], strides, dilation):
        named = "SAME"

    @tf.custom_gradient
    def conv(x, w):
        # the gradient reads x and w through identities made here: inside a unit's conditional,
        # x may be a tensor captured from outside it, which TensorFlow's graph executor leaves an
        # unfed placeholder when a custom gradient reads it directly
        x, w = tf.identity(x), tf.identity(w)
        y = tf.nn.conv2d(x, w, strides, named or explicit, dilations=dilation)

        def grad(dy):
            x_, w_, dy_ = x, w, dy
            options = dict(strides=[1, *strides, 1], padding=named or "EXPLICIT", dilations=[1, *dilation, 1],
                           explicit_paddings=[] if named else sum(explicit, []))
            input_padding, weight_padding = _paddings(padding, strides, dilation, w.shape, x.shape, dy.shape)

            def input_gradient():
                if not canonical:  # TensorFlow's own kernel (graph executor, oneDNN)
                    return tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x_), filter=w_, out_backprop=dy_, **options)
                flipped = tf.transpose(tf.reverse(w_, [0, 1]), [0, 1, 3, 2])
                if max(strides) == 1:
                    return tf.nn.conv2d(dy_, flipped, 1, [[0, 0], *map(list, input_padding), [0, 0]],
                                        dilations=dilation)
                # strided: TensorFlow has no input-dilated conv but the transposed one
                return tf.nn.conv2d_transpose(dy_, w_, tf.shape(x_), strides, explicit, dilations=dilation)

            def weight_gradient():
                if not canonical:
                    return tf.raw_ops.Conv2DBackpropFilter(input=x_, filter_sizes=tf.shape(w_), out_backprop=dy_, **options)
                xt = tf.transpose(x_, [3, 1, 2, 0])
                pairs = []
                for axis, (low, high) in enumerate(weight_padding):
                    if high < 0:  # rows the forward conv never read
                        xt = xt[:, : x.shape[1] + high] if axis == 0 else xt[:, :, : x.shape[2] + high]
                        high = 0
                    pairs.append([low, high])
                out = tf.nn.conv2d(xt, tf.transpose(dy_, [1, 2, 0, 3]), dilation, [[0, 0], *pairs, [0, 0]],
                                   dilations=strides)
                return tf.transpose(out, [1, 2, 0, 3])

            def where_needed(flag, gradient, like):
                # a flag that is a Python True (known when tracing): no conditional
                return gradient() if flag is True else tf.cond(flag, gradient, lambda: tf.zeros_like(like))

            return where_needed(need_inputs, input_gradient, x_), where_needed(need_weights, weight_gradient, w_)

        return y, grad

    return conv(x, w)


def gated_conv(x, w, plan, strides, padding, dilation):
    """jax and tensorflow: the 2-D convolution of NHWC `x` with HWIO `w` whose gradients follow
    `plan` ((weights, inputs[, xla]) of `current()`). `padding`: Keras' "same"/"valid" or (low, high)
    pairs."""
    import keras

    strides, dilation = tuple(strides), tuple(dilation)
    if isinstance(padding, str):
        padding = explicit_padding(padding, x.shape[1:3], w.shape[:2], strides, dilation)
    padding = tuple(map(tuple, padding))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        need_weights, need_inputs = (flag if flag is True else tf.cast(flag, bool) for flag in plan[:2])
        return _tf_gated_conv(tf.convert_to_tensor(x), tf.convert_to_tensor(w), need_weights, need_inputs,
                              strides, padding, dilation, canonical=plan[2] if len(plan) > 2 else True)
    import jax.numpy as jnp

    x, w = jnp.asarray(x), jnp.asarray(getattr(w, "value", w))  # a Keras variable: its value
    known = (plan[0] is True, plan[1] is True)  # needed, known when tracing: no conditional
    need_weights, need_inputs = (jnp.asarray(flag, bool) for flag in plan[:2])
    return _jax_gated_conv(*known)(x, w, need_weights, need_inputs, strides, padding, dilation)
