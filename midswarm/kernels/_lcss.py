"""LCSS similarity (Vlachos et al.) by bit-parallel LCS.

Theory of operation
-------------------
The LCSS recurrence is the LCS recurrence with "equal" replaced by the match
relation ``|a[i] - b[j]| <= epsilon and |i - j| <= window``.  The bit-parallel
LCS algorithm (Allison-Dix / Crochemore et al. / Hyyrö) never looks at *why* two
positions match: it only needs, for each row ``i``, the bit vector ``M_i`` of
matching columns, and then updates the whole row with a few word operations::

    U = V & M_i;   V = (V + U) | (V & ~M_i)        (multi-word add with carry)

and the LCS length is the number of zero bits of ``V`` at the end.  That is 64
cells per operation instead of one.

Building ``M_i`` cheaply: sort ``b``.  Because ``fl(a - b)`` is monotone in
``b``, the columns matching ``a[i]`` are a contiguous run ``lo..hi`` of the sorted
order, found by binary search with the exact predicate the definition uses (so
rounding at the boundary is the same as in a plain loop).  With ``P[r]`` the
bit set of the ``r`` smallest values of ``b``, ``M_i = P[hi] ^ P[lo]``.  ``P`` is
stored at every ``step``-th rank only (``step`` is chosen to bound memory), and
the few ranks in between are toggled bit by bit.  The band, when given, is
ANDed in per row.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import prange

from ._validate import as_series, as_series_list, check_nonnegative_float, check_optional_window

__all__ = ["lcss", "lcss_matrix"]

_ONE = np.uint64(1)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
# Memory allowed for one series' prefix bit sets before thinning them out.
_PREFIX_BUDGET_BYTES = 4 << 20


def _choose_step(m: int) -> int:
    words = (m + 63) // 64
    step = 1
    while (m // step + 1) * words * 8 > _PREFIX_BUDGET_BYTES:
        step *= 2
    return step


@numba.njit(cache=True, nogil=True)
def _build_columns(
    b: np.ndarray, step: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted values, sorting permutation and prefix bit sets at every *step* ranks."""
    m = b.shape[0]
    words = (m + 63) // 64
    perm = np.argsort(b, kind="mergesort")
    sorted_b = b[perm]
    n_cp = m // step + 1
    prefix = np.zeros((n_cp, words), dtype=np.uint64)
    cur = np.zeros(words, dtype=np.uint64)
    for r in range(m + 1):
        if r % step == 0:
            prefix[r // step, :] = cur
        if r < m:
            col = perm[r]
            cur[col >> 6] |= _ONE << np.uint64(col & 63)
    return sorted_b, perm, prefix


@numba.njit(cache=True, nogil=True)
def _first_within_below(sorted_b: np.ndarray, v: float, eps: float) -> int:
    # First rank r with v - sorted_b[r] <= eps (false, then true as b grows).
    lo = 0
    hi = sorted_b.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if v - sorted_b[mid] <= eps:
            hi = mid
        else:
            lo = mid + 1
    return lo


@numba.njit(cache=True, nogil=True)
def _first_beyond_above(sorted_b: np.ndarray, v: float, eps: float) -> int:
    # First rank r with sorted_b[r] - v > eps (false, then true as b grows).
    lo = 0
    hi = sorted_b.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if sorted_b[mid] - v > eps:
            hi = mid
        else:
            lo = mid + 1
    return lo


@numba.njit(cache=True, nogil=True)
def _toggle_ranks(mask: np.ndarray, perm: np.ndarray, r0: int, r1: int) -> None:
    for r in range(r0, r1):
        col = perm[r]
        mask[col >> 6] ^= _ONE << np.uint64(col & 63)


@numba.njit(cache=True, nogil=True)
def _word_band(word: int, lo: int, hi: int) -> np.uint64:
    """Bits of *word* whose column lies in ``lo..hi`` (inclusive)."""
    base = word * 64
    first = max(lo - base, 0)
    last = min(hi - base, 63)
    if first > last:
        return np.uint64(0)
    width = last - first + 1
    if width == 64:
        return _ALL
    return ((_ONE << np.uint64(width)) - _ONE) << np.uint64(first)


@numba.njit(cache=True, nogil=True)
def lcss_length(
    a: np.ndarray, sorted_b: np.ndarray, perm: np.ndarray, prefix: np.ndarray, step: int,
    eps: float, window: int,
) -> int:
    """Length of the longest common subsequence of *a* and the prepared column
    series under the epsilon/window match relation (``window < 0``: no band)."""
    m = sorted_b.shape[0]
    words = prefix.shape[1]
    v = np.empty(words, dtype=np.uint64)
    v[:] = _ALL
    mask = np.empty(words, dtype=np.uint64)
    for i in range(a.shape[0]):
        ai = a[i]
        lo = _first_within_below(sorted_b, ai, eps)
        hi = _first_beyond_above(sorted_b, ai, eps)
        if lo >= hi:
            continue  # no match in this row: V is unchanged
        lc = lo // step
        hc = hi // step
        for wd in range(words):
            mask[wd] = prefix[hc, wd] ^ prefix[lc, wd]
        _toggle_ranks(mask, perm, lc * step, lo)
        _toggle_ranks(mask, perm, hc * step, hi)
        if window >= 0:
            band_lo = i - window
            band_hi = i + window
            if band_hi < 0 or band_lo > m - 1:
                continue
            for wd in range(words):
                mask[wd] &= _word_band(wd, band_lo, band_hi)
        carry = np.uint64(0)
        for wd in range(words):
            vw = v[wd]
            u = vw & mask[wd]
            t = vw + u
            c1 = t < vw
            s = t + carry
            c2 = s < t
            carry = np.uint64(1) if (c1 or c2) else np.uint64(0)
            v[wd] = s | (vw & ~mask[wd])
    zeros = 0
    for wd in range(words):
        x = ~v[wd]
        if wd == words - 1 and m % 64 != 0:
            x &= (_ONE << np.uint64(m % 64)) - _ONE
        while x:
            x &= x - _ONE
            zeros += 1
    return zeros


@numba.njit(cache=True, nogil=True)
def _lcss_pair(a: np.ndarray, b: np.ndarray, eps: float, window: int, step: int) -> int:
    sorted_b, perm, prefix = _build_columns(b, step)
    return lcss_length(a, sorted_b, perm, prefix, step, eps, window)


@numba.njit(cache=True, nogil=True)
def _lcss_row(
    i: int, flat: np.ndarray, offsets: np.ndarray, sorted_all: np.ndarray,
    perm_all: np.ndarray, prefix_all: np.ndarray, pre_off: np.ndarray, steps: np.ndarray,
    eps: float, window: int, out: np.ndarray,
) -> None:
    # Similarities of series i with every later series j (columns prepared).
    a = flat[offsets[i]:offsets[i + 1]]
    for j in range(i + 1, offsets.shape[0] - 1):
        mb = offsets[j + 1] - offsets[j]
        pf = prefix_all[pre_off[j]:pre_off[j + 1]].reshape((mb // steps[j] + 1, (mb + 63) // 64))
        length = lcss_length(
            a, sorted_all[offsets[j]:offsets[j + 1]], perm_all[offsets[j]:offsets[j + 1]],
            pf, steps[j], eps, window,
        )
        sim = length / min(a.shape[0], mb)
        out[i, j] = sim
        out[j, i] = sim


@numba.njit(cache=True, nogil=True, parallel=True)
def _lcss_all_pairs(
    flat: np.ndarray, offsets: np.ndarray, eps: float, window: int, steps: np.ndarray
) -> np.ndarray:
    n = offsets.shape[0] - 1
    sorted_all = np.empty(flat.shape[0])
    perm_all = np.empty(flat.shape[0], dtype=np.int64)
    # Prefix bit sets of each series, laid end to end.
    pre_off = np.zeros(n + 1, dtype=np.int64)
    for s in range(n):
        m = offsets[s + 1] - offsets[s]
        pre_off[s + 1] = pre_off[s] + (m // steps[s] + 1) * ((m + 63) // 64)
    prefix_all = np.empty(pre_off[n], dtype=np.uint64)
    for s in prange(n):
        b = flat[offsets[s]:offsets[s + 1]]
        sb, pm, pf = _build_columns(b, steps[s])
        sorted_all[offsets[s]:offsets[s + 1]] = sb
        perm_all[offsets[s]:offsets[s + 1]] = pm
        prefix_all[pre_off[s]:pre_off[s + 1]] = pf.ravel()
    out = np.ones((n, n))
    # Fold row r with row n - 1 - r so that every iteration has n - 1 pairs.
    for r in prange((n + 1) // 2):
        _lcss_row(r, flat, offsets, sorted_all, perm_all, prefix_all, pre_off, steps,
                  eps, window, out)
        if n - 1 - r != r:
            _lcss_row(n - 1 - r, flat, offsets, sorted_all, perm_all, prefix_all, pre_off,
                      steps, eps, window, out)
    return out


def lcss(a: Any, b: Any, epsilon: float, window: int | None = None) -> float:
    """LCSS similarity of two series: ``L / min(len(a), len(b))``.

    ``L`` is the length of the longest common subsequence when ``a[i]`` and
    ``b[j]`` match iff ``|a[i] - b[j]| <= epsilon`` and (when *window* is given)
    ``|i - j| <= window``.  The result lies in ``[0, 1]``.

    Raises:
        ValueError: for an empty, non-1-D or non-finite series, a negative or
            non-finite *epsilon*, or ``window < 0``.
        TypeError: for a non-numeric *epsilon* or non-int *window*.
    """
    x = as_series("a", a)
    y = as_series("b", b)
    eps = check_nonnegative_float("epsilon", epsilon)
    w = check_optional_window("window", window)
    if y.shape[0] > x.shape[0]:
        x, y = y, x  # the shorter one is the bit dimension: fewer prefix sets
    length = _lcss_pair(x, y, eps, -1 if w is None else w, _choose_step(y.shape[0]))
    return length / min(x.shape[0], y.shape[0])


def lcss_matrix(seqs: Any, epsilon: float, window: int | None = None) -> np.ndarray:
    """Symmetric matrix of pairwise :func:`lcss` similarities (ones on the
    diagonal), computed in parallel.  *seqs* is a 2-D array (one series per row)
    or a sequence of 1-D series of any lengths.

    Raises:
        ValueError: as :func:`lcss`, naming ``seqs[i]`` for a bad series.
        TypeError: as :func:`lcss`.
    """
    series = as_series_list("seqs", seqs)
    eps = check_nonnegative_float("epsilon", epsilon)
    w = check_optional_window("window", window)
    offsets = np.zeros(len(series) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([s.shape[0] for s in series])
    steps = np.array([_choose_step(s.shape[0]) for s in series], dtype=np.int64)
    return _lcss_all_pairs(
        np.concatenate(series), offsets, eps, -1 if w is None else w, steps
    )
