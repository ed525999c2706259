"""Bit-parallel LCSS against a plain-Python dynamic programme."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from midswarm.kernels import _lcss as lcss_module
from midswarm.kernels import lcss, lcss_matrix


def reference_lcss(a: list[float], b: list[float], eps: float, window: int | None) -> float:
    """Vlachos' recurrence, written out cell by cell."""
    n, m = len(a), len(b)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            near = window is None or abs(i - j) <= window
            if near and abs(a[i - 1] - b[j - 1]) <= eps:
                table[i][j] = table[i - 1][j - 1] + 1
            else:
                table[i][j] = max(table[i - 1][j], table[i][j - 1])
    return table[n][m] / min(n, m)


# Values on a coarse grid make exact boundary matches (|a - b| == eps) common.
_grid = st.integers(-20, 20).map(lambda v: v / 4)


def _series(max_size: int) -> st.SearchStrategy[np.ndarray]:
    return st.integers(1, max_size).flatmap(lambda n: arrays(np.float64, n, elements=_grid))


@settings(max_examples=150, deadline=None)
@given(
    a=_series(140),
    b=_series(140),
    eps=st.sampled_from([0.0, 0.25, 0.5, 1.3, 10.0]),
    window=st.one_of(st.none(), st.integers(0, 30)),
)
def test_lcss_matches_reference(
    a: np.ndarray, b: np.ndarray, eps: float, window: int | None
) -> None:
    assert lcss(a, b, eps, window) == reference_lcss(list(a), list(b), eps, window)


@settings(max_examples=40, deadline=None)
@given(
    a=arrays(np.float64, st.integers(1, 60),
             elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)),
    b=arrays(np.float64, st.integers(1, 60),
             elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)),
    eps=st.floats(0, 1e6, allow_nan=False, allow_infinity=False),
)
def test_lcss_matches_reference_on_arbitrary_floats(
    a: np.ndarray, b: np.ndarray, eps: float
) -> None:
    assert lcss(a, b, eps) == reference_lcss(list(a), list(b), eps, None)


def test_lcss_across_several_words_and_thinned_prefix_sets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(8)
    a = np.round(np.cumsum(rng.standard_normal(300)), 1)
    b = np.round(np.cumsum(rng.standard_normal(257)), 1)
    expected = reference_lcss(list(a), list(b), 0.4, 40)
    assert lcss(a, b, 0.4, 40) == expected
    # A tiny memory budget stores every 2nd/4th/... prefix set only.
    monkeypatch.setattr(lcss_module, "_PREFIX_BUDGET_BYTES", 512)
    assert lcss_module._choose_step(b.size) > 1
    assert lcss(a, b, 0.4, 40) == expected
    assert lcss(a, b, 0.4) == reference_lcss(list(a), list(b), 0.4, None)


def test_lcss_matrix_matches_pairwise() -> None:
    rng = np.random.default_rng(2)
    seqs = [np.round(np.cumsum(rng.standard_normal(n)), 1) for n in (30, 70, 5, 130, 64)]
    mat = lcss_matrix(seqs, 0.3, window=12)
    for i in range(5):
        for j in range(5):
            expected = 1.0 if i == j else reference_lcss(list(seqs[i]), list(seqs[j]), 0.3, 12)
            assert mat[i, j] == expected
    eq = np.cumsum(rng.standard_normal((6, 90)), axis=1)
    mat = lcss_matrix(eq, 0.5)
    for i in range(6):
        for j in range(i + 1, 6):
            assert mat[i, j] == mat[j, i] == reference_lcss(list(eq[i]), list(eq[j]), 0.5, None)


def test_lcss_identity_and_disjoint_ranges() -> None:
    x = np.arange(50) / 64  # exact in float32 too
    assert lcss(x, x, 0.0) == 1.0
    assert lcss(x, x + 10.0, 1.0) == 0.0
    assert lcss(x.astype(np.float32), x, 0.0) == 1.0
    assert lcss(x, x[::-1], 0.0) == 1 / 50


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (([1.0, np.nan], [1.0], 0.1), ValueError, "a: contains NaN"),
        (([1.0], [], 0.1), ValueError, "b: needs at least 1"),
        (([1.0], [1.0], -0.1), ValueError, "epsilon: must be a finite number >= 0"),
        (([1.0], [1.0], float("inf")), ValueError, "epsilon"),
        (([1.0], [1.0], 0.1, -1), ValueError, "window: must be >= 0"),
        (([1.0], [1.0], "x"), TypeError, "epsilon"),
        (([[1.0]], [1.0], 0.1), ValueError, "a: expected a 1-D"),
    ],
)
def test_lcss_rejects_bad_input(args: tuple, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        lcss(*args)


def test_lcss_matrix_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"seqs\[1\]: contains NaN"):
        lcss_matrix([[1.0, 2.0], [np.inf]], 0.1)
    with pytest.raises(ValueError, match="seqs: expected a 2-D array or a sequence"):
        lcss_matrix(np.zeros(4), 0.1)
