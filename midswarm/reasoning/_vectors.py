"""Vectors in memory for exact top-k: a dense float32 matrix with id <-> row maps.

Rows ``0 .. n-1`` are exactly the live vectors.  Appends go into spare
capacity that doubles when it runs out (amortised O(1)); a delete moves the
last row into the hole, so the matrix never holds tombstones and a search can
always return ``min(k, matching)`` results.  For the cosine metric rows are
stored unit-normalised and a search is one matrix-vector product (BLAS sgemv)
plus ``argpartition``; for L2 the product is turned into squared distances with
the cached row norms, and the k winners' distances are recomputed directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["VectorMatrix", "as_vector", "as_vectors"]

_MIN_CAPACITY = 1024


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
        self._sqnorm = np.zeros(capacity, np.float32)
        self._ids = np.zeros(capacity, np.int64)
        self._scores = np.empty(capacity, np.float32)
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
        return vectors / norms[:, None]

    def ensure_capacity(self, needed: int) -> int:
        """Grow so ``needed`` rows fit; returns the (possibly new) capacity."""
        cap = self.capacity
        if needed <= cap:
            return cap
        while cap < needed:
            cap *= 2
        for name in ("_data", "_sqnorm", "_ids"):
            old = getattr(self, name)
            new = np.zeros((cap,) + old.shape[1:], old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)
        self._scores = np.empty(cap, np.float32)
        return cap

    def append(self, ids: np.ndarray, prepared: np.ndarray) -> None:
        m = len(ids)
        self.ensure_capacity(self.n + m)
        lo, hi = self.n, self.n + m
        self._data[lo:hi] = prepared
        self._sqnorm[lo:hi] = np.einsum("ij,ij->i", prepared, prepared)
        self._ids[lo:hi] = ids
        for offset, ident in enumerate(ids.tolist()):
            self.row_of[ident] = lo + offset
        self.n = hi

    def replace(self, row: int, prepared: np.ndarray) -> None:
        self._data[row] = prepared
        self._sqnorm[row] = float(prepared @ prepared)

    def remove(self, ident: int) -> tuple[int, int]:
        """Drop ``ident``; returns ``(src, dst)``: the last row moved into the hole."""
        dst = self.row_of.pop(ident)
        src = self.n - 1
        if src != dst:
            self._data[dst] = self._data[src]
            self._sqnorm[dst] = self._sqnorm[src]
            moved = int(self._ids[src])
            self._ids[dst] = moved
            self.row_of[moved] = dst
        self._data[src] = 0
        self.n = src
        return src, dst

    def rows(self) -> np.ndarray:
        """A view of the live (prepared) rows."""
        return self._data[: self.n]

    def ids(self) -> np.ndarray:
        return self._ids[: self.n]

    def stored(self, row: int) -> np.ndarray:
        return self._data[row].copy()

    def prepare_query(self, query: np.ndarray) -> np.ndarray:
        if self.metric == "l2":
            return query
        norm = float(np.linalg.norm(query))
        if norm == 0:
            raise ValueError("query vector is all zeros: it has no direction under cosine")
        return (query / norm).astype(np.float32)

    def _scores_all(self, q: np.ndarray) -> np.ndarray:
        n = self.n
        out = self._scores[:n]
        np.dot(self._data[:n], q, out=out)
        if self.metric == "l2":
            out *= 2
            out -= self._sqnorm[:n]
        return out

    def _scores_rows(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        scores = self._data[rows] @ q
        if self.metric == "l2":
            scores = 2 * scores - self._sqnorm[rows]
        return scores

    def top_k(self, q: np.ndarray, k: int,
              mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the ``k`` best matches of prepared query ``q`` (best first) and scores.

        Scores are cosine similarities or Euclidean distances.  Only rows where
        ``mask`` is true compete; fewer than ``k`` come back only when fewer match.
        """
        n = self.n
        if n == 0 or k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        if mask is None:
            rows = None
            keys = self._scores_all(q)
        else:
            rows = np.flatnonzero(mask)
            if len(rows) == 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float64)
            if 4 * len(rows) < n:
                # A selective filter: gather only the matching rows.
                keys = self._scores_rows(q, rows)
            else:
                keys = self._scores_all(q)[rows]
        m = min(k, len(keys))
        if m < len(keys):
            best = np.argpartition(keys, len(keys) - m)[len(keys) - m:]
        else:
            best = np.arange(len(keys))
        chosen = best if rows is None else rows[best]
        return self._order(q, chosen, keys[best])

    def rank(self, q: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``rows`` ordered best first for prepared query ``q``, with their scores."""
        return self._order(q, rows, self._scores_rows(q, rows))

    def _order(self, q: np.ndarray, rows: np.ndarray,
               keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Best first; equal scores in id order so results are reproducible.
        order = np.lexsort((self._ids[rows], -keys))
        rows = rows[order]
        if self.metric == "cosine":
            return rows, keys[order].astype(np.float64)
        diff = self._data[rows].astype(np.float64) - q.astype(np.float64)
        dist = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        # Recomputed distances may split near-ties that float32 keys could not.
        order = np.lexsort((self._ids[rows], dist))
        return rows[order], dist[order]
