"""Banded DTW against dtaidistance and tslearn, plus argument checks."""

from __future__ import annotations

import numpy as np
import pytest
from dtaidistance import dtw as dd_dtw
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from tslearn.metrics import cdist_dtw
from tslearn.metrics import dtw as tl_dtw

from midswarm.kernels import dtw, dtw_matrix, dtw_scores

_values = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


def _series(min_size: int = 1, max_size: int = 40) -> st.SearchStrategy[np.ndarray]:
    return st.integers(min_size, max_size).flatmap(
        lambda n: arrays(np.float64, n, elements=_values)
    )


def _close(a: float, b: float) -> bool:
    return bool(np.isclose(a, b, rtol=1e-9, atol=1e-9))


@settings(max_examples=80, deadline=None)
@given(a=_series(), b=_series(), window=st.integers(0, 15))
def test_dtw_matches_dtaidistance_and_tslearn(a: np.ndarray, b: np.ndarray, window: int) -> None:
    ours = dtw(a, b, window=window)
    # dtaidistance counts the diagonal in its window; its pure-Python path
    # handles every length combination.
    ref_dd = dd_dtw.distance(a, b, window=window + 1)
    ref_tl = tl_dtw(a, b, global_constraint="sakoe_chiba", sakoe_chiba_radius=window)
    assert _close(ours, ref_dd), (ours, ref_dd)
    assert _close(ours, ref_tl), (ours, ref_tl)


@settings(max_examples=25, deadline=None)
@given(
    count=st.integers(1, 9),
    length=st.integers(1, 50),
    window=st.integers(0, 12),
    seed=st.integers(0, 2**32 - 1),
)
def test_dtw_matrix_equal_lengths_matches_references(
    count: int, length: int, window: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    X = np.cumsum(rng.standard_normal((count, length)), axis=1)
    ours = dtw_matrix(X, window=window)
    ref_tl = cdist_dtw(X, global_constraint="sakoe_chiba", sakoe_chiba_radius=window)
    np.testing.assert_allclose(ours, ref_tl, rtol=1e-9, atol=1e-9)
    ref_dd = dd_dtw.distance_matrix_fast(X, window=window + 1, use_pruning=False)
    iu = np.triu_indices(count, 1)
    np.testing.assert_allclose(ours[iu], ref_dd[iu], rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(ours, ours.T)
    np.testing.assert_array_equal(np.diag(ours), 0.0)


def test_dtw_matrix_spans_many_lane_blocks() -> None:
    # 40 series -> 780 pairs: many blocks of lanes, the last one partial.
    rng = np.random.default_rng(7)
    X = np.cumsum(rng.standard_normal((40, 33)), axis=1)
    ours = dtw_matrix(X, window=4)
    ref = dd_dtw.distance_matrix_fast(X, window=5, use_pruning=False)
    iu = np.triu_indices(40, 1)
    np.testing.assert_allclose(ours[iu], ref[iu], rtol=1e-9, atol=1e-9)


def test_dtw_matrix_ragged_lengths() -> None:
    rng = np.random.default_rng(3)
    seqs = [np.cumsum(rng.standard_normal(n)) for n in (5, 17, 30, 1, 12)]
    ours = dtw_matrix(seqs, window=3)
    for i in range(len(seqs)):
        for j in range(len(seqs)):
            expected = 0.0 if i == j else dd_dtw.distance(seqs[i], seqs[j], window=4)
            assert _close(ours[i, j], expected)


def test_dtw_scores_matches_pairwise_dtw() -> None:
    rng = np.random.default_rng(11)
    q = rng.standard_normal(24)
    C = rng.standard_normal((70, 24))
    scores = dtw_scores(q, C, window=5)
    expected = [dtw(q, row, window=5) for row in C]
    np.testing.assert_allclose(scores, expected, rtol=1e-12)


def test_dtw_window_zero_is_euclidean_and_large_window_is_unconstrained() -> None:
    rng = np.random.default_rng(5)
    a = rng.standard_normal(20)
    b = rng.standard_normal(20)
    assert _close(dtw(a, b, window=0), float(np.linalg.norm(a - b)))
    assert _close(dtw(a, b, window=100), dd_dtw.distance(a, b))


def test_float32_and_int_inputs_are_computed_in_float64() -> None:
    a = np.array([0.1, 0.7, 0.3, 0.9], dtype=np.float32)
    b = np.array([1, 0, 2, 1])
    expected = dd_dtw.distance(a.astype(np.float64), b.astype(np.float64), window=3)
    assert _close(dtw(a, b, window=2), expected)


@pytest.mark.parametrize(
    ("a", "b", "window", "match"),
    [
        ([1.0, np.nan], [1.0], 1, "a: contains NaN"),
        ([1.0], [np.inf], 1, "b: contains NaN or inf"),
        ([], [1.0], 1, "a: needs at least 1"),
        ([[1.0, 2.0]], [1.0], 1, "a: expected a 1-D"),
        ([1.0], [1.0], -1, "window: must be >= 0"),
        (["x"], [1.0], 1, "a: expected real numbers"),
    ],
)
def test_dtw_rejects_bad_input(a: object, b: object, window: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dtw(a, b, window=window)


def test_window_must_be_an_int() -> None:
    with pytest.raises(TypeError, match="window"):
        dtw([1.0], [2.0], window=1.5)  # type: ignore[arg-type]


def test_matrix_and_scores_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="X: expected a 2-D array or a sequence"):
        dtw_matrix(np.zeros(5))
    with pytest.raises(ValueError, match=r"X\[1\]: contains NaN"):
        dtw_matrix([np.zeros(3), np.array([1.0, np.nan])])
    with pytest.raises(ValueError, match="X: needs at least 1"):
        dtw_matrix([])
    with pytest.raises(ValueError, match="candidates: expected a 2-D"):
        dtw_scores(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="window: must be >= 0"):
        dtw_matrix(np.zeros((2, 3)), window=-2)
