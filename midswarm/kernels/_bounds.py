"""Lower bounds and early-abandoning DTW for the search cascade.

All functions work on squared distances and compare against a *prune* level:
a candidate may be dropped once a bound reaches it.  The caller sets the prune
level a hair above its threshold (see :mod:`._cascade`) so that rounding, which
can make a computed bound exceed a computed DTW by a few ulps when the two are
mathematically equal, never drops a candidate that belongs in the answer.

The LB_Keogh bounds visit the query in *blocks* of :data:`LB_BLOCK` consecutive
positions, blocks ordered by decreasing largest ``|q|``: the large
contributions come first so the bound abandons early, as in the UCR Suite's
magnitude ordering, while inside a block the work is contiguous and
branch-free, which is what SIMD units and branch predictors want (per-point
ordering costs a data-dependent branch and a gather per point, about three
times slower here).
"""

from __future__ import annotations

import numba
import numpy as np

from ._dtw import LANES, band_limits
from ._envelope import DIRECT_ENVELOPE_MAX, envelope_range

__all__ = [
    "LB_BLOCK",
    "block_order",
    "dtw_sq_abandon",
    "dtw_sq_lanes_abandon",
    "lb_keogh_data_all",
    "lb_keogh_data_block",
    "keogh_data_contrib",
    "keogh_query_contrib",
    "lb_keogh_query_all",
    "lb_keogh_query_block",
    "lb_kim_block",
    "window_envelope",
]

#: Query positions per LB_Keogh block (one threshold check per block).
LB_BLOCK = 8

_INF = np.inf


def block_order(q: np.ndarray) -> np.ndarray:
    """Indices of the ``LB_BLOCK``-position blocks of *q*, largest ``|q|`` first."""
    m = q.shape[0]
    n_blocks = (m + LB_BLOCK - 1) // LB_BLOCK
    peak = np.array([np.abs(q[b * LB_BLOCK:(b + 1) * LB_BLOCK]).max() for b in range(n_blocks)])
    return np.argsort(-peak, kind="stable").astype(np.int64)


@numba.njit(cache=True, nogil=True)
def _sq(v: float) -> float:
    return v * v


@numba.njit(cache=True, nogil=True)
def _min3(a: float, b: float, c: float) -> float:
    r = a
    if b < r:
        r = b
    if c < r:
        r = c
    return r


@numba.njit(cache=True, nogil=True)
def _min2(a: float, b: float) -> float:
    return a if a < b else b


@numba.njit(cache=True, nogil=True)
def lb_kim_block(
    x: np.ndarray, stride: int, c0: int, count: int, means: np.ndarray,
    inv_stds: np.ndarray, q: np.ndarray, out: np.ndarray,
) -> None:
    """LB_Kim of candidates ``c0 .. c0 + count - 1`` into ``out[0 .. count - 1]``.

    The sum, at both ends, of the cheapest cell of each corner layer
    ``max(i, j) = 0, 1, 2`` (every warping path crosses each layer, and the
    layers are disjoint when ``m >= 6``; shorter series use the two corner
    cells only).  Computed complete and branch-free for the whole block, so it
    vectorises; the UCR Suite's layer-by-layer early exit would decide the same
    since the partial sums only grow.
    """
    m = q.shape[0]
    q0 = q[0]
    qe = q[m - 1]
    if m < 6:
        for i in range(count):
            s = (c0 + i) * stride
            x0 = (x[s] - means[i]) * inv_stds[i]
            y0 = (x[s + m - 1] - means[i]) * inv_stds[i]
            out[i] = _sq(x0 - q0) + (_sq(y0 - qe) if m > 1 else 0.0)
        return
    q1 = q[1]
    q2 = q[2]
    qe1 = q[m - 2]
    qe2 = q[m - 3]
    # Views indexed by the loop counter: LLVM then knows every index is
    # non-negative and vectorises the loop (see lb_keogh_query_all).
    span = (count - 1) * stride + 1
    f0 = x[c0 * stride:c0 * stride + span]
    f1 = x[c0 * stride + 1:c0 * stride + 1 + span]
    f2 = x[c0 * stride + 2:c0 * stride + 2 + span]
    e0 = x[c0 * stride + m - 1:c0 * stride + m - 1 + span]
    e1 = x[c0 * stride + m - 2:c0 * stride + m - 2 + span]
    e2 = x[c0 * stride + m - 3:c0 * stride + m - 3 + span]
    for i in range(count):
        s = i * stride
        mean = means[i]
        inv = inv_stds[i]
        x0 = (f0[s] - mean) * inv
        x1 = (f1[s] - mean) * inv
        x2 = (f2[s] - mean) * inv
        y0 = (e0[s] - mean) * inv
        y1 = (e1[s] - mean) * inv
        y2 = (e2[s] - mean) * inv
        lb = _sq(x0 - q0) + _sq(y0 - qe)
        lb += _min2(_min2(_sq(x1 - q0), _sq(x0 - q1)), _sq(x1 - q1))
        lb += _min2(_min2(_sq(y1 - qe), _sq(y0 - qe1)), _sq(y1 - qe1))
        lb += _min2(
            _min2(_min2(_sq(x2 - q0), _sq(x2 - q1)), _sq(x2 - q2)),
            _min2(_sq(x1 - q2), _sq(x0 - q2)),
        )
        lb += _min2(
            _min2(_min2(_sq(y2 - qe), _sq(y2 - qe1)), _sq(y2 - qe2)),
            _min2(_sq(y1 - qe2), _sq(y0 - qe2)),
        )
        out[i] = lb


