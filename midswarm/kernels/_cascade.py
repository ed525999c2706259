"""The compiled lower-bound cascade behind :func:`~midswarm.kernels.dtw_knn`.

Theory of operation
-------------------
Candidates are windows of a flat float64 buffer: candidate ``c`` starts at
``c * stride`` (stride 1 for the subsequences of one series, ``m`` for a matrix
of stored patterns laid end to end).  Subsequences are z-normalised on the fly
with statistics computed block by block as the scan advances (no full-length
arrays: writing those costs more in page faults than the arithmetic); stored
patterns arrive normalised.  Each stage runs over a whole block of candidates
in one call (a numba call with array arguments pays reference-count updates
that cost more than a bound) and hands its survivors to the next; when most of
a block survives, the LB_Keogh bounds are computed complete for the whole block
with SIMD across candidates rather than one early-abandoning candidate at a
time.  Each candidate goes through, cheapest first, stopping as soon as a bound reaches the
threshold ``T`` (a squared distance):

1. LB_Kim: the cheapest path cells near both corners (first/last three layers);
2. LB_Keogh against the query's envelope, largest ``|q|`` first (see
   :mod:`._bounds`);
3. LB_Keogh of the query against the data envelope (computed, per block, only
   over the span of the windows that get this far);
4. banded DTW that abandons when a row's minimum plus the remaining part of the
   cumulative LB_Keogh bounds reaches ``T``.  Survivors are batched and run
   :data:`~._dtw.LANES` at a time in SIMD lanes.

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
candidate whose distance merely ties ``T`` loses the tie-break and is not kept.
(The starting threshold drawn from a sample anywhere in the series carries a
relative margin of 1e-9, so no candidate can tie it.)

Bounds are compared with ``prune = T * (1 + PRUNE_SLACK)`` rather than ``T``:
a lower bound summed in another order than the DTW can exceed it by a few ulps
when the two are equal in exact arithmetic, and such a candidate must reach
the exact test ``distance < T``.
"""

from __future__ import annotations

import numba
import numpy as np

from ._bounds import (
    dtw_sq_abandon,
    dtw_sq_lanes_abandon,
    keogh_data_contrib,
    keogh_query_contrib,
    lb_keogh_data_all,
    lb_keogh_data_block,
    lb_keogh_query_all,
    lb_keogh_query_block,
    lb_kim_block,
    window_envelope,
)
from ._dtw import LANES
from ._envelope import STATS_BLOCK, stats_block

__all__ = ["N_STATS", "PRUNE_SLACK", "pool_threshold", "scan_chunk", "select_greedy"]

#: Counters per scan: candidates, pruned by LB_Kim, by LB_Keogh(query envelope),
#: by LB_Keogh(candidate envelope), rejected by DTW, accepted by DTW (into the pool).
N_STATS = 6
#: Relative margin between the threshold and the level at which bounds prune;
#: far above the rounding error of a 10**4-term sum, far below any real gap.
PRUNE_SLACK = 1e-12
# Batches this small run one by one (with per-candidate early abandoning).
_SCALAR_FLUSH = 2
# A bound is computed for the whole block, SIMD across candidates, when at
# least 1/_DENSE of the block is still alive (measured: the complete bound
# costs about as much per candidate as a quarter of an early-abandoned one).
_DENSE = 4

_INF = np.inf


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
def _tighten(
    pool_d: np.ndarray, pool_s: np.ndarray, count: int, k: int, radius: int, threshold: float
) -> tuple[float, int]:
    # Both the old threshold and the pool's are valid bounds: keep the smaller.
    t, count = pool_threshold(pool_d, pool_s, count, k, radius)
    return (t if t < threshold else threshold), count


