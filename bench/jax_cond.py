"""Why DropPathFreeze on jax writes its conv gradients itself (issue #17).

    python -m bench.jax_cond            # 9 residual units of two 3x3 convs, one dropped

Times, in one process, a stack of residual units x + F(x) whose branch F is either multiplied
by its keep flag or put under `lax.cond` (computed only when kept), forward alone and forward
+ backward (`jax.grad`), with jax's own convolution and with the zoo's `gated_conv`
(zoo.layers.grad_plan: the backward convolutions written as forward ones in the canonical
NHWC/HWIO layouts). On this 2-core CPU (jax 0.10.2, 2026-12-04, one run) the gradient under
`lax.cond` took 801 ms against 24 ms with jax's own convolution: the backward convolutions
jax's rule emits are compiled without XLA:CPU's fast convolution inside a conditional
(jax-ml/jax#12868 reports the same for convolutions in loop bodies). With the canonical
backward, the conditional costs nothing (run it to see the numbers on your machine).
"""

import time

import jax
import jax.numpy as jnp


def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def canonical_conv(x, w):
    from zoo.layers.grad_plan import _jax_gated_conv  # what gated_conv runs on jax, any Keras backend

    return _jax_gated_conv()(x, w, True, True, (1, 1), ((1, 1), (1, 1)), (1, 1))


def net(weights, x, dropped, use_cond, conv=conv):
    for (w1, w2), d in zip(weights, dropped):
        branch = lambda x=x, w1=w1, w2=w2: conv(jax.nn.relu(conv(x, w1)), w2)  # noqa: E731
        if use_cond:
            x = x + jax.lax.cond(d, lambda x=x: jnp.zeros_like(x), branch)
        else:
            x = x + branch() * (1.0 - d.astype(x.dtype))
    return jnp.mean(x ** 2)


def time_ms(fn, *args, repeats=20):
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return 1000 * (time.perf_counter() - start) / repeats


def main(units=9, batch=32, size=16, channels=16, repeats=20):
    keys = jax.random.split(jax.random.PRNGKey(0), 2 * units + 1)
    weights = [(0.1 * jax.random.normal(keys[2 * i], (3, 3, channels, channels)),
                0.1 * jax.random.normal(keys[2 * i + 1], (3, 3, channels, channels))) for i in range(units)]
    x = jax.random.normal(keys[-1], (batch, size, size, channels))
    dropped = jnp.zeros((units,), bool).at[units // 3].set(True)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}: {units} units, batch {batch}, {size} px, "
          f"{channels} channels, one unit dropped")
    for label, op in (("jax's conv", conv), ("canonical backward", canonical_conv)):
        for what, make in (("forward", lambda c: jax.jit(lambda w, x, d: net(w, x, d, c, op))),
                           ("forward + backward", lambda c: jax.jit(jax.grad(lambda w, x, d: net(w, x, d, c, op))))):
            plain = time_ms(make(False), weights, x, dropped, repeats=repeats)
            cond = time_ms(make(True), weights, x, dropped, repeats=repeats)
            print(f"{label:18s} {what:18s} branch x keep flag {plain:8.2f} ms   lax.cond {cond:8.2f} ms   "
                  f"ratio {cond / plain:6.2f}")


if __name__ == "__main__":
    main()