@numba.njit(cache=True, nogil=True)
def _excess(v: float, upper: float, lower: float) -> float:
    # Squared distance from v to [lower, upper], written as selects.
    above = v - upper
    below = lower - v
    # At most one of the two is positive (upper >= lower).
    d = (above if above > 0.0 else 0.0) + (below if below > 0.0 else 0.0)
    return d * d


@numba.njit(cache=True, nogil=True)
def lb_keogh_query_block(
    x: np.ndarray, stride: int, c0: int, todo: np.ndarray, n_todo: int,
    means: np.ndarray, inv_stds: np.ndarray, blocks: np.ndarray, q_upper: np.ndarray,
    q_lower: np.ndarray, prune: float, out: np.ndarray,
) -> None:
    """LB_Keogh of candidates ``c0 + todo[i]`` against the query envelope, with
    early abandoning at *prune*, into ``out[i]``.

    One call per block of candidates rather than per candidate: a numba call
    with array arguments costs reference-count updates that would cost more
    than the bound itself.
    """
    m = q_upper.shape[0]
    full = m // LB_BLOCK
    for i in range(n_todo):
        j = todo[i]
        start = (c0 + j) * stride
        mean = means[j]
        inv = inv_stds[j]
        lb = 0.0
        for bi in range(blocks.shape[0]):
            b0 = blocks[bi] * LB_BLOCK
            if blocks[bi] < full:
                # A constant trip count lets LLVM unroll the block.
                for jj in range(LB_BLOCK):
                    t = b0 + jj
                    lb += _excess((x[start + t] - mean) * inv, q_upper[t], q_lower[t])
            else:
                for t in range(b0, m):
                    lb += _excess((x[start + t] - mean) * inv, q_upper[t], q_lower[t])
            if lb >= prune:
                break
        out[i] = lb


@numba.njit(cache=True, nogil=True)
def lb_keogh_query_all(
    x: np.ndarray, c0: int, count: int, means: np.ndarray, inv_stds: np.ndarray,
    q_upper: np.ndarray, q_lower: np.ndarray, out: np.ndarray,
) -> None:
    """Complete LB_Keogh against the query envelope for the ``count``
    consecutive subsequences starting at ``c0`` (stride 1), into ``out``.

    The loop runs across candidates for one query position at a time, which
    SIMD units take eight at a time: when most of a block survives LB_Kim this
    beats per-candidate early abandoning by several times.  Indexing is done
    through slices so that every index is a loop counter LLVM knows to be
    non-negative (numba's negative-index handling otherwise blocks
    vectorisation).
    """
    m = q_upper.shape[0]
    xs = x[c0:c0 + count + m - 1]
    ms = means[:count]
    ivs = inv_stds[:count]
    acc = out[:count]
    for c in range(count):
        acc[c] = 0.0
    for t in range(m):
        u = q_upper[t]
        lo = q_lower[t]
        xt = xs[t:t + count]
        for c in range(count):
            acc[c] += _excess((xt[c] - ms[c]) * ivs[c], u, lo)


