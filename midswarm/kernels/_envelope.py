"""Envelopes and z-normalisation statistics for subsequence search.

Theory of operation
-------------------
*Envelopes.*  ``upper[i] = max(x[i - w .. i + w])`` and ``lower[i] = min(...)``
(clipped to the array) are computed with Lemire's streaming min/max: a deque of
indices whose values are monotone, so every point enters and leaves it once and
the cost is O(n) whatever the band.

*Window statistics.*  The mean and standard deviation of every length-``m``
window of a long series come from prefix sums, but prefix sums over a drifting
random walk lose digits to cancellation.  So the series is cut into blocks of
:data:`_STATS_BLOCK` windows, each block's prefix sums are taken relative to the
block's first value, and a window whose variance is not resolved to about
1e-10 (judged from the magnitudes that went into it) is recomputed exactly in
two passes.  Flat windows -- standard deviation at most :data:`FLAT_RTOL` times
the magnitude of the mean, or below :data:`FLAT_ATOL` -- normalise to all
zeros: their reciprocal standard deviation is reported as 0.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

__all__ = [
    "FLAT_RTOL",
    "FLAT_ATOL",
    "envelope",
    "envelope_range",
    "window_stats",
    "znormalize",
]

#: A window is flat when ``std <= FLAT_RTOL * |mean|`` ...
FLAT_RTOL = 1e-10
#: ... or when ``std < FLAT_ATOL`` (guards 1/std against overflow).
FLAT_ATOL = 1e-150

_STATS_BLOCK = 256
#: Widest neighbourhood for which :func:`envelope` scans directly.
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
def _envelope_direct(
    x: np.ndarray, w: int, lo: int, hi: int, upper: np.ndarray, lower: np.ndarray
) -> None:
    # Branch-free scan of the 2w+1 neighbours; LLVM vectorises it across i.
    n = x.shape[0]
    for i in range(lo, hi):
        a = max(0, i - w)
        b = min(n - 1, i + w)
        u = x[a]
        v = x[a]
        for t in range(a + 1, b + 1):
            xt = x[t]
            u = max(u, xt)
            v = min(v, xt)
        upper[i] = u
        lower[i] = v


@numba.njit(cache=True, nogil=True, parallel=True)
def envelope(x: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Upper and lower envelopes of *x* for band half-width *w*, in parallel blocks.

    Lemire's deque algorithm does O(1) work per point but its pops are
    data-dependent branches that mispredict on noisy data; for narrow bands
    (``2w + 1 <= DIRECT_ENVELOPE_MAX``) a branch-free SIMD scan of the
    neighbours is faster (about 5x at w = 6), so that is used instead.
    """
    n = x.shape[0]
    upper = np.empty(n)
    lower = np.empty(n)
    block = 65536
    n_blocks = (n + block - 1) // block
    direct = 2 * w + 1 <= DIRECT_ENVELOPE_MAX
    for b in prange(n_blocks):
        lo = b * block
        hi = min(n, lo + block)
        if direct:
            _envelope_direct(x, w, lo, hi, upper, lower)
        else:
            envelope_range(x, w, lo, hi, upper, lower)
    return upper, lower


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


@numba.njit(cache=True, nogil=True, parallel=True)
def window_stats(x: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and reciprocal std (0 when flat) of every length-*m* window of *x*."""
    n_cand = x.shape[0] - m + 1
    means = np.empty(n_cand)
    inv_stds = np.empty(n_cand)
    n_blocks = (n_cand + _STATS_BLOCK - 1) // _STATS_BLOCK
    for b in prange(n_blocks):
        c0 = b * _STATS_BLOCK
        c1 = min(n_cand, c0 + _STATS_BLOCK)
        span = c1 - c0 + m - 1
        ref = x[c0]
        p1 = np.empty(span + 1)
        p2 = np.empty(span + 1)
        p1[0] = 0.0
        p2[0] = 0.0
        for t in range(span):
            v = x[c0 + t] - ref
            p1[t + 1] = p1[t] + v
            p2[t + 1] = p2[t] + v * v
        total = p2[span]
        count = c1 - c0
        var = np.empty(count)
        for off in range(count):
            s1 = p1[off + m] - p1[off]
            mu = s1 / m
            var[off] = (p2[off + m] - p2[off]) / m - mu * mu
            means[c0 + off] = ref + mu
        for off in range(count):
            s2 = p2[off + m] - p2[off]
            # Rounding in the prefix sums grows with the magnitudes summed.
            if var[off] * _VAR_RTOL <= 4.0 * _EPS * (2.0 * total + s2) / m:
                mean, std = _exact_stats(x, c0 + off, m)
                means[c0 + off] = mean
                var[off] = std * std
        for off in range(count):
            mean = means[c0 + off]
            std = np.sqrt(max(var[off], 0.0))
            flat = std <= FLAT_RTOL * abs(mean) or std < FLAT_ATOL
            inv_stds[c0 + off] = 0.0 if flat else 1.0 / std
    return means, inv_stds


def znormalize(x: np.ndarray) -> np.ndarray:
    """Z-normalise one series (population std); a flat series becomes zeros."""
    m = x.shape[0]
    mean, std = _exact_stats(x, 0, m)
    inv = flat_inverse(mean, std)
    return (x - mean) * inv
