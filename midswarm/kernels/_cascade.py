"""The compiled lower-bound cascade behind :func:`~midswarm.kernels.dtw_knn`.

Theory of operation
-------------------
Candidates are windows of a flat float64 buffer: candidate ``c`` starts at
``c * stride`` (stride 1 for the subsequences of one series, ``m`` for a matrix
of stored patterns laid end to end) and is normalised on the fly as
``(x - means[c]) * inv_stds[c]``.  Each candidate goes through, cheapest first,
stopping as soon as a bound reaches the threshold ``T`` (a squared distance):

1. LB_Kim: the cheapest path cells near both corners (first/last three layers);
2. LB_Keogh against the query's envelope, visiting query positions in order of
   decreasing ``|q|`` (largest contributions first, so it abandons early);
3. LB_Keogh of the query against the data's envelope (same order);
4. banded DTW that abandons when a row's minimum plus the remaining part of the
   cumulative LB_Keogh bounds reaches ``T``.

*The threshold under trivial-match exclusion.*  The answer is defined greedily:
sort all candidates by ``(distance, start)``, take the first, drop every
candidate within ``exclusion`` of it, repeat.  That answer is not monotone in
the candidates seen (a later, better candidate can knock out an earlier pick),
so "the current k-th pick" is not a safe abandoning threshold.  A safe one: if
``S`` holds ``k`` candidates pairwise more than ``2 * exclusion`` apart, one
pick can knock out at most one member of ``S``, so the final k-th pick is no
worse than the worst member of ``S``.  ``T`` is therefore the k-th pick of the
greedy selection with radius ``2 * exclusion`` over the *pool*: every computed
candidate whose distance is below ``T`` at the time.  Everything that can end
up in the answer is in the pool, so the greedy selection with the real radius
over the final pool is exactly the brute-force answer.  Because candidates are
visited in increasing start order and ``T`` always comes from earlier starts, a
candidate whose bound merely ties ``T`` loses the tie-break and is pruned.
"""

from __future__ import annotations

import numba
import numpy as np

from ._dtw import band_limits

__all__ = ["N_STATS", "pool_threshold", "scan_chunk", "select_greedy"]

#: Counters per scan: candidates, pruned by LB_Kim, by LB_Keogh(query envelope),
#: by LB_Keogh(data envelope), DTW abandoned early, DTW run to the end.
N_STATS = 6

_INF = np.inf


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
def lb_kim(
    x: np.ndarray, start: int, mean: float, inv: float, q: np.ndarray, threshold: float
) -> float:
    """Sum of the cheapest cells of the corner layers ``max(i, j) = 0, 1, 2`` at
    both ends; layers are disjoint when ``m >= 6`` so their sum bounds DTW."""
    m = q.shape[0]
    x0 = (x[start] - mean) * inv
    if m == 1:
        return _sq(x0 - q[0])
    y0 = (x[start + m - 1] - mean) * inv
    lb = _sq(x0 - q[0]) + _sq(y0 - q[m - 1])
    if m < 6 or lb >= threshold:
        return lb
    x1 = (x[start + 1] - mean) * inv
    lb += _min3(_sq(x1 - q[0]), _sq(x0 - q[1]), _sq(x1 - q[1]))
    if lb >= threshold:
        return lb
    y1 = (x[start + m - 2] - mean) * inv
    lb += _min3(_sq(y1 - q[m - 1]), _sq(y0 - q[m - 2]), _sq(y1 - q[m - 2]))
    if lb >= threshold:
        return lb
    x2 = (x[start + 2] - mean) * inv
    lb += min(
        _min3(_sq(x2 - q[0]), _sq(x2 - q[1]), _sq(x2 - q[2])),
        min(_sq(x1 - q[2]), _sq(x0 - q[2])),
    )
    if lb >= threshold:
        return lb
    y2 = (x[start + m - 3] - mean) * inv
    lb += min(
        _min3(_sq(y2 - q[m - 1]), _sq(y2 - q[m - 2]), _sq(y2 - q[m - 3])),
        min(_sq(y1 - q[m - 3]), _sq(y0 - q[m - 3])),
    )
    return lb


@numba.njit(cache=True, nogil=True)
def lb_keogh_query_env(
    x: np.ndarray, start: int, mean: float, inv: float, order: np.ndarray,
    q_upper: np.ndarray, q_lower: np.ndarray, threshold: float, contrib: np.ndarray,
) -> float:
    """Candidate points against the query envelope; ``contrib[t]`` is indexed by
    candidate position (complete only when the bound stays below threshold)."""
    lb = 0.0
    for idx in range(order.shape[0]):
        t = order[idx]
        v = (x[start + t] - mean) * inv
        d = 0.0
        if v > q_upper[t]:
            d = _sq(v - q_upper[t])
        elif v < q_lower[t]:
            d = _sq(v - q_lower[t])
        contrib[t] = d
        lb += d
        if lb >= threshold:
            break
    return lb


@numba.njit(cache=True, nogil=True)
def lb_keogh_data_env(
    env_upper: np.ndarray, env_lower: np.ndarray, start: int, mean: float, inv: float,
    order: np.ndarray, q: np.ndarray, threshold: float, contrib: np.ndarray,
) -> float:
    """Query points against the candidate's (normalised) envelope; ``contrib[t]``
    is indexed by query position."""
    lb = 0.0
    for idx in range(order.shape[0]):
        t = order[idx]
        qt = q[t]
        d = 0.0
        u = (env_upper[start + t] - mean) * inv
        if qt > u:
            d = _sq(qt - u)
        else:
            lo = (env_lower[start + t] - mean) * inv
            if qt < lo:
                d = _sq(qt - lo)
        contrib[t] = d
        lb += d
        if lb >= threshold:
            break
    return lb


