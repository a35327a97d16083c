"""Per-backend forward- and reverse-mode products: the one backend-specific module of analysis.

    jvp(fn, x, v) -> (fn(x), J v)          J = d fn / d x at x
    vjp(fn, x, u) -> (fn(x), J^T u)
    grad(fn, x)   -> (fn(x), d sum(fn(x)) / d x)

`fn` maps one backend tensor to one backend tensor (Keras layers called in eval mode work:
their variables are read as constants, nothing is differentiated but `x`). `x`, `v` and `u`
may be numpy arrays; results come back as numpy float arrays. Each product costs about one
forward plus one backward pass of `fn`: no Jacobian is ever formed here.

    JAX         jax.jvp, jax.vjp
    TensorFlow  tf.autodiff.ForwardAccumulator (forward mode), tf.GradientTape (reverse mode)
    PyTorch     torch.func.jvp, torch.func.vjp
"""

import functools

import keras
import numpy as np


def _to_tensor(a, like=None):
    dtype = "float32" if like is None else keras.backend.standardize_dtype(like.dtype)
    return keras.ops.convert_to_tensor(np.asarray(a), dtype=dtype)


def _to_numpy(t):
    return np.asarray(keras.ops.convert_to_numpy(t))


def _products():
    backend = keras.backend.backend()
    if backend not in _BACKENDS:
        raise ValueError(
            f"Residual Jacobians need automatic differentiation; the {backend!r} backend has none "
            f"here. Use one of {sorted(_BACKENDS)} (KERAS_BACKEND)."
        )
    return _BACKENDS[backend]


def jvp(fn, x, v):
    """(fn(x), J v) as numpy arrays; `v` has the shape of `x`."""
    x = _to_tensor(x)
    v = _to_tensor(v, like=x)
    y, jv = _products()[0](fn, x, v)
    return _to_numpy(y), _to_numpy(jv)


def vjp(fn, x, u):
    """(fn(x), J^T u) as numpy arrays; `u` has the shape of fn(x)."""
    x = _to_tensor(x)
    u = _to_tensor(u, like=x)
    y, ju = _products()[1](fn, x, u)
    return _to_numpy(y), _to_numpy(ju)


def grad(fn, x):
    """(fn(x), the gradient of sum(fn(x)) with respect to x) as numpy arrays."""
    x = _to_tensor(x)
    y, g = _products()[1](fn, x, None)
    return _to_numpy(y), _to_numpy(g)


# === JAX ===
# Large products are compiled once per (fn, shapes): eager JAX compiles every primitive for
# every new shape. Small ones run eagerly, where primitives compiled for one unit serve the
# next unit of the same shapes and a whole-function compile would cost more than it saves.
# Keras variables read inside the trace become constants of the compiled product.
JAX_JIT_MIN_ELEMENTS = 1 << 16


@functools.lru_cache(maxsize=16)
def _jax_compiled(fn):
    import jax

    return jax.jit(functools.partial(_jax_forward, fn)), jax.jit(functools.partial(_jax_reverse, fn))


def _jax_forward(fn, x, v):
    import jax

    return jax.jvp(fn, (x,), (v,))


def _jax_reverse(fn, x, u):
    import jax
    import jax.numpy as jnp

    y, pullback = jax.vjp(fn, x)
    return y, pullback(jnp.ones_like(y) if u is None else u)[0]


def _jax_jvp(fn, x, v):
    if x.size < JAX_JIT_MIN_ELEMENTS:
        return _jax_forward(fn, x, v)
    return _jax_compiled(fn)[0](x, v)


def _jax_vjp(fn, x, u):
    if x.size < JAX_JIT_MIN_ELEMENTS:
        return _jax_reverse(fn, x, u)
    return _jax_compiled(fn)[1](x, u)


# === TensorFlow ===
def _tf_jvp(fn, x, v):
    import tensorflow as tf

    with tf.autodiff.ForwardAccumulator(primals=x, tangents=v) as acc:
        y = fn(x)
    jv = acc.jvp(y, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return y, jv


def _tf_vjp(fn, x, u):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    g = tape.gradient(y, x, output_gradients=u, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return y, g


# === PyTorch ===
def _torch_jvp(fn, x, v):
    import torch

    with torch.enable_grad():
        return torch.func.jvp(fn, (x.detach(),), (v,))


def _torch_vjp(fn, x, u):
    import torch

    with torch.enable_grad():
        y, pullback = torch.func.vjp(fn, x.detach())
        return y.detach(), pullback(torch.ones_like(y) if u is None else u)[0].detach()


_BACKENDS = {
    "jax": (_jax_jvp, _jax_vjp),
    "tensorflow": (_tf_jvp, _tf_vjp),
    "torch": (_torch_jvp, _torch_vjp),
}
