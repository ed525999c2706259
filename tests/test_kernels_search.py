"""dtw_knn must return exactly what brute force over every candidate returns."""

from __future__ import annotations

import numpy as np
import pytest
from dtaidistance import dtw as dd_dtw

from midswarm.kernels import PatternLibrary, dtw_knn, dtw_knn_stats, dtw_scores
from midswarm.kernels import _search as search_module


def _znorm(x: np.ndarray) -> np.ndarray:
    # The documented rule: population std; flat (std <= 1e-10 |mean| or
    # std < 1e-150) windows become zeros.
    mean = x.mean()
    std = x.std()
    if std <= 1e-10 * abs(mean) or std < 1e-150:
        return np.zeros_like(x)
    return (x - mean) / std


def _greedy(dist: np.ndarray, k: int, exclusion: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((np.arange(dist.size), dist))
    picks: list[int] = []
    for s in order:
        if all(abs(int(s) - p) > exclusion for p in picks):
            picks.append(int(s))
            if len(picks) == k:
                break
    idx = np.array(picks, dtype=np.int64)
    return idx, dist[idx]


def _brute(
    q: np.ndarray, x: np.ndarray, k: int, w: int, znorm: bool, exclusion: int,
    use_dtaidistance: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    m = q.size
    windows = np.lib.stride_tricks.sliding_window_view(x, m)
    qq = _znorm(q) if znorm else q
    cands = np.array([_znorm(r) for r in windows]) if znorm else np.array(windows)
    if use_dtaidistance:
        dist = np.array(
            [dd_dtw.distance_fast(qq, c, window=w + 1, use_pruning=False) for c in cands]
        )
    else:
        dist = dtw_scores(qq, cands, window=w)
    return _greedy(dist, k, exclusion)


def _case(seed: int) -> tuple[np.ndarray, np.ndarray, int, int, bool, int | None]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(150, 2500))
    m = int(rng.integers(8, min(70, n // 2)))
    x = np.cumsum(rng.standard_normal(n))
    if rng.random() < 0.4:  # a flat stretch: ties between flat windows
        at = int(rng.integers(0, n - 1))
        x[at:at + int(rng.integers(m, 3 * m))] = float(rng.integers(-5, 5))
    if rng.random() < 0.5:  # a planted near-copy of the query
        q = x[int(rng.integers(0, n - m))::][:m] + 0.05 * rng.standard_normal(m)
    else:
        q = np.cumsum(rng.standard_normal(m))
    k = int(rng.integers(1, 9))
    w = int(rng.integers(0, 11))
    znorm = bool(rng.random() < 0.8)
    exclusion = None if rng.random() < 0.5 else int(rng.integers(0, 2 * m))
    return q, x, k, w, znorm, exclusion


@pytest.mark.parametrize("seed", range(40))
def test_knn_equals_brute_force(seed: int) -> None:
    q, x, k, w, znorm, exclusion = _case(seed)
    starts, dists = dtw_knn(q, x, k=k, window=w, znorm=znorm, exclusion=exclusion)
    excl = q.size // 4 if exclusion is None else exclusion
    ref_starts, ref_dists = _brute(q, x, k, w, znorm, excl)
    np.testing.assert_array_equal(starts, ref_starts)
    np.testing.assert_allclose(dists, ref_dists, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("tiny_pools", [False, True])
@pytest.mark.parametrize("seed", range(40, 50))
def test_knn_equals_brute_force_with_many_chunks(
    seed: int, tiny_pools: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks: many chunks on both threads, sharing a threshold, then
    # merging their pools.  A tiny pool capacity forces the grow-and-resume path.
    monkeypatch.setattr(search_module, "_MIN_CHUNK", 37)
    if tiny_pools:
        monkeypatch.setattr(search_module, "_pool_capacity", lambda k, radius: 2)
    q, x, k, w, znorm, exclusion = _case(seed)
    starts, dists = dtw_knn(q, x, k=k, window=w, znorm=znorm, exclusion=exclusion)
    excl = q.size // 4 if exclusion is None else exclusion
    ref_starts, ref_dists = _brute(q, x, k, w, znorm, excl)
    np.testing.assert_array_equal(starts, ref_starts)
    np.testing.assert_allclose(dists, ref_dists, rtol=1e-9, atol=1e-9)


def test_knn_on_a_long_series_with_default_parameters() -> None:
    rng = np.random.default_rng(2024)
    x = np.cumsum(rng.standard_normal(120_000))
    q = np.cumsum(rng.standard_normal(64))
    for k in (1, 10):
        res = dtw_knn_stats(q, x, k=k, window=6)
        ref_starts, ref_dists = _brute(q, x, k, 6, True, 16, use_dtaidistance=False)
        np.testing.assert_array_equal(res.starts, ref_starts)
        np.testing.assert_allclose(res.distances, ref_dists, rtol=1e-9, atol=1e-9)
        s = res.stats
        assert s.candidates == x.size - q.size + 1
        settled = (
            s.pruned_kim + s.pruned_keogh_query + s.pruned_keogh_data + s.dtw_rejected
            + s.dtw_accepted
        )
        assert settled == s.candidates
        # The bounds do the work: far fewer full DTWs than candidates.
        assert s.dtw_accepted < s.candidates // 20
        assert abs(sum(s.shares().values()) - 1.0) < 1e-12


def test_constant_series_ties_break_by_start() -> None:
    x = np.full(300, 4.0)
    q = np.sin(np.linspace(0, 3, 20))
    starts, dists = dtw_knn(q, x, k=3, window=2, exclusion=5)
    np.testing.assert_array_equal(starts, [0, 6, 12])
    expected = np.linalg.norm(_znorm(q))  # every window normalises to zeros
    np.testing.assert_allclose(dists, expected, rtol=1e-12)


def test_flat_query_does_not_divide_by_zero() -> None:
    rng = np.random.default_rng(1)
    x = np.cumsum(rng.standard_normal(500))
    x[100:140] = 7.0
    q = np.full(16, 2.5)
    # A flat query normalises to zeros: flat windows are at distance 0, every
    # other window at sqrt(16) (its normalised values have sum of squares 16).
    starts, dists = dtw_knn(q, x, k=3, window=3, exclusion=4)
    np.testing.assert_array_equal(starts, [100, 105, 110])
    np.testing.assert_array_equal(dists, 0.0)
    starts, dists = dtw_knn(q, x[200:], k=2, window=3)
    np.testing.assert_allclose(dists, 4.0, rtol=1e-9)


def test_fewer_matches_when_exclusion_leaves_fewer_candidates() -> None:
    rng = np.random.default_rng(9)
    x = np.cumsum(rng.standard_normal(40))
    q = np.cumsum(rng.standard_normal(20))
    starts, dists = dtw_knn(q, x, k=10, window=2, exclusion=10)
    ref_starts, ref_dists = _brute(q, x, 10, 2, True, 10)
    assert 1 <= starts.size < 10
    np.testing.assert_array_equal(starts, ref_starts)
    np.testing.assert_allclose(dists, ref_dists, rtol=1e-9)


def test_query_equal_to_series_length() -> None:
    x = np.sin(np.linspace(0, 6, 50))
    starts, dists = dtw_knn(x, x, k=3)
    np.testing.assert_array_equal(starts, [0])
    assert dists[0] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("znorm", [True, False])
def test_two_dimensional_candidates_equal_brute_force(znorm: bool) -> None:
    rng = np.random.default_rng(77)
    lib = np.cumsum(rng.standard_normal((900, 32)), axis=1)
    lib[5] = 1.0  # a flat pattern
    q = lib[123] * 1.5 + 0.1 * rng.standard_normal(32)
    starts, dists = dtw_knn(q, lib, k=7, window=4, znorm=znorm)
    qq = _znorm(q) if znorm else q
    rows = np.array([_znorm(r) for r in lib]) if znorm else lib
    ref = np.array([dd_dtw.distance_fast(qq, r, window=5, use_pruning=False) for r in rows])
    ref_starts, ref_dists = _greedy(ref, 7, 0)
    np.testing.assert_array_equal(starts, ref_starts)
    np.testing.assert_allclose(dists, ref_dists, rtol=1e-9, atol=1e-9)
    if znorm:
        assert starts[0] == 123


def test_pattern_library_reuse_and_scores() -> None:
    rng = np.random.default_rng(5)
    patterns = np.cumsum(rng.standard_normal((300, 24)), axis=1).astype(np.float32)
    library = PatternLibrary(patterns, window=3)
    assert len(library) == 300 and library.length == 24
    for _ in range(3):
        q = np.cumsum(rng.standard_normal(24))
        all_d = library.distances(q)
        expected = [
            dd_dtw.distance_fast(_znorm(q), _znorm(p.astype(np.float64)), window=4,
                                 use_pruning=False)
            for p in patterns
        ]
        np.testing.assert_allclose(all_d, expected, rtol=1e-9, atol=1e-9)
        rows, dists = library.knn(q, k=4)
        ref_rows, ref_dists = _greedy(np.asarray(expected), 4, 0)
        np.testing.assert_array_equal(rows, ref_rows)
        np.testing.assert_allclose(dists, ref_dists, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"query": [1.0, np.nan, 2.0]}, ValueError, "query: contains NaN"),
        ({"series": np.r_[np.zeros(10), np.inf]}, ValueError, "series: contains NaN"),
        ({"query": np.zeros(50)}, ValueError, "query: length 50 is longer than series"),
        ({"k": 0}, ValueError, "k: must be >= 1"),
        ({"window": -1}, ValueError, "window: must be >= 0"),
        ({"exclusion": -3}, ValueError, "exclusion: must be >= 0"),
        ({"query": []}, ValueError, "query: needs at least 1"),
        ({"query": np.zeros((2, 2))}, ValueError, "query: expected a 1-D"),
        ({"series": np.zeros((4, 5))}, ValueError, "query: length 3 does not match"),
        ({"series": np.zeros((4, 3)), "exclusion": 2}, ValueError, "exclusion: rows"),
        ({"series": np.zeros((2, 2, 2))}, ValueError, "series: expected a 1-D"),
        ({"k": 2.0}, TypeError, "k: expected an int"),
        ({"znorm": "yes"}, TypeError, "znorm: expected a bool"),
    ],
)
def test_knn_rejects_bad_input(kwargs: dict[str, object], error: type, match: str) -> None:
    args: dict[str, object] = {"query": np.arange(3.0), "series": np.arange(20.0)}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        dtw_knn(**args)  # type: ignore[arg-type]


def test_streamed_window_statistics_are_accurate_and_flag_flat_windows() -> None:
    from midswarm.kernels._envelope import STATS_BLOCK, stats_block

    rng = np.random.default_rng(12)
    m = 50
    # A large level, a drifting walk and an exactly flat stretch.
    x = 1e6 + np.cumsum(rng.standard_normal(3000))
    x[1000:1200] = 1e6 + 3.0
    p1 = np.empty(STATS_BLOCK + m)
    p2 = np.empty(STATS_BLOCK + m)
    means = np.empty(STATS_BLOCK)
    inv = np.empty(STATS_BLOCK)
    view = np.lib.stride_tricks.sliding_window_view(x, m)
    for c0 in range(0, view.shape[0], STATS_BLOCK):
        c1 = min(view.shape[0], c0 + STATS_BLOCK)
        stats_block(x, m, c0, c1, p1, p2, means, inv)
        ref_std = view[c0:c1].std(axis=1)
        flat = ref_std <= 1e-10 * np.abs(view[c0:c1].mean(axis=1))
        np.testing.assert_allclose(means[: c1 - c0], view[c0:c1].mean(axis=1), rtol=1e-14)
        np.testing.assert_array_equal(inv[: c1 - c0] == 0.0, flat)
        np.testing.assert_allclose(
            inv[: c1 - c0][~flat], 1.0 / ref_std[~flat], rtol=1e-9
        )


@pytest.mark.parametrize("w", [0, 1, 3, 16, 40])
def test_envelopes_match_a_direct_computation(w: int) -> None:
    from midswarm.kernels._bounds import window_envelope
    from midswarm.kernels._envelope import envelope_range

    rng = np.random.default_rng(w)
    v = rng.standard_normal(97)
    expected_u = np.array([v[max(0, i - w):i + w + 1].max() for i in range(v.size)])
    expected_l = np.array([v[max(0, i - w):i + w + 1].min() for i in range(v.size)])
    for fill in (window_envelope, lambda a, r, u, lo: envelope_range(a, r, 0, a.size, u, lo)):
        upper = np.empty_like(v)
        lower = np.empty_like(v)
        fill(v, w, upper, lower)
        np.testing.assert_array_equal(upper, expected_u)
        np.testing.assert_array_equal(lower, expected_l)


@pytest.mark.parametrize("m", [3, 6, 40])
def test_lower_bounds_never_exceed_dtw(m: int) -> None:
    from midswarm.kernels._bounds import (
        block_order,
        lb_keogh_data_all,
        lb_keogh_query_all,
        lb_kim_block,
        window_envelope,
    )
    from midswarm.kernels._envelope import envelope_range

    rng = np.random.default_rng(m)
    w = 3
    x = np.cumsum(rng.standard_normal(400))
    q = _znorm(np.cumsum(rng.standard_normal(m)))
    n_cand = x.size - m + 1
    windows = np.array([_znorm(x[s:s + m]) for s in range(n_cand)])
    means = np.array([x[s:s + m].mean() for s in range(n_cand)])
    inv = 1.0 / np.array([x[s:s + m].std() for s in range(n_cand)])
    exact = np.array([dd_dtw.distance_fast(q, c, window=w + 1, use_pruning=False) ** 2
                      for c in windows])
    q_upper = np.empty(m)
    q_lower = np.empty(m)
    envelope_range(q, w, 0, m, q_upper, q_lower)
    env_upper = np.empty_like(x)
    env_lower = np.empty_like(x)
    window_envelope(x, w, env_upper, env_lower)
    kim = np.empty(n_cand)
    eq = np.empty(n_cand)
    ec = np.empty(n_cand)
    lb_kim_block(x, 1, 0, n_cand, means, inv, q, kim)
    lb_keogh_query_all(x, 0, n_cand, means, inv, q_upper, q_lower, eq)
    lb_keogh_data_all(env_upper, env_lower, 0, 0, n_cand, means, inv, q, ec)
    slack = 1 + 1e-12
    assert (kim <= exact * slack).all()
    assert (eq <= exact * slack).all()
    assert (ec <= exact * slack).all()
    # And they are not vacuous.
    assert kim.max() > 0 and eq.max() > 0 and ec.max() > 0
    assert block_order(q).size == -(-m // 8)