@numba.njit(cache=True, nogil=True)
def lb_keogh_data_all(
    env_upper: np.ndarray, env_lower: np.ndarray, base: int, c0: int, count: int,
    means: np.ndarray, inv_stds: np.ndarray, q: np.ndarray, out: np.ndarray,
) -> None:
    """Complete LB_Keogh of the query against the normalised data envelope for
    ``count`` consecutive subsequences from ``c0`` (stride 1; envelope point
    ``p`` at ``p - base``), vectorised across candidates like
    :func:`lb_keogh_query_all`."""
    m = q.shape[0]
    us = env_upper[c0 - base:c0 - base + count + m - 1]
    ls = env_lower[c0 - base:c0 - base + count + m - 1]
    ms = means[:count]
    ivs = inv_stds[:count]
    acc = out[:count]
    for c in range(count):
        acc[c] = 0.0
    for t in range(m):
        qt = q[t]
        ut = us[t:t + count]
        lt = ls[t:t + count]
        for c in range(count):
            acc[c] += _excess(qt, (ut[c] - ms[c]) * ivs[c], (lt[c] - ms[c]) * ivs[c])


@numba.njit(cache=True, nogil=True)
def keogh_query_contrib(
    cn: np.ndarray, q_upper: np.ndarray, q_lower: np.ndarray, contrib: np.ndarray
) -> None:
    """Per-position LB_Keogh contributions of a normalised candidate *cn*."""
    for t in range(cn.shape[0]):
        contrib[t] = _excess(cn[t], q_upper[t], q_lower[t])


@numba.njit(cache=True, nogil=True)
def lb_keogh_data_block(
    env_upper: np.ndarray, env_lower: np.ndarray, base: int, stride: int, c0: int,
    todo: np.ndarray, n_todo: int, means: np.ndarray, inv_stds: np.ndarray,
    blocks: np.ndarray, q: np.ndarray, prune: float, out: np.ndarray,
) -> None:
    """LB_Keogh of the query against the normalised data envelope of candidates
    ``c0 + todo[i]``, with early abandoning at *prune*, into ``out[i]``.

    Point ``t`` of candidate ``c`` has its envelope at ``c * stride + t - base``.
    """
    m = q.shape[0]
    full = m // LB_BLOCK
    for i in range(n_todo):
        j = todo[i]
        start = (c0 + j) * stride - base
        mean = means[j]
        inv = inv_stds[j]
        lb = 0.0
        for bi in range(blocks.shape[0]):
            b0 = blocks[bi] * LB_BLOCK
            if blocks[bi] < full:
                for jj in range(LB_BLOCK):
                    t = b0 + jj
                    lb += _excess(q[t], (env_upper[start + t] - mean) * inv,
                                  (env_lower[start + t] - mean) * inv)
            else:
                for t in range(b0, m):
                    lb += _excess(q[t], (env_upper[start + t] - mean) * inv,
                                  (env_lower[start + t] - mean) * inv)
            if lb >= prune:
                break
        out[i] = lb


@numba.njit(cache=True, nogil=True)
def keogh_data_contrib(
    env_upper: np.ndarray, env_lower: np.ndarray, start: int, mean: float, inv: float,
    q: np.ndarray, contrib: np.ndarray,
) -> None:
    """Per-position contributions of :func:`lb_keogh_data_block` for one candidate
    whose envelope starts at *start*."""
    for t in range(q.shape[0]):
        contrib[t] = _excess(q[t], (env_upper[start + t] - mean) * inv,
                             (env_lower[start + t] - mean) * inv)


