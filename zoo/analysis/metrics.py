"""Residual Alignment metrics (Li & Papyan 2023, arXiv 2401.09018; SPEC section 6), on numpy.

    RA1  trajectory_line_metrics(points): variance share on the first principal direction
         (1 = the representations h_0..h_L lie on a line) and the coefficient of variation of
         the step lengths ||h_{i+1} - h_i|| (0 = equispaced).
    RA2  vector_alignment(u, v) = |u . v| / (|u| |v|); alignment_matrix(vectors) of all pairs.
    RA3  numerical_rank(singular_values, tol): how many exceed tol * sigma_1.
    RA4  log_log_slope(depths, sigma_1): slope of log sigma_1 against log depth (RA4: about -1).
    Iterative refinement: cosine(F_i(h_i), -dLoss/dh_i).
"""

import numpy as np


def _points(points):
    points = np.asarray(points, dtype="float64")
    if points.ndim < 2 or points.shape[0] < 2:
        raise ValueError(f"Received points of shape {points.shape}; a trajectory needs (n >= 2, ...) points.")
    return points.reshape(points.shape[0], -1)


def principal_directions(points, count=2):
    """(mean, top `count` principal directions (count, D), variances along all directions)."""
    points = _points(points)
    mean = points.mean(axis=0)
    _, s, vt = np.linalg.svd(points - mean, full_matrices=False)
    return mean, vt[:count], s**2 / points.shape[0]


def line_variance_share(points):
    """Share of the trajectory's variance on its first principal direction, in [0, 1]."""
    _, _, variances = principal_directions(points)
    total = variances.sum()
    return float(variances[0] / total) if total > 0 else 1.0


def step_length_cv(points):
    """Coefficient of variation (std / mean) of the step lengths ||h_{i+1} - h_i||."""
    steps = np.linalg.norm(np.diff(_points(points), axis=0), axis=1)
    mean = steps.mean()
    return float(steps.std() / mean) if mean > 0 else 0.0


def trajectory_line_metrics(points):
    """RA1 of one trajectory: variance share, step-length CV, and its 2-D PCA projection."""
    points = _points(points)
    mean, directions, _ = principal_directions(points, count=2)
    projection = (points - mean) @ directions.T
    if projection.shape[1] < 2:  # a one-dimensional trajectory: pad the second coordinate
        projection = np.pad(projection, [(0, 0), (0, 2 - projection.shape[1])])
    return {
        "variance_share": line_variance_share(points),
        "step_cv": step_length_cv(points),
        "step_lengths": np.linalg.norm(np.diff(points, axis=0), axis=1).tolist(),
        "projection": projection.tolist(),
    }


def equal_shape_segments(shapes):
    """Maximal runs [start, end) of consecutive equal shapes (a trajectory through a ResNet
    changes dimension at each stage; RA1 is measured within each run)."""
    segments, start = [], 0
    for i in range(1, len(shapes) + 1):
        if i == len(shapes) or tuple(shapes[i]) != tuple(shapes[start]):
            segments.append((start, i))
            start = i
    return segments


def vector_alignment(u, v):
    """|u . v| / (|u| |v|): 1 when the two vectors are parallel (either sign)."""
    u = np.ravel(np.asarray(u, dtype="float64"))
    v = np.ravel(np.asarray(v, dtype="float64"))
    if u.shape != v.shape:
        raise ValueError(f"Received vectors of sizes {u.size} and {v.size}; alignment needs equal sizes.")
    norm = np.linalg.norm(u) * np.linalg.norm(v)
    return float(abs(u @ v) / norm) if norm > 0 else 0.0


def alignment_matrix(vectors):
    """|cos| between every pair of vectors; NaN where their sizes differ (other stages)."""
    n = len(vectors)
    matrix = np.full((n, n), np.nan)
    for i in range(n):
        for j in range(n):
            if np.size(vectors[i]) == np.size(vectors[j]):
                matrix[i, j] = vector_alignment(vectors[i], vectors[j])
    return matrix


def mean_off_diagonal(matrix):
    """Mean of the finite off-diagonal entries (NaN when there are none)."""
    matrix = np.asarray(matrix, dtype="float64")
    mask = ~np.eye(matrix.shape[0], dtype=bool) & np.isfinite(matrix)
    return float(matrix[mask].mean()) if mask.any() else float("nan")


def numerical_rank(singular_values, tol=1e-2):
    """How many singular values exceed tol * sigma_1 (0 for a zero map)."""
    s = np.asarray(singular_values, dtype="float64")
    if s.size == 0 or s.max() <= 0:
        return 0
    return int(np.sum(s > tol * s.max()))


def log_log_slope(depths, values):
    """Least-squares slope of log(values) against log(depths)."""
    depths = np.asarray(depths, dtype="float64")
    values = np.asarray(values, dtype="float64")
    if depths.size < 2 or depths.shape != values.shape:
        raise ValueError(
            f"Received {depths.size} depths and {values.size} values; a slope needs two or more pairs."
        )
    if np.any(depths <= 0) or np.any(values <= 0):
        raise ValueError("A log-log slope needs positive depths and values.")
    return float(np.polyfit(np.log(depths), np.log(values), 1)[0])


def cosine(a, b):
    """Signed cosine of the angle between a and b (0 when either is zero)."""
    a = np.ravel(np.asarray(a, dtype="float64"))
    b = np.ravel(np.asarray(b, dtype="float64"))
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm > 0 else 0.0
