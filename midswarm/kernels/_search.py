"""Exact k-nearest-neighbour search under banded DTW (UCR-Suite style).

Theory of operation
-------------------
:func:`dtw_knn_stats` prepares the query (z-normalised, its envelope, its
blocks ordered by magnitude, see :mod:`._bounds`), takes a starting threshold
from an evenly spaced sample of candidates (see :func:`_seed_threshold`), then
scans all candidates through the compiled cascade of :mod:`._cascade`; window
statistics and envelopes are computed inside the scan.  The candidates are cut
into chunks handed out by ``prange`` to whichever thread is free; each chunk
keeps its own pool and threshold (a per-thread heap, in effect) and exchanges
the threshold with the others through one shared value at every block, so a
good match found by one thread prunes for all.  When the scan cannot start
with a finite threshold (tiny inputs) a first round runs one chunk alone.  At
the end the pools are merged and the answer selected from them.

A matrix of stored patterns (one per row) is searched the same way through
:class:`PatternLibrary`, which normalises the rows and computes their envelopes
once so that a pattern matcher can query it many times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numba import prange

from ._bounds import block_order
from ._cascade import N_STATS, pool_threshold, scan_chunk, select_greedy
from ._dtw import LANES, dtw_sq_pairs
from ._envelope import FLAT_ATOL, FLAT_RTOL, STATS_BLOCK, envelope_range, flat_inverse, znormalize
from ._validate import (
    as_matrix,
    as_series,
    check_positive_int,
    check_window,
)

__all__ = ["KnnResult", "PatternLibrary", "SearchStats", "dtw_knn", "dtw_knn_stats"]


# Candidates per chunk: about _CHUNKS_PER_THREAD chunks per thread, handed out
# dynamically.  Each chunk starts from the threshold shared at that moment, so
# more, smaller chunks balance better under load but start staler: measured,
# 4 per thread costs ~5 % more work than 1 for k = 10 and nothing for k = 1.
_MIN_CHUNK = 4096
_CHUNKS_PER_THREAD = 4


# Starting-threshold sample: this many candidates per wanted match, at least
# _SEED_MIN.  (Larger samples were tried: the threshold converges within the
# first chunk anyway, so they only cost time.)
_SEED_PER_K = 16
_SEED_MIN = 64
_SEED_MARGIN = 1e-9


def _pool_capacity(k: int, radius: int) -> int:
    # Room for a block of candidates plus a threshold's worth of entries: k
    # picks 2*exclusion apart exist among any k * (4 * exclusion + 1)
    # consecutive candidates, so a chunk rarely needs to grow its pool.
    return max(1024, STATS_BLOCK + LANES + 2 * k * (2 * radius + 1))


@dataclass(frozen=True)
class SearchStats:
    """How the candidates of one search were disposed of.

    Every candidate is counted once, at the stage that settled it: pruned by
    one of the three lower bounds, rejected by DTW (abandoned early or not
    below the threshold at the end), or accepted by DTW (it entered the pool
    of possible answers).
    """

    candidates: int
    pruned_kim: int
    pruned_keogh_query: int
    pruned_keogh_data: int
    dtw_rejected: int
    dtw_accepted: int

    def shares(self) -> dict[str, float]:
        """Fraction of all candidates settled at each stage."""
        total = max(1, self.candidates)
        return {
            "lb_kim": self.pruned_kim / total,
            "lb_keogh_query": self.pruned_keogh_query / total,
            "lb_keogh_data": self.pruned_keogh_data / total,
            "dtw_rejected": self.dtw_rejected / total,
            "dtw_accepted": self.dtw_accepted / total,
        }


@dataclass(frozen=True)
class KnnResult:
    """Matches sorted by ``(distance, start)`` plus the pruning counters."""

    starts: np.ndarray
    distances: np.ndarray
    stats: SearchStats


@numba.njit(cache=True, nogil=True, parallel=True)
def _scan_round(
    x: np.ndarray, env_upper: np.ndarray, env_lower: np.ndarray, stream_stats: bool,
    stride: int, los: np.ndarray, his: np.ndarray, q: np.ndarray, q_upper: np.ndarray,
    q_lower: np.ndarray, blocks: np.ndarray, w: int, k: int, radius: int,
    pools_d: np.ndarray, pools_s: np.ndarray, counts: np.ndarray, threshold: float,
    stats: np.ndarray, thresholds: np.ndarray, resume: np.ndarray,
) -> None:
    shared = np.full(1, threshold)
    for r in prange(los.shape[0]):
        cnt, thr, nxt = scan_chunk(
            x, env_upper, env_lower, stream_stats, stride, los[r], his[r], q, q_upper,
            q_lower, blocks, w, k, radius, pools_d[r], pools_s[r], counts[r], threshold,
            stats[r], shared,
        )
        counts[r] = cnt
        thresholds[r] = thr
        resume[r] = nxt


@dataclass(frozen=True)
class _Prepared:
    """Everything the cascade needs about the candidates (flat buffer layout).

    ``stream_stats``: z-normalise windows of ``x`` on the fly; otherwise the
    candidates are used as stored.  Empty envelopes: computed during the scan.
    """

    x: np.ndarray
    env_upper: np.ndarray
    env_lower: np.ndarray
    stream_stats: bool
    stride: int
    n_cand: int

    def windows(self, rows: np.ndarray, m: int) -> np.ndarray:
        """Candidates *rows* as a normalised ``(len(rows), m)`` matrix."""
        idx = (rows * self.stride)[:, None] + np.arange(m)
        win = self.x[idx]
        if not self.stream_stats:
            return win
        mean = win.mean(axis=1, keepdims=True)
        std = win.std(axis=1, keepdims=True)
        flat = (std <= FLAT_RTOL * np.abs(mean)) | (std < FLAT_ATOL)
        return np.where(flat, 0.0, (win - mean) / np.where(flat, 1.0, std))


def _prepare_query(q: np.ndarray, w: int, znorm: bool) -> tuple[np.ndarray, ...]:
    qn = znormalize(q) if znorm else q.copy()
    m = qn.shape[0]
    q_upper = np.empty(m)
    q_lower = np.empty(m)
    envelope_range(qn, w, 0, m, q_upper, q_lower)
    return qn, q_upper, q_lower, block_order(qn)


def _merge_pools(
    parts_d: list[np.ndarray], parts_s: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    d = np.concatenate(parts_d)
    s = np.concatenate(parts_s)
    idx = np.lexsort((s, d))
    d = d[idx]
    s = s[idx]
    # Chunks start from a copy of the shared pool: drop the repeats.
    _, first = np.unique(s, return_index=True)
    first.sort()
    return np.ascontiguousarray(d[first]), np.ascontiguousarray(s[first])


def _seed_threshold(prep: _Prepared, qn: np.ndarray, w: int, k: int, radius: int) -> float:
    """A finite starting threshold from a sample of well-separated candidates.

    Any k candidates more than ``radius`` apart bound the answer (see
    :mod:`._cascade`), so the k-th smallest distance in an evenly spaced
    sample is a valid threshold before the scan has seen anything.  The
    margin covers the rounding differences between this normalisation and the
    scan's own.
    """
    m = qn.shape[0]
    spacing = radius + 1
    available = (prep.n_cand - 1) // spacing + 1
    if available < k:
        return np.inf
    sample = min(available, max(_SEED_MIN, _SEED_PER_K * k))
    rows = np.linspace(0, (available - 1) * spacing, sample)
    rows = (np.round(rows / spacing) * spacing).astype(np.int64)
    cands = prep.windows(rows, m)
    zeros = np.zeros(sample, dtype=np.int64)
    dist = dtw_sq_pairs(qn[None, :], np.ascontiguousarray(cands), zeros,
                        np.arange(sample, dtype=np.int64), w)
    return float(np.partition(dist, k - 1)[k - 1]) * (1.0 + _SEED_MARGIN)


def _search(
    prep: _Prepared, q: np.ndarray, w: int, k: int, exclusion: int, znorm: bool
) -> KnnResult:
    qn, q_upper, q_lower, blocks = _prepare_query(q, w, znorm)
    radius = 2 * exclusion
    n_cand = prep.n_cand
    threads = numba.get_num_threads()
    chunk = max(_MIN_CHUNK, -(-n_cand // (_CHUNKS_PER_THREAD * threads)))
    base_cap = _pool_capacity(k, radius)
    stats = np.zeros(N_STATS, dtype=np.int64)
    pool_d = np.empty(0)
    pool_s = np.empty(0, dtype=np.int64)
    threshold = _seed_threshold(prep, qn, w, k, radius)
    pos = 0
    while pos < n_cand:
        # Without a threshold yet, one chunk alone finds one for the others.
        n_chunks = 1 if threshold == np.inf else -(-(n_cand - pos) // chunk)
        los = np.arange(n_chunks, dtype=np.int64) * chunk + pos
        los = los[los < n_cand]
        his = np.minimum(los + chunk, n_cand)
        n_chunks = los.shape[0]
        cap = base_cap + pool_d.shape[0]
        pools_d = np.empty((n_chunks, cap))
        pools_s = np.empty((n_chunks, cap), dtype=np.int64)
        pools_d[:, : pool_d.shape[0]] = pool_d
        pools_s[:, : pool_s.shape[0]] = pool_s
        counts = np.full(n_chunks, pool_d.shape[0], dtype=np.int64)
        round_stats = np.zeros((n_chunks, N_STATS), dtype=np.int64)
        thresholds = np.empty(n_chunks)
        resume = np.empty(n_chunks, dtype=np.int64)
        # Chunks go to whichever thread is free, one at a time: a thread the
        # OS preempts then holds back one chunk, not a share of the round.
        old_chunksize = numba.set_parallel_chunksize(1)
        try:
            _scan_round(
                prep.x, prep.env_upper, prep.env_lower, prep.stream_stats, prep.stride,
                los, his, qn, q_upper, q_lower, blocks, w, k, radius, pools_d, pools_s,
                counts, threshold, round_stats, thresholds, resume,
            )
        finally:
            numba.set_parallel_chunksize(old_chunksize)
        parts_d = []
        parts_s = []
        for r in range(n_chunks):
            c_d = pools_d[r, : counts[r]]
            c_s = pools_s[r, : counts[r]]
            thr = thresholds[r]
            cur_cap = cap
            while resume[r] < his[r]:
                # The chunk's pool filled up: grow it and carry on alone.
                cur_cap *= 2
                big_d = np.empty(cur_cap)
                big_s = np.empty(cur_cap, dtype=np.int64)
                big_d[: c_d.shape[0]] = c_d
                big_s[: c_s.shape[0]] = c_s
                cnt, thr, nxt = scan_chunk(
                    prep.x, prep.env_upper, prep.env_lower, prep.stream_stats, prep.stride,
                    resume[r], his[r], qn, q_upper, q_lower, blocks, w, k, radius, big_d,
                    big_s, c_d.shape[0], thr, round_stats[r], np.full(1, thr),
                )
                c_d = big_d[:cnt]
                c_s = big_s[:cnt]
                resume[r] = nxt
            thresholds[r] = thr
            parts_d.append(c_d)
            parts_s.append(c_s)
        stats += round_stats.sum(axis=0)
        pool_d, pool_s = _merge_pools(parts_d, parts_s)
        merged, count = pool_threshold(pool_d, pool_s, pool_d.shape[0], k, radius)
        threshold = min(threshold, merged, float(thresholds.min()))
        keep = count if merged < np.inf else int(np.searchsorted(pool_d, threshold))
        pool_d = pool_d[:keep]
        pool_s = pool_s[:keep]
        pos = int(his[-1])
    picks = np.empty(k, dtype=np.int64)
    n_picked, _ = select_greedy(pool_d, pool_s, pool_d.shape[0], k, exclusion, picks)
    chosen = picks[:n_picked]
    return KnnResult(
        starts=pool_s[chosen].copy(),
        distances=np.sqrt(pool_d[chosen]),
        stats=SearchStats(*(int(v) for v in stats)),
    )


def _check_znorm(znorm: Any) -> bool:
    if not isinstance(znorm, bool | np.bool_):
        raise TypeError(f"znorm: expected a bool, got {type(znorm).__name__}")
    return bool(znorm)


@numba.njit(cache=True, nogil=True, parallel=True)
def _prepare_rows(
    rows: np.ndarray, w: int, znorm: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, m = rows.shape
    out = np.empty((n, m))
    upper = np.empty((n, m))
    lower = np.empty((n, m))
    for r in prange(n):
        mean = 0.0
        inv = 1.0
        if znorm:
            ref = rows[r, 0]
            s = 0.0
            for t in range(m):
                s += rows[r, t] - ref
            mean = ref + s / m
            ss = 0.0
            for t in range(m):
                ss += (rows[r, t] - mean) ** 2
            inv = flat_inverse(mean, np.sqrt(ss / m))
        for t in range(m):
            out[r, t] = (rows[r, t] - mean) * inv
        envelope_range(out[r], w, 0, m, upper[r], lower[r])
    return out, upper, lower


class PatternLibrary:
    """A matrix of stored patterns (one per row) prepared for repeated DTW queries.

    The rows are z-normalised (when *znorm*; kept in :attr:`patterns`) and
    their envelopes computed once, here; :meth:`knn` then runs the same exact lower-bound cascade as
    :func:`dtw_knn` over the rows, and :meth:`distances` scores a query against
    every row exactly (multi-lane, multi-thread DTW, no pruning).  Rows are
    independent patterns, so no trivial-match exclusion applies.

    Raises:
        ValueError: if *patterns* is not a finite 2-D array with at least one
            row, or ``window < 0``.
        TypeError: if *window* is not an int or *znorm* not a bool.
    """

    def __init__(self, patterns: Any, window: int = 10, znorm: bool = True) -> None:
        rows = as_matrix("patterns", patterns)
        self.window = check_window("window", window)
        self.znorm = _check_znorm(znorm)
        normed, upper, lower = _prepare_rows(rows, self.window, self.znorm)
        self.patterns = normed
        n, m = rows.shape
        self._prep = _Prepared(normed.ravel(), upper.ravel(), lower.ravel(), False, m, n)

    def __len__(self) -> int:
        return int(self.patterns.shape[0])

    @property
    def length(self) -> int:
        """Length every query must have."""
        return int(self.patterns.shape[1])

    def _query(self, query: Any) -> np.ndarray:
        q = as_series("query", query)
        if q.shape[0] != self.length:
            raise ValueError(
                f"query: length {q.shape[0]} does not match the patterns' length {self.length}"
            )
        return q

    def knn_stats(self, query: Any, k: int = 5) -> KnnResult:
        """Exact k nearest rows to *query* plus pruning counters."""
        q = self._query(query)
        k = check_positive_int("k", k)
        return _search(self._prep, q, self.window, k, 0, self.znorm)

    def knn(self, query: Any, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, distances)`` of the k nearest patterns, sorted by distance
        then row; at most ``len(self)`` of them."""
        res = self.knn_stats(query, k)
        return res.starts, res.distances

    def distances(self, query: Any) -> np.ndarray:
        """Exact DTW distance from *query* to every row, in row order."""
        q = self._query(query)
        qn = znormalize(q) if self.znorm else q
        rows = np.arange(len(self), dtype=np.int64)
        return np.sqrt(dtw_sq_pairs(qn[None, :], self.patterns, np.zeros_like(rows), rows,
                                    self.window))


