"""Vectors in memory for exact top-k: a dense float32 matrix with id <-> row maps.

Rows ``0 .. n-1`` are exactly the live vectors.  Appends go into spare
capacity that doubles when it runs out (amortised O(1)); a delete moves the
last row into the hole, so the matrix never holds tombstones and a search can
always return ``min(k, matching)`` results.  For the cosine metric rows are
stored unit-normalised and the key is the dot product; for L2 it is minus the
squared distance (the int8 scan bounds it through ``2 x.q - |x|^2`` with
cached squared norms).  Exact keys are float64 sums.

Beside the float32 rows sits an int8 copy with per-row scales: a search first
scans it for score bounds and then scores exactly only the rows that can still
make the top k (see :mod:`._kernels`).  Small stores and selective filters
are scored exactly straight away.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["VectorMatrix", "as_vector", "as_vectors"]

_MIN_CAPACITY = 1024
# Below this many candidate rows, scoring them all exactly is as cheap as bounding.
_EXACT_BELOW = 4096
_INT8_MAX = 127.0
_BLOCK = 65536


def _kernels() -> ModuleType:
    # numba takes a while to import: only searching needs it, not opening or writing.
    return importlib.import_module("midswarm.reasoning._kernels")


def quantize(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row int8 codes and float32 scales with ``rows ~= scales[:, None] * codes``."""
    peak = np.abs(rows).max(axis=1) if rows.size else np.zeros(len(rows), np.float32)
    scales = (peak / _INT8_MAX).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1.0))
    codes = np.clip(np.rint(rows / safe[:, None]), -_INT8_MAX, _INT8_MAX).astype(np.int8)
    return codes, scales


def as_vectors(vectors: Any, dim: int, name: str = "vectors") -> np.ndarray:
    """``vectors`` as a C-contiguous float32 array of shape (n, dim), all finite."""
    try:
        arr = np.asarray(vectors)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be an array of numbers: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{name} must have shape (n, {dim}), got {arr.shape}")
    with np.errstate(over="ignore"):  # overflow becomes inf, reported just below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{name}[{bad}] contains NaN or infinity (or overflows float32)")
    return out


def as_vector(vector: Any, dim: int, name: str = "vector") -> np.ndarray:
    """``vector`` as a float32 array of shape (dim,), all finite."""
    try:
        arr = np.asarray(vector)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be an array of numbers: {exc}") from None
    if arr.ndim != 1 or len(arr) != dim:
        raise ValueError(f"{name} must be 1-d of length {dim}, got shape {arr.shape}")
    return as_vectors(arr[None, :], dim, name)[0]