@numba.njit(cache=True, nogil=True)
def _flush(
    bc: np.ndarray, cbr: np.ndarray, cbc: np.ndarray, ids: np.ndarray, nb: int,
    q: np.ndarray, w: int, k: int, radius: int, pool_d: np.ndarray, pool_s: np.ndarray,
    count: int, threshold: float, stats: np.ndarray, work: tuple,
) -> tuple[int, float]:
    """Run DTW on the batched survivors and put those below threshold in the pool."""
    prev, cur, row_min, out, one, one_r, one_c, buf = work
    m = q.shape[0]
    prune = threshold * (1.0 + PRUNE_SLACK)
    if nb <= _SCALAR_FLUSH:
        for lane in range(nb):
            for t in range(m):
                one[t] = bc[t, lane]
            for t in range(one_r.shape[0]):
                one_r[t] = cbr[t, lane]
            for t in range(one_c.shape[0]):
                one_c[t] = cbc[t, lane]
            out[lane] = dtw_sq_abandon(one, q, w, one_r, one_c, prune, buf)
    else:
        # Unused lanes get infinite bounds: they never keep the batch alive.
        for lane in range(nb, LANES):
            for t in range(m):
                bc[t, lane] = 0.0
            for t in range(cbr.shape[0]):
                cbr[t, lane] = _INF
            for t in range(cbc.shape[0]):
                cbc[t, lane] = _INF
        dtw_sq_lanes_abandon(bc, q, w, cbr, cbc, prune, prev, cur, row_min, out)
    for lane in range(nb):
        d = out[lane]
        if d < threshold:
            stats[5] += 1
            count = _pool_insert(pool_d, pool_s, count, d, ids[lane])
            # With no threshold yet, k picks 2 * exclusion apart need at least
            # k * (2 * radius + 1) entries: do not look before that.
            if threshold < _INF or count >= k * (2 * radius + 1):
                threshold, count = _tighten(pool_d, pool_s, count, k, radius, threshold)
        else:
            stats[4] += 1
    return count, threshold


