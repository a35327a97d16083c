"""Synthetic long-range sequence tasks, generated here (nothing is downloaded).

The adding problem (Hochreiter & Schmidhuber 1997; the setting of Le et al. 2015,
arXiv 1504.00941): each step carries a value u_t ~ U(0, 1) and a marker; exactly two steps
are marked, one in the first half and one in the second, and the target is the sum of their
two values. Solving it means remembering *when* the marked values came, over `length` steps;
always predicting 1 scores a mean squared error of 1/6 ~ 0.167, the baseline to beat.

A time-invariant / time-variant pair of sequence tasks (`sign_of_weighted_sum`), the data of the
Lechner et al. RNN study (docs/claims.md): the same inputs, labelled by a rule that either
ignores or depends on when a value came.
"""

import numpy as np

from zoo.errors import check_range


def adding_problem(num_samples, length, seed=0):
    """`num_samples` sequences of the adding problem of `length` steps.

    Returns (x, y): x float32 (num_samples, length, 2) with x[..., 0] the values and
    x[..., 1] the 0/1 markers; y float32 (num_samples, 1), the sum of the two marked values.
    The same (num_samples, length, seed) always gives the same arrays.
    """
    num_samples = int(check_range("num_samples", num_samples, low=1, integer=True))
    length = int(check_range("length", length, low=2, integer=True))
    seed = int(check_range("seed", seed, low=0, integer=True))
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 1.0, size=(num_samples, length))
    half = length // 2
    first = rng.integers(0, half, size=num_samples)
    second = rng.integers(half, length, size=num_samples)
    markers = np.zeros((num_samples, length))
    rows = np.arange(num_samples)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = np.stack([values, markers], axis=-1).astype("float32")
    y = (values[rows, first] + values[rows, second])[:, None].astype("float32")
    return x, y


TIME_RULES = ("time_invariant", "time_variant")


def sign_of_weighted_sum(num_samples, length, rule, seed=0):
    """A pair of sequence classification tasks that differ only in whether time matters.

    Each step carries x_t ~ N(0, 1); the label is 1[sum_t w_t x_t > 0], with
        rule="time_invariant":  w_t = 1              (every step counts the same, at any time:
                                                      shuffling the steps keeps the label)
        rule="time_variant":    w_t = cos(2 pi t / T) (the same value means the opposite at
                                                      another time: the rule depends on t)
    Same inputs, same difficulty for a model that knows the rule (one linear read-out over
    time), balanced labels; only the role of time differs, which is what Lechner et al.'s RNN
    claim is about. Returns (x, y): x float32 (num_samples, length, 1), y int32 (num_samples,).
    """
    num_samples = int(check_range("num_samples", num_samples, low=1, integer=True))
    length = int(check_range("length", length, low=2, integer=True))
    seed = int(check_range("seed", seed, low=0, integer=True))
    if rule not in TIME_RULES:
        raise ValueError(f"Received rule={rule!r}; allowed values are {', '.join(map(repr, TIME_RULES))}.")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_samples, length))
    t = np.arange(length)
    w = np.ones(length) if rule == "time_invariant" else np.cos(2 * np.pi * t / length)
    y = (x @ w > 0).astype("int32")
    return x[..., None].astype("float32"), y