@numba.njit(cache=True, nogil=True)
def dtw_sq_abandon(
    c: np.ndarray, q: np.ndarray, w: int, cb_rows: np.ndarray, cb_cols: np.ndarray,
    threshold: float, buf: np.ndarray,
) -> float:
    """Banded squared DTW of equal-length *c* (rows) and *q* (columns) that stops
    with ``inf`` once no path can stay below *threshold*.

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
        if row_min + rest >= threshold:
            return _INF
        prev, cur = cur, prev
    return prev[m]


@numba.njit(cache=True, nogil=True)
def _pool_insert(pool_d: np.ndarray, pool_s: np.ndarray, count: int, d: float, s: int) -> int:
    p = count
    while p > 0 and (pool_d[p - 1] > d or (pool_d[p - 1] == d and pool_s[p - 1] > s)):
        pool_d[p] = pool_d[p - 1]
        pool_s[p] = pool_s[p - 1]
        p -= 1
    pool_d[p] = d
    pool_s[p] = s
    return count + 1


@numba.njit(cache=True, nogil=True)
def select_greedy(
    pool_d: np.ndarray, pool_s: np.ndarray, count: int, k: int, radius: int,
    picks: np.ndarray,
) -> tuple[int, int]:
    """Greedy selection over the sorted pool: take entries in order, skipping any
    within *radius* of an earlier pick.  Fills ``picks`` with pool positions and
    returns ``(number picked, pool position of the last pick)``."""
    n_picked = 0
    last = -1
    for p in range(count):
        s = pool_s[p]
        ok = True
        for r in range(n_picked):
            if abs(s - pool_s[picks[r]]) <= radius:
                ok = False
                break
        if ok:
            picks[n_picked] = p
            n_picked += 1
            last = p
            if n_picked == k:
                break
    return n_picked, last


@numba.njit(cache=True, nogil=True)
def pool_threshold(
    pool_d: np.ndarray, pool_s: np.ndarray, count: int, k: int, radius: int
) -> tuple[float, int]:
    """Safe threshold from the pool (see module docstring) and the pool size
    after dropping entries that sort after it; ``inf`` while fewer than k
    well-separated entries exist."""
    picks = np.empty(k, dtype=np.int64)
    n_picked, last = select_greedy(pool_d, pool_s, count, k, radius, picks)
    if n_picked < k:
        return _INF, count
    return pool_d[last], last + 1


@numba.njit(cache=True, nogil=True)
def scan_chunk(
    x: np.ndarray, env_upper: np.ndarray, env_lower: np.ndarray, means: np.ndarray,
    inv_stds: np.ndarray, stride: int, c0: int, c1: int, q: np.ndarray,
    q_upper: np.ndarray, q_lower: np.ndarray, order: np.ndarray, w: int, k: int,
    radius: int, pool_d: np.ndarray, pool_s: np.ndarray, count: int, threshold: float,
    stats: np.ndarray,
) -> tuple[int, float, int]:
    """Run candidates ``c0 .. c1 - 1`` through the cascade.

    The pool (sorted by ``(distance, candidate)``, capacity ``len(pool_d)``)
    arrives holding ``count`` entries and the matching *threshold*.  Returns
    ``(count, threshold, next candidate)``; the last is ``c1`` unless the pool
    filled up, in which case the caller grows it and resumes from there.
    """
    m = q.shape[0]
    cap = pool_d.shape[0]
    contrib_eq = np.zeros(m)
    contrib_ec = np.zeros(m)
    cb_rows = np.zeros(m + 1)
    cb_cols = np.zeros(m + w + 2)
    cn = np.empty(m)
    buf = np.empty((2, m + 1))
    for c in range(c0, c1):
        if count >= cap:
            threshold, count = pool_threshold(pool_d, pool_s, count, k, radius)
            if count >= cap:
                return count, threshold, c
        stats[0] += 1
        start = c * stride
        mean = means[c]
        inv = inv_stds[c]
        if lb_kim(x, start, mean, inv, q, threshold) >= threshold:
            stats[1] += 1
            continue
        if lb_keogh_query_env(
            x, start, mean, inv, order, q_upper, q_lower, threshold, contrib_eq
        ) >= threshold:
            stats[2] += 1
            continue
        if lb_keogh_data_env(
            env_upper, env_lower, start, mean, inv, order, q, threshold, contrib_ec
        ) >= threshold:
            stats[3] += 1
            continue
        acc_r = 0.0
        acc_c = 0.0
        for t in range(m - 1, -1, -1):
            acc_r += contrib_eq[t]
            acc_c += contrib_ec[t]
            cb_rows[t] = acc_r
            cb_cols[t] = acc_c
        for t in range(m):
            cn[t] = (x[start + t] - mean) * inv
        d = dtw_sq_abandon(cn, q, w, cb_rows, cb_cols, threshold, buf)
        if d >= threshold:
            stats[4] += 1
            continue
        stats[5] += 1
        count = _pool_insert(pool_d, pool_s, count, d, c)
        threshold, count = pool_threshold(pool_d, pool_s, count, k, radius)
    return count, threshold, c1