def dtw_knn_stats(
    query: Any, series: Any, k: int = 5, window: int = 10, znorm: bool = True,
    exclusion: int | None = None,
) -> KnnResult:
    """:func:`dtw_knn` that also returns how many candidates each bound pruned."""
    q = as_series("query", query)
    k = check_positive_int("k", k)
    w = check_window("window", window)
    zn = _check_znorm(znorm)
    try:
        arr = np.asarray(series)
    except Exception as exc:  # ragged nested lists and the like
        raise ValueError(f"series: cannot be read as a numeric array ({exc})") from exc
    if arr.ndim == 2:
        if exclusion not in (None, 0):
            raise ValueError(
                "exclusion: rows of a 2-D series are independent windows; "
                "exclusion must be None or 0"
            )
        return PatternLibrary(arr, w, zn).knn_stats(q, k)
    x = as_series("series", series)
    m = q.shape[0]
    if m > x.shape[0]:
        raise ValueError(
            f"query: length {m} is longer than series (length {x.shape[0]})"
        )
    excl = m // 4 if exclusion is None else check_window("exclusion", exclusion)
    # No envelope arrays: the cascade computes the spans it needs.
    prep = _Prepared(x, np.empty(0), np.empty(0), zn, 1, x.shape[0] - m + 1)
    return _search(prep, q, w, k, excl, zn)


