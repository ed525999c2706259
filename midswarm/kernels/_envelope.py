"""Envelopes and z-normalisation statistics for subsequence search.

Theory of operation
-------------------
*Envelopes.*  ``upper[i] = max(x[i - w .. i + w])`` and ``lower[i] = min(...)``
(clipped to the array) are computed with Lemire's streaming min/max: a deque of
indices whose values are monotone, so every point enters and leaves it once and
the cost is O(n) whatever the band.  (For narrow bands the search uses shifted
SIMD passes instead, see :func:`._bounds.window_envelope`.)

*Window statistics.*  The mean and standard deviation of the length-``m``
windows of a long series come from prefix sums, but prefix sums over a drifting
random walk lose digits to cancellation.  So the series is cut into blocks of
:data:`STATS_BLOCK` windows, each block's prefix sums are taken relative to the
block's first value, and a window whose variance is not resolved to about
1e-10 (judged from the magnitudes that went into it) is recomputed exactly in
two passes.  Flat windows -- standard deviation at most :data:`FLAT_RTOL` times
the magnitude of the mean, or below :data:`FLAT_ATOL` -- normalise to all
zeros: their reciprocal standard deviation is reported as 0.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "DIRECT_ENVELOPE_MAX",
    "FLAT_ATOL",
    "FLAT_RTOL",
    "STATS_BLOCK",
    "envelope_range",
    "flat_inverse",
    "stats_block",
    "znormalize",
]

#: A window is flat when ``std <= FLAT_RTOL * |mean|`` ...
FLAT_RTOL = 1e-10
#: ... or when ``std < FLAT_ATOL`` (guards 1/std against overflow).
FLAT_ATOL = 1e-150

#: Windows whose statistics are computed together from one set of prefix sums.
STATS_BLOCK = 256
#: Widest neighbourhood (2w + 1) for which envelopes use shifted passes.
DIRECT_ENVELOPE_MAX = 33
_EPS = 2.220446049250313e-16
# Recompute a window exactly when the estimated rounding error of its variance
# exceeds this fraction of the variance itself.
_VAR_RTOL = 1e-10


@numba.njit(cache=True, nogil=True)
def envelope_range(
    x: np.ndarray, w: int, lo: int, hi: int, upper: np.ndarray, lower: np.ndarray
) -> None:
    """Fill ``upper[i]``/``lower[i]`` for ``lo <= i < hi`` with Lemire's algorithm."""
    n = x.shape[0]
    start = max(0, lo - w)
    stop = min(n, hi + w)
    size = stop - start
    dq_u = np.empty(size, dtype=np.int64)
    dq_l = np.empty(size, dtype=np.int64)
    hu = 0
    tu = 0
    hl = 0
    tl = 0
    for j in range(start, stop):
        v = x[j]
        while tu > hu and x[dq_u[tu - 1]] <= v:
            tu -= 1
        dq_u[tu] = j
        tu += 1
        while tl > hl and x[dq_l[tl - 1]] >= v:
            tl -= 1
        dq_l[tl] = j
        tl += 1
        i = j - w
        if i >= lo:
            while dq_u[hu] < i - w:
                hu += 1
            while dq_l[hl] < i - w:
                hl += 1
            upper[i] = x[dq_u[hu]]
            lower[i] = x[dq_l[hl]]
    # Positions whose window runs past the end of the array.
    for i in range(max(lo, stop - w), hi):
        while dq_u[hu] < i - w:
            hu += 1
        while dq_l[hl] < i - w:
            hl += 1
        upper[i] = x[dq_u[hu]]
        lower[i] = x[dq_l[hl]]


@numba.njit(cache=True, nogil=True)
def _exact_stats(x: np.ndarray, start: int, m: int) -> tuple[float, float]:
    ref = x[start]
    s = 0.0
    for t in range(m):
        s += x[start + t] - ref
    mean = ref + s / m
    ss = 0.0
    for t in range(m):
        d = x[start + t] - mean
        ss += d * d
    return mean, np.sqrt(ss / m)


@numba.njit(cache=True, nogil=True)
def flat_inverse(mean: float, std: float) -> float:
    """Reciprocal std used for normalising, 0 for a flat window."""
    if std <= FLAT_RTOL * abs(mean) or std < FLAT_ATOL:
        return 0.0
    return 1.0 / std


@numba.njit(cache=True, nogil=True, error_model="numpy")
def stats_block(
    x: np.ndarray, m: int, c0: int, c1: int, p1: np.ndarray, p2: np.ndarray,
    means: np.ndarray, inv_stds: np.ndarray,
) -> None:
    """Mean and reciprocal std of windows ``c0 .. c1 - 1`` (at most
    :data:`STATS_BLOCK` of them) into ``means[0 .. c1 - c0 - 1]`` and
    ``inv_stds[...]``; ``p1``/``p2`` are workspaces of ``STATS_BLOCK + m``."""
    span = c1 - c0 + m - 1
    ref = x[c0]
    acc1 = 0.0
    acc2 = 0.0
    p1[0] = 0.0
    p2[0] = 0.0
    for t in range(span):
        v = x[c0 + t] - ref
        acc1 += v
        acc2 += v * v
        p1[t + 1] = acc1
        p2[t + 1] = acc2
    count = c1 - c0
    inv_m = 1.0 / m
    # Separate, branch-free loops over views indexed by the loop counter, so
    # that LLVM vectorises them; inv_stds holds the variance until the last.
    lo1 = p1[:count]
    hi1 = p1[m:m + count]
    lo2 = p2[:count]
    hi2 = p2[m:m + count]
    mv = means[:count]
    vv = inv_stds[:count]
    for off in range(count):
        mu = (hi1[off] - lo1[off]) * inv_m
        vv[off] = (hi2[off] - lo2[off]) * inv_m - mu * mu
        mv[off] = ref + mu
    # Rounding in the prefix sums grows with the magnitudes summed.
    tol = 4.0 * _EPS * inv_m / _VAR_RTOL
    for off in range(count):
        if vv[off] <= tol * (2.0 * acc2 + hi2[off] - lo2[off]):
            mean, std = _exact_stats(x, c0 + off, m)
            means[off] = mean
            inv_stds[off] = std * std
    for off in range(count):
        v = vv[off]
        std = np.sqrt(v if v > 0.0 else 0.0)
        flat = (std <= FLAT_RTOL * abs(mv[off])) | (std < FLAT_ATOL)
        inv = 1.0 / std
        vv[off] = 0.0 if flat else inv


def znormalize(x: np.ndarray) -> np.ndarray:
    """Z-normalise one series (population std); a flat series becomes zeros."""
    m = x.shape[0]
    mean, std = _exact_stats(x, 0, m)
    inv = flat_inverse(mean, std)
    return (x - mean) * inv