class VectorMatrix:
    """The live vectors of a store, searchable by exact top-k."""

    def __init__(self, dim: int, metric: str, capacity: int = _MIN_CAPACITY) -> None:
        if metric not in ("cosine", "l2"):
            raise ValueError(f"metric must be 'cosine' or 'l2', got {metric!r}")
        self.dim = dim
        self.metric = metric
        self.n = 0
        capacity = max(capacity, _MIN_CAPACITY)
        self._data = np.zeros((capacity, dim), np.float32)
        self._codes = np.zeros((capacity, dim), np.int8)
        self._scales = np.zeros(capacity, np.float32)
        self._sqnorm = np.zeros(capacity, np.float32)
        self._ids = np.zeros(capacity, np.int64)
        self._scratch_f32 = np.empty(capacity, np.float32)
        self._scratch_idx = np.empty(capacity, np.int64)
        self._no_mask = np.zeros(1, bool)
        self.row_of: dict[int, int] = {}

    @property
    def capacity(self) -> int:
        return len(self._data)

    def prepare(self, vectors: np.ndarray, name: str = "vectors") -> np.ndarray:
        """Checked (n, dim) float32 -> what is stored (unit rows for cosine)."""
        if self.metric == "l2":
            return vectors
        norms = np.linalg.norm(vectors, axis=1)
        zero = norms == 0
        if zero.any():
            raise ValueError(
                f"{name}[{int(np.flatnonzero(zero)[0])}] is all zeros: it has no direction "
                f"under the cosine metric")
        return np.divide(vectors, norms[:, None], dtype=np.float32)

    def ensure_capacity(self, needed: int) -> int:
        """Grow so ``needed`` rows fit; returns the (possibly new) capacity."""
        cap = self.capacity
        if needed <= cap:
            return cap
        while cap < needed:
            cap *= 2
        for name in ("_data", "_codes", "_scales", "_sqnorm", "_ids"):
            old = getattr(self, name)
            new = np.zeros((cap,) + old.shape[1:], old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)
        self._scratch_f32 = np.empty(cap, np.float32)
        self._scratch_idx = np.empty(cap, np.int64)
        return cap

    def append(self, ids: np.ndarray, prepared: np.ndarray) -> None:
        m = len(ids)
        self.ensure_capacity(self.n + m)
        lo, hi = self.n, self.n + m
        self._data[lo:hi] = prepared
        # In blocks, so loading a big file needs no full-size temporaries.
        for start in range(0, m, _BLOCK):
            block = prepared[start:start + _BLOCK]
            at = slice(lo + start, lo + start + len(block))
            self._codes[at], self._scales[at] = quantize(block)
            self._sqnorm[at] = np.einsum("ij,ij->i", block, block, dtype=np.float64)
        self._ids[lo:hi] = ids
        self.row_of.update(zip(ids.tolist(), range(lo, hi), strict=True))
        self.n = hi

    def replace(self, row: int, prepared: np.ndarray) -> None:
        self._data[row] = prepared
        codes, scales = quantize(prepared[None, :])
        self._codes[row], self._scales[row] = codes[0], scales[0]
        self._sqnorm[row] = np.einsum("i,i->", prepared, prepared, dtype=np.float64)

    def remove(self, ident: int) -> tuple[int, int]:
        """Drop ``ident``; returns ``(src, dst)``: the last row moved into the hole."""
        dst = self.row_of.pop(ident)
        src = self.n - 1
        if src != dst:
            for name in ("_data", "_codes", "_scales", "_sqnorm", "_ids"):
                array = getattr(self, name)
                array[dst] = array[src]
            self.row_of[int(self._ids[dst])] = dst
        self._data[src] = 0
        self._codes[src] = 0
        self.n = src
        return src, dst

    def ids(self) -> np.ndarray:
        return self._ids[: self.n]

    def prepare_query(self, query: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(query, dtype=np.float32)
        if self.metric == "l2":
            return q
        norm = float(np.linalg.norm(q))
        if norm == 0:
            raise ValueError("query vector is all zeros: it has no direction under cosine")
        return (q / norm).astype(np.float32)

    def _keys_rows(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact float64 keys (larger is nearer) of ``rows``."""
        keys = np.empty(len(rows), np.float64)
        _kernels().exact_keys(self._data, rows, q, self.metric == "l2", keys)
        return keys

    def top_k(self, q: np.ndarray, k: int,
              mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the ``k`` best matches of prepared query ``q`` (best first) and scores.

        Scores are cosine similarities or Euclidean distances.  Only rows where
        ``mask`` is true compete; fewer than ``k`` come back only when fewer match.
        """
        n = self.n
        empty = (np.zeros(0, np.int64), np.zeros(0, np.float64))
        if n == 0 or k <= 0:
            return empty
        eligible: np.ndarray | None = None
        if mask is not None:
            eligible = np.flatnonzero(mask)
            if len(eligible) == 0:
                return empty
        count = n if eligible is None else len(eligible)
        m = min(k, count)
        if count < _EXACT_BELOW or (eligible is not None and 4 * count < n):
            # Few rows, or a selective filter: score every eligible row exactly.
            candidates = np.arange(n) if eligible is None else eligible
            keys = self._keys_rows(q, candidates)
        else:
            upper = self._scratch_f32
            kernels = _kernels()
            floor = kernels.scan_bounds(
                self._codes, self._scales, self._sqnorm, n, q, self.metric == "l2", m,
                self._no_mask if mask is None else mask, mask is not None, upper)
            if floor == -np.inf:
                candidates = np.arange(n) if eligible is None else eligible
            else:
                found = kernels.collect_at_least(upper, n, floor, self._scratch_idx)
                candidates = self._scratch_idx[:found].copy()
            keys = self._keys_rows(q, candidates)
        if m < len(keys):
            best = self._break_ties(candidates, keys,
                                    np.argpartition(keys, len(keys) - m)[len(keys) - m:])
        else:
            best = np.arange(len(keys))
        return self._order(candidates[best], keys[best])

    def _break_ties(self, candidates: np.ndarray, keys: np.ndarray,
                    best: np.ndarray) -> np.ndarray:
        """Among rows tied with the k-th best key, keep the lowest ids (argpartition
        picks arbitrarily), so the answer never depends on which path found it."""
        kth = keys[best].min()
        tied = np.flatnonzero(keys == kth)
        above = best[keys[best] > kth]
        slots = len(best) - len(above)
        if len(tied) <= slots:
            return best
        lowest = tied[np.argsort(self._ids[candidates[tied]], kind="stable")[:slots]]
        return np.concatenate([above, lowest])

    def rank(self, q: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``rows`` ordered best first for prepared query ``q``, with their scores."""
        return self._order(rows, self._keys_rows(q, rows))

    def _order(self, rows: np.ndarray,
               keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Best first; equal scores in id order so results are reproducible.
        order = np.lexsort((self._ids[rows], -keys))
        rows = rows[order]
        if self.metric == "cosine":
            return rows, keys[order]
        return rows, np.sqrt(np.maximum(-keys[order], 0.0))