def dtw_knn(
    query: Any, series: Any, k: int = 5, window: int = 10, znorm: bool = True,
    exclusion: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest subsequences of *series* to *query* under banded DTW.

    Every window ``series[s : s + len(query)]`` is a candidate; with *znorm*
    both query and candidate are z-normalised first (population standard
    deviation; a flat window, ``std <= 1e-10 * |mean|`` or ``std < 1e-150``,
    becomes all zeros).
    The answer is the greedy one: candidates sorted by ``(distance, start)``,
    take the best, discard every candidate whose start is within *exclusion*
    of it (``|s - s_best| <= exclusion``), repeat until *k* are taken.  It is
    exactly what brute force over every candidate returns; lower bounds and
    early abandoning only skip work.

    *series* may also be a 2-D array of candidate windows (one per row, each
    as long as the query); ``starts`` are then row numbers and there is no
    exclusion.  To query the same rows repeatedly build a
    :class:`PatternLibrary` once instead.

    Args:
        query: 1-D finite series of length ``m``.
        series: 1-D finite series of length ``>= m``, or a 2-D ``(rows, m)`` array.
        k: number of matches wanted (``>= 1``); fewer come back when the
            exclusion zones leave fewer candidates.
        window: Sakoe-Chiba band half-width (see :func:`dtw`).
        znorm: z-normalise query and candidates.
        exclusion: trivial-match zone; default ``len(query) // 4``.

    Returns:
        ``(starts, distances)``: int64 and float64 arrays sorted by distance.

    Raises:
        ValueError: naming the argument, for NaN/inf, empty or wrongly
            dimensioned inputs, ``window < 0``, ``k < 1``, ``exclusion < 0``, a
            query longer than the series or of another length than the rows.
        TypeError: for a non-int window, k or exclusion, or a non-bool znorm.
    """
    res = dtw_knn_stats(query, series, k, window, znorm, exclusion)
    return res.starts, res.distances
