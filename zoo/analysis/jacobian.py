"""Jacobians of a map at a point, as matrix-free operators, and their top singular triplets.

    op = JacobianOperator(fn, x)            # J = d fn / d x at x; x is ONE sample (1, ...)
    op.matvec(V)    # (n, in_dim)  -> (n, out_dim):  rows J v      (one batched JVP)
    op.rmatvec(U)   # (n, out_dim) -> (n, in_dim):   rows J^T u    (one batched VJP)
    top_singular_triplets(op, k)     # subspace iteration: only n x D blocks, never D x D
    dense_singular_triplets(op, k)   # exact: builds J column by column (small D only)

A block of n products is one autodiff call on x repeated n times: `fn` must treat the samples
of a batch independently, which every residual branch does in eval mode (BatchNorm uses its
moving statistics). Products are float32 (the model's dtype); the linear algebra around them
is float64 numpy.
"""

import dataclasses

import keras
import numpy as np

from zoo.analysis import autodiff
from zoo.errors import check_choice, check_range

DENSE_MAX_DIM = 2048  # "auto" builds the exact Jacobian when both dimensions are at most this


class JacobianOperator:
    """The Jacobian of `fn` at the single sample `x` (shape (1, ...)), matrix-free."""

    def __init__(self, fn, x):
        x = np.asarray(x, dtype="float32")
        if x.ndim < 2 or x.shape[0] != 1:
            raise ValueError(
                f"Received x of shape {x.shape}; a JacobianOperator is taken at one sample, "
                "shape (1, ...) (the batch axis first, of size 1)."
            )
        self.fn = fn
        self.x = x
        self.in_shape = x.shape[1:]
        self.value = np.asarray(keras.ops.convert_to_numpy(fn(keras.ops.convert_to_tensor(x))))
        self.out_shape = self.value.shape[1:]
        self.in_dim = int(np.prod(self.in_shape))
        self.out_dim = int(np.prod(self.out_shape))
        self.products = 0  # Jacobian-vector products computed so far (JVPs + VJPs)

    @property
    def shape(self):
        return (self.out_dim, self.in_dim)

    def _check_block(self, block, dim, what):
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[1] != dim:
            raise ValueError(f"Received a block of shape {block.shape} for {what}; expected (n, {dim}).")
        return block

    def matvec(self, vectors):
        """J v for every row v of `vectors` (n, in_dim) -> (n, out_dim)."""
        vectors = self._check_block(vectors, self.in_dim, "matvec")
        n = vectors.shape[0]
        xs = np.repeat(self.x, n, axis=0)
        _, jv = autodiff.jvp(self.fn, xs, vectors.reshape((n,) + self.in_shape).astype("float32"))
        self.products += n
        return jv.reshape(n, self.out_dim).astype("float64")

    def rmatvec(self, vectors):
        """J^T u for every row u of `vectors` (n, out_dim) -> (n, in_dim)."""
        vectors = self._check_block(vectors, self.out_dim, "rmatvec")
        n = vectors.shape[0]
        xs = np.repeat(self.x, n, axis=0)
        _, ju = autodiff.vjp(self.fn, xs, vectors.reshape((n,) + self.out_shape).astype("float32"))
        self.products += n
        return ju.reshape(n, self.in_dim).astype("float64")


@dataclasses.dataclass
class SingularTriplets:
    """Top-k singular values (descending) with left (k, out_dim) and right (k, in_dim) vectors.

    `spectrum` holds every singular value the method saw: all of them for "dense", the
    k + oversample Ritz values for "subspace" (so a rank read from it is a lower bound).
    """

    values: np.ndarray
    left: np.ndarray
    right: np.ndarray
    spectrum: np.ndarray
    method: str
    iterations: int
    converged: bool
    products: int


def explicit_jacobian(op, chunk=256, max_dim=DENSE_MAX_DIM):
    """The full (out_dim, in_dim) Jacobian, `chunk` columns per JVP call.

    Refuses when a dimension exceeds `max_dim`: that is what the matrix-free path is for.
    """
    if max(op.in_dim, op.out_dim) > max_dim:
        raise ValueError(
            f"Refusing to form a {op.out_dim} x {op.in_dim} Jacobian (max_dim={max_dim}); "
            "use top_singular_triplets, which never forms it."
        )
    eye = np.eye(op.in_dim)
    columns = [op.matvec(eye[i : i + chunk]) for i in range(0, op.in_dim, chunk)]
    return np.concatenate(columns, axis=0).T


def dense_singular_triplets(op, k, max_dim=DENSE_MAX_DIM):
    """Exact top-k triplets from numpy's SVD of the explicit Jacobian."""
    k = _check_k(k, op)
    jac = explicit_jacobian(op, max_dim=max_dim)
    u, s, vt = np.linalg.svd(jac, full_matrices=False)
    return SingularTriplets(s[:k], u[:, :k].T, vt[:k], s, "dense", 1, True, op.products)


def top_singular_triplets(op, k, oversample=8, max_iters=200, tol=1e-7, seed=0):
    """Top-k singular triplets of `op` by randomized subspace iteration (block power method).

    Each iteration: Y = J V (q JVPs), Q = orth(Y), Z = J^T Q (q VJPs), then Rayleigh-Ritz:
    Q^T J = Z^T = U_b S V_b^T, so J ~ (Q U_b) S V_b^T; V <- V_b for the next round. Stops when
    every one of the top k values moves by less than `tol` relative to itself (floored at
    1e-3 sigma_1) between iterations. q = k + oversample (at most min(in_dim, out_dim));
    the error falls like (sigma_{q+1} / sigma_k)^(2 x iterations). Memory: q x D blocks only.
    """
    k = _check_k(k, op)
    check_range("oversample", oversample, low=0, integer=True)
    check_range("max_iters", max_iters, low=1, integer=True)
    q = min(k + int(oversample), op.in_dim, op.out_dim)
    rng = np.random.default_rng(seed)
    v = np.linalg.qr(rng.standard_normal((op.in_dim, q)))[0]
    previous = None
    converged = False
    for iteration in range(1, int(max_iters) + 1):
        y = op.matvec(v.T).T  # (out_dim, q)
        basis = np.linalg.qr(y)[0]
        z = op.rmatvec(basis.T).T  # (in_dim, q): z^T = basis^T J
        ub, s, vbt = np.linalg.svd(z.T, full_matrices=False)
        v = vbt.T
        if previous is not None:
            scale = np.maximum(s[:k], 1e-3 * max(s[0], np.finfo(float).tiny))
            if np.max(np.abs(s[:k] - previous) / scale) < tol:
                converged = True
                break
        previous = s[:k]
    left = (basis @ ub).T
    return SingularTriplets(s[:k], left[:k], vbt[:k], s, "subspace", iteration, converged, op.products)


def singular_triplets(fn, x, k, method="auto", dense_max_dim=DENSE_MAX_DIM, **subspace_options):
    """Top-k singular triplets of d fn / d x at the one sample x.

    method: "dense" (exact SVD of the explicit Jacobian), "subspace" (matrix-free), or "auto"
    (dense when both dimensions are at most `dense_max_dim`).
    """
    check_choice("method", method, ("auto", "dense", "subspace"))
    op = JacobianOperator(fn, x)
    if method == "dense" or (method == "auto" and max(op.in_dim, op.out_dim) <= dense_max_dim):
        return dense_singular_triplets(op, k, max_dim=max(dense_max_dim, op.in_dim, op.out_dim))
    return top_singular_triplets(op, k, **subspace_options)


def _check_k(k, op):
    return int(check_range("k", k, low=1, high=min(op.in_dim, op.out_dim), integer=True))
