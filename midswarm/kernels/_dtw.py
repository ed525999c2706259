"""Banded dynamic time warping: one pair, many pairs, all pairs.

Theory of operation
-------------------
The cost matrix ``D[i, j] = (a[i] - b[j])**2 + min(D[i-1, j-1], D[i-1, j],
D[i, j-1])`` is filled row by row inside the Sakoe-Chiba band, keeping two rows.
For one pair that inner loop is a chain of dependent ``min`` and ``add``
instructions, so a single pair runs at the latency of that chain, not at the
throughput of the core.  When there are many pairs of equal shape (a distance
matrix, a query against a library, brute-force subsequence search) we run
:data:`LANES` independent pairs side by side: the cost rows are stored as
``(columns, LANES)`` blocks, so the innermost loop walks over lanes with no
dependency between iterations and LLVM turns it into SIMD instructions, while
the chains of the separate pairs overlap in the pipeline.  Blocks of pairs are
spread over threads with ``prange``.

All kernels return the squared cost; the public functions take the square root.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import prange

from ._validate import as_matrix, as_series, as_series_list, check_window

__all__ = ["dtw", "dtw_matrix", "dtw_scores", "LANES"]

#: Pairs computed side by side by the multi-pair kernel.  32 doubles fill four
#: AVX-512 (or eight AVX2) registers: enough independent chains to hide latency.
LANES = 32

_INF = np.inf


@numba.njit(cache=True, nogil=True)
def band_limits(i: int, n: int, m: int, window: int) -> tuple[int, int]:
    """Columns ``lo..hi`` (inclusive) of row *i* that lie inside the band."""
    lo = i - window - max(0, n - m)
    hi = i + window + max(0, m - n)
    if lo < 0:
        lo = 0
    if hi > m - 1:
        hi = m - 1
    return lo, hi


@numba.njit(cache=True, nogil=True)
def dtw_sq_kernel(a: np.ndarray, b: np.ndarray, window: int, buf: np.ndarray) -> float:
    """Squared banded DTW of *a* and *b*; *buf* is a ``(2, len(b) + 1)`` workspace.

    Buffer slot ``j + 1`` holds column ``j``; slot 0 is the virtual column -1.
    Slots just outside the band are set to inf before they can be read, so stale
    values from two rows back never leak in.
    """
    n = a.shape[0]
    m = b.shape[0]
    prev = buf[0]
    cur = buf[1]
    prev[:] = _INF
    prev[0] = 0.0
    for i in range(n):
        lo, hi = band_limits(i, n, m, window)
        left = _INF
        cur[lo] = _INF
        ai = a[i]
        for j in range(lo, hi + 1):
            d = ai - b[j]
            best = prev[j]
            up = prev[j + 1]
            if up < best:
                best = up
            if left < best:
                best = left
            left = d * d + best
            cur[j + 1] = left
        if hi + 2 <= m:
            cur[hi + 2] = _INF
        prev, cur = cur, prev
    return prev[m]


@numba.njit(cache=True, nogil=True)
def _dtw_one(a: np.ndarray, b: np.ndarray, window: int) -> float:
    buf = np.empty((2, b.shape[0] + 1))
    return dtw_sq_kernel(a, b, window, buf)


@numba.njit(cache=True, nogil=True)
def dtw_sq_lanes(
    at: np.ndarray, bt: np.ndarray, window: int, prev: np.ndarray, cur: np.ndarray,
    out: np.ndarray,
) -> None:
    """Squared DTW of ``LANES`` pairs at once.

    ``at`` is ``(n, LANES)`` (lane ``l`` holds series ``a_l`` down its column),
    ``bt`` is ``(m, LANES)``; ``prev``/``cur`` are ``(m + 1, LANES)`` workspaces;
    ``out[l]`` receives the squared cost of pair ``l``.
    """
    n = at.shape[0]
    m = bt.shape[0]
    for j in range(m + 1):
        for lane in range(LANES):
            prev[j, lane] = _INF
    for lane in range(LANES):
        prev[0, lane] = 0.0
    for i in range(n):
        lo, hi = band_limits(i, n, m, window)
        for lane in range(LANES):
            cur[lo, lane] = _INF
        for j in range(lo, hi + 1):
            for lane in range(LANES):
                d = at[i, lane] - bt[j, lane]
                best = prev[j, lane]
                up = prev[j + 1, lane]
                if up < best:
                    best = up
                left = cur[j, lane]
                if left < best:
                    best = left
                cur[j + 1, lane] = d * d + best
        if hi + 2 <= m:
            for lane in range(LANES):
                cur[hi + 2, lane] = _INF
        prev, cur = cur, prev
    for lane in range(LANES):
        out[lane] = prev[m, lane]


@numba.njit(cache=True, nogil=True, parallel=True)
def dtw_sq_pairs(
    xs: np.ndarray, ys: np.ndarray, left: np.ndarray, right: np.ndarray, window: int
) -> np.ndarray:
    """Squared DTW of ``xs[left[p]]`` against ``ys[right[p]]`` for every pair ``p``.

    ``xs`` is ``(nx, n)`` and ``ys`` is ``(ny, m)``: all left series share one
    length and all right series another, which is what lets pairs share lanes.
    """
    n_pairs = left.shape[0]
    n = xs.shape[1]
    m = ys.shape[1]
    out = np.empty(n_pairs)
    n_blocks = (n_pairs + LANES - 1) // LANES
    for blk in prange(n_blocks):
        at = np.empty((n, LANES))
        bt = np.empty((m, LANES))
        prev = np.empty((m + 1, LANES))
        cur = np.empty((m + 1, LANES))
        res = np.empty(LANES)
        first = blk * LANES
        for lane in range(LANES):
            # Short last block: repeat the final pair; its extra results are dropped.
            p = min(first + lane, n_pairs - 1)
            li = left[p]
            ri = right[p]
            for t in range(n):
                at[t, lane] = xs[li, t]
            for t in range(m):
                bt[t, lane] = ys[ri, t]
        dtw_sq_lanes(at, bt, window, prev, cur, res)
        for lane in range(LANES):
            p = first + lane
            if p < n_pairs:
                out[p] = res[lane]
    return out


@numba.njit(cache=True, nogil=True, parallel=True)
def _dtw_sq_pairs_ragged(
    flat: np.ndarray, offsets: np.ndarray, left: np.ndarray, right: np.ndarray, window: int
) -> np.ndarray:
    # Series of different lengths cannot share lanes: one pair per iteration.
    n_pairs = left.shape[0]
    out = np.empty(n_pairs)
    for p in prange(n_pairs):
        a = flat[offsets[left[p]]:offsets[left[p] + 1]]
        b = flat[offsets[right[p]]:offsets[right[p] + 1]]
        buf = np.empty((2, b.shape[0] + 1))
        out[p] = dtw_sq_kernel(a, b, window, buf)
    return out


def dtw(a: Any, b: Any, window: int = 10) -> float:
    """DTW distance of two series inside a Sakoe-Chiba band.

    Cells ``(i, j)`` with ``|i - j| <= window`` are allowed; when the lengths
    ``n = len(a)`` and ``m = len(b)`` differ the band is widened on the side of
    the longer series, to ``i - window - max(0, n - m) <= j <= i + window +
    max(0, m - n)``, so that the end cell is always reachable.  The result is
    the square root of the sum of squared differences along the cheapest path.

    This equals ``dtaidistance.dtw.distance(a, b, window=window + 1)`` (its
    window counts the diagonal) and ``tslearn.metrics.dtw(a, b,
    global_constraint="sakoe_chiba", sakoe_chiba_radius=window)``.

    Args:
        a, b: 1-D finite numeric series (float32 is computed in float64).
        window: band half-width, ``>= 0``; 0 is the Euclidean distance for
            equal lengths.

    Raises:
        ValueError: if a series is empty, not 1-D or holds NaN/inf, or if
            ``window < 0``.
        TypeError: if ``window`` is not an int.
    """
    x = as_series("a", a)
    y = as_series("b", b)
    w = check_window("window", window)
    return float(np.sqrt(_dtw_one(x, y, w)))


def _triu_pairs(count: int) -> tuple[np.ndarray, np.ndarray]:
    left, right = np.triu_indices(count, k=1)
    return left.astype(np.int64), right.astype(np.int64)


def dtw_matrix(X: Any, window: int = 10) -> np.ndarray:
    """Symmetric matrix of pairwise :func:`dtw` distances, computed in parallel.

    Args:
        X: a 2-D array with one series per row, or a sequence of 1-D series
            (lengths may differ; equal lengths take the faster multi-lane path).
        window: band half-width as in :func:`dtw`.

    Returns:
        ``(len(X), len(X))`` float64 array with a zero diagonal.

    Raises:
        ValueError: for an empty collection, a series that is empty, not 1-D or
            holds NaN/inf, or ``window < 0``.
        TypeError: if ``window`` is not an int.
    """
    series = as_series_list("X", X)
    w = check_window("window", window)
    count = len(series)
    left, right = _triu_pairs(count)
    out = np.zeros((count, count))
    if left.size == 0:
        return out
    lengths = {s.shape[0] for s in series}
    if len(lengths) == 1:
        mat = np.ascontiguousarray(np.stack(series))
        sq = dtw_sq_pairs(mat, mat, left, right, w)
    else:
        offsets = np.zeros(count + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([s.shape[0] for s in series])
        sq = _dtw_sq_pairs_ragged(np.concatenate(series), offsets, left, right, w)
    dist = np.sqrt(sq)
    out[left, right] = dist
    out[right, left] = dist
    return out


def dtw_scores(query: Any, candidates: Any, window: int = 10) -> np.ndarray:
    """Exact :func:`dtw` distance from *query* to every row of *candidates*.

    This is the "score a query against a library" path: all rows share one
    length, so pairs run side by side in SIMD lanes and across threads.  No
    normalisation is applied; z-normalise both sides first if that is wanted
    (:class:`~midswarm.kernels.PatternLibrary` does it for you).

    Raises:
        ValueError: for a query or candidate matrix that is empty, of the wrong
            dimension or holds NaN/inf, or ``window < 0``.
        TypeError: if ``window`` is not an int.
    """
    q = as_series("query", query)
    cands = as_matrix("candidates", candidates)
    w = check_window("window", window)
    rows = np.arange(cands.shape[0], dtype=np.int64)
    zeros = np.zeros_like(rows)
    return np.sqrt(dtw_sq_pairs(q[None, :], cands, zeros, rows, w))