@numba.njit(cache=True, nogil=True)
def scan_chunk(
    x: np.ndarray, env_upper: np.ndarray, env_lower: np.ndarray, stream_stats: bool,
    stride: int, c0: int, c1: int, q: np.ndarray, q_upper: np.ndarray,
    q_lower: np.ndarray, blocks: np.ndarray, w: int, k: int, radius: int,
    pool_d: np.ndarray, pool_s: np.ndarray, count: int, threshold: float,
    stats: np.ndarray, shared: np.ndarray,
) -> tuple[int, float, int]:
    """Run candidates ``c0 .. c1 - 1`` through the cascade.

    With *stream_stats* each window is z-normalised with statistics computed
    here; otherwise candidates are used as they are.  ``env_upper`` and
    ``env_lower`` hold the data envelope laid out like ``x``, or are empty, in
    which case it is computed here for the blocks that need it.  The pool (sorted by
    ``(distance, candidate)``, capacity ``len(pool_d)``) arrives holding
    ``count`` entries.  Returns ``(count, threshold, next candidate)``; the
    last is ``c1`` unless the pool filled up, in which case the caller grows it
    and resumes from there.

    ``shared[0]`` is a threshold shared with the chunks running on other
    threads: read at every block, lowered whenever this chunk's own threshold
    drops below it.  It is read and written without synchronisation (plain
    8-byte accesses, which x86-64 and AArch64 never tear); a lost update only
    loses some sharing, because every value ever written is a valid threshold.
    A value adopted from another chunk may come from later starts, so it is
    taken one ulp up: a candidate tying it is then kept, as the tie-break by
    start may require.
    """
    m = q.shape[0]
    cap = pool_d.shape[0]
    lazy_env = env_upper.shape[0] == 0
    contrib_eq = np.zeros(m)
    contrib_ec = np.zeros(m)
    cn = np.empty(m)
    bc = np.empty((m, LANES))
    cbr = np.zeros((m + 1, LANES))
    cbc = np.zeros((m + w + 2, LANES))
    ids = np.empty(LANES, dtype=np.int64)
    work = (
        np.empty((m + 1, LANES)), np.empty((m + 1, LANES)), np.empty(LANES),
        np.empty(LANES), np.empty(m), np.empty(m + 1), np.empty(m + w + 2),
        np.empty((2, m + 1)),
    )
    means = np.zeros(STATS_BLOCK)
    inv_stds = np.ones(STATS_BLOCK)
    p1 = np.empty(STATS_BLOCK + m)
    p2 = np.empty(STATS_BLOCK + m)
    prune = threshold * (1.0 + PRUNE_SLACK)
    nb = 0
    kim = np.empty(STATS_BLOCK)
    eq = np.empty(STATS_BLOCK)
    ec = np.empty(STATS_BLOCK)
    eq_all = np.empty(STATS_BLOCK)
    ec_all = np.empty(STATS_BLOCK)
    todo = np.empty(STATS_BLOCK, dtype=np.int64)
    todo2 = np.empty(STATS_BLOCK, dtype=np.int64)
    blk_upper = np.empty(STATS_BLOCK + m + 2 * w)
    blk_lower = np.empty(STATS_BLOCK + m + 2 * w)
    for b0 in range(c0, c1, STATS_BLOCK):
        b1 = min(c1, b0 + STATS_BLOCK)
        other = shared[0]
        if other < threshold:
            threshold = np.nextafter(other, _INF)
            prune = threshold * (1.0 + PRUNE_SLACK)
        elif threshold < other:
            shared[0] = threshold
        # Worst case, every candidate of the block (and the batch) enters the
        # pool: make room first, or hand back to the caller at this block.
        if count + nb + (b1 - b0) > cap:
            if nb:
                count, threshold = _flush(bc, cbr, cbc, ids, nb, q, w, k, radius, pool_d,
                                          pool_s, count, threshold, stats, work)
                nb = 0
            threshold, count = _tighten(pool_d, pool_s, count, k, radius, threshold)
            prune = threshold * (1.0 + PRUNE_SLACK)
            if count + (b1 - b0) > cap:
                return count, threshold, b0
        if stream_stats:
            stats_block(x, m, b0, b1, p1, p2, means, inv_stds)
        # LB_Kim for the whole block at once; only its survivors go on.
        lb_kim_block(x, stride, b0, b1 - b0, means, inv_stds, q, kim)
        n_todo = 0
        for i in range(b1 - b0):
            todo[n_todo] = i
            n_todo += 1 if kim[i] < prune else 0
        # Then LB_Keogh against the query envelope, for the block's survivors,
        # and against the data envelope for the survivors of that.
        # Dense survivors: complete bounds for the whole block, SIMD across
        # candidates; sparse: early-abandoning bounds for the survivors only.
        count_b = b1 - b0
        dense = stride == 1 and n_todo * _DENSE >= count_b
        if dense:
            lb_keogh_query_all(x, b0, count_b, means, inv_stds, q_upper, q_lower, eq_all)
            for ti in range(n_todo):
                eq[ti] = eq_all[todo[ti]]
        else:
            lb_keogh_query_block(x, stride, b0, todo, n_todo, means, inv_stds, blocks,
                                 q_upper, q_lower, prune, eq)
        n_todo2 = 0
        for ti in range(n_todo):
            todo2[n_todo2] = todo[ti]
            n_todo2 += 1 if eq[ti] < prune else 0
        stats[0] += b1 - b0
        stats[1] += b1 - b0 - n_todo
        stats[2] += n_todo - n_todo2
        if n_todo2 == 0:
            continue
        if lazy_env:
            # The data envelope over the span of the survivors' windows (clipped
            # only at the series' ends): often a single window, not the block.
            lo = max(0, b0 + todo2[0] - w)
            hi = min(x.shape[0], b0 + todo2[n_todo2 - 1] + m + w)
            window_envelope(x[lo:hi], w, blk_upper[:hi - lo], blk_lower[:hi - lo])
            env_u = blk_upper
            env_l = blk_lower
            base = lo
        else:
            env_u = env_upper
            env_l = env_lower
            base = 0
        first = todo2[0]
        span = todo2[n_todo2 - 1] - first + 1
        if stride == 1 and n_todo2 * _DENSE >= span:
            lb_keogh_data_all(env_u, env_l, base, b0 + first, span, means[first:],
                              inv_stds[first:], q, ec_all)
            for ti in range(n_todo2):
                ec[ti] = ec_all[todo2[ti] - first]
        else:
            lb_keogh_data_block(env_u, env_l, base, stride, b0, todo2, n_todo2, means,
                                inv_stds, blocks, q, prune, ec)
        for ti in range(n_todo2):
            i = todo2[ti]
            c = b0 + i
            if ec[ti] >= prune:
                stats[3] += 1
                continue
            start = c * stride
            mean = means[i]
            inv = inv_stds[i]
            for t in range(m):
                cn[t] = (x[start + t] - mean) * inv
            keogh_query_contrib(cn, q_upper, q_lower, contrib_eq)
            keogh_data_contrib(env_u, env_l, start - base, mean, inv, q, contrib_ec)
            acc_r = 0.0
            acc_c = 0.0
            for t in range(m - 1, -1, -1):
                acc_r += contrib_eq[t]
                acc_c += contrib_ec[t]
                cbr[t, nb] = acc_r
                cbc[t, nb] = acc_c
            cbr[m, nb] = 0.0
            for t in range(m, m + w + 2):
                cbc[t, nb] = 0.0
            for t in range(m):
                bc[t, nb] = cn[t]
            ids[nb] = c
            nb += 1
            if nb == LANES:
                count, threshold = _flush(bc, cbr, cbc, ids, nb, q, w, k, radius, pool_d,
                                          pool_s, count, threshold, stats, work)
                prune = threshold * (1.0 + PRUNE_SLACK)
                nb = 0
    if nb:
        count, threshold = _flush(bc, cbr, cbc, ids, nb, q, w, k, radius, pool_d, pool_s,
                                  count, threshold, stats, work)
    return count, threshold, c1