@numba.njit(cache=True, nogil=True)
def window_envelope(v: np.ndarray, w: int, upper: np.ndarray, lower: np.ndarray) -> None:
    """Envelope of *v* within *v* itself (band half-width *w*).

    Narrow bands: ``w`` shifted max/min passes over the array, which vectorise.
    Wide bands: Lemire's O(m) deque algorithm.
    """
    m = v.shape[0]
    if 2 * w + 1 > DIRECT_ENVELOPE_MAX:
        envelope_range(v, w, 0, m, upper, lower)
        return
    for i in range(m):
        upper[i] = v[i]
        lower[i] = v[i]
    for d in range(1, min(w, m - 1) + 1):
        for i in range(m - d):
            x = v[i + d]
            upper[i] = x if x > upper[i] else upper[i]
            lower[i] = x if x < lower[i] else lower[i]
        for i in range(d, m):
            x = v[i - d]
            upper[i] = x if x > upper[i] else upper[i]
            lower[i] = x if x < lower[i] else lower[i]


@numba.njit(cache=True, nogil=True)
def dtw_sq_abandon(
    c: np.ndarray, q: np.ndarray, w: int, cb_rows: np.ndarray, cb_cols: np.ndarray,
    prune: float, buf: np.ndarray,
) -> float:
    """Banded squared DTW of equal-length *c* (rows) and *q* (columns) that stops
    with ``inf`` once no path can stay below *prune*.

    ``cb_rows[i]`` bounds the cost of rows ``>= i`` and ``cb_cols[j]`` the cost
    of columns ``>= j``; after row ``i`` the cells of columns beyond ``i + w``
    all lie in later rows, so either suffix bound may be added to the row minimum.
    """
    m = c.shape[0]
    prev = buf[0]
    cur = buf[1]
    prev[:] = _INF
    prev[0] = 0.0
    for i in range(m):
        lo, hi = band_limits(i, m, m, w)
        left = _INF
        cur[lo] = _INF
        ci = c[i]
        row_min = _INF
        for j in range(lo, hi + 1):
            best = _min3(prev[j], prev[j + 1], left)
            left = _sq(ci - q[j]) + best
            cur[j + 1] = left
            if left < row_min:
                row_min = left
        if hi + 2 <= m:
            cur[hi + 2] = _INF
        rest = cb_rows[i + 1]
        if cb_cols[i + w + 1] > rest:
            rest = cb_cols[i + w + 1]
        if row_min + rest >= prune:
            return _INF
        prev, cur = cur, prev
    return prev[m]


@numba.njit(cache=True, nogil=True)
def dtw_sq_lanes_abandon(
    bc: np.ndarray, q: np.ndarray, w: int, cbr: np.ndarray, cbc: np.ndarray,
    prune: float, prev: np.ndarray, cur: np.ndarray, row_min: np.ndarray,
    out: np.ndarray,
) -> None:
    """:func:`dtw_sq_abandon` for ``LANES`` candidates at once (``bc`` is
    ``(m, LANES)``, the bounds ``(., LANES)``); gives up, with ``inf`` in every
    lane, only when no lane can stay below *prune*."""
    m = q.shape[0]
    for j in range(m + 1):
        for lane in range(LANES):
            prev[j, lane] = _INF
    for lane in range(LANES):
        prev[0, lane] = 0.0
    for i in range(m):
        lo, hi = band_limits(i, m, m, w)
        for lane in range(LANES):
            cur[lo, lane] = _INF
            row_min[lane] = _INF
        for j in range(lo, hi + 1):
            qj = q[j]
            for lane in range(LANES):
                d = bc[i, lane] - qj
                best = prev[j, lane]
                up = prev[j + 1, lane]
                if up < best:
                    best = up
                left = cur[j, lane]
                if left < best:
                    best = left
                v = d * d + best
                cur[j + 1, lane] = v
                if v < row_min[lane]:
                    row_min[lane] = v
        if hi + 2 <= m:
            for lane in range(LANES):
                cur[hi + 2, lane] = _INF
        alive = False
        for lane in range(LANES):
            rest = cbr[i + 1, lane]
            if cbc[i + w + 1, lane] > rest:
                rest = cbc[i + w + 1, lane]
            if row_min[lane] + rest < prune:
                alive = True
        if not alive:
            for lane in range(LANES):
                out[lane] = _INF
            return
        prev, cur = cur, prev
    for lane in range(LANES):
        out[lane] = prev[m, lane]
