"""The optional approximate index: hnswlib, imported only when asked for.

The exact matrix stays the source of truth; this graph only proposes
candidates, which are then re-scored exactly.  It lives in memory and is
rebuilt from the vectors when a store opens.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["HnswIndex", "HNSW_EXTRA"]

#: The optional-dependency extra that installs hnswlib.
HNSW_EXTRA = "ann"

_START_CAPACITY = 1024


def _import_hnswlib() -> Any:
    try:
        import hnswlib
    except ImportError:
        raise ImportError(
            "approximate=True needs the hnswlib package: pip install 'midswarm[ann]' "
            "(or pip install hnswlib)") from None
    return hnswlib


class HnswIndex:
    """An HNSW graph over prepared vectors, labelled with store ids."""

    def __init__(self, dim: int, metric: str, *, m: int, ef_construction: int,
                 ef: int) -> None:
        hnswlib = _import_hnswlib()
        for name, value in (("hnsw_m", m), ("hnsw_ef_construction", ef_construction),
                            ("hnsw_ef", ef)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"{name} must be an int >= 2, got {value!r}")
        # Cosine rows are already unit length, so inner product is cosine.
        self._index = hnswlib.Index(space="ip" if metric == "cosine" else "l2", dim=dim)
        self._index.init_index(max_elements=_START_CAPACITY, ef_construction=ef_construction,
                               M=m)
        self._ef = ef
        self._index.set_ef(ef)

    def add(self, ids: np.ndarray, prepared: np.ndarray) -> None:
        """Insert or update; re-adding a deleted id brings it back."""
        needed = self._index.element_count + len(ids)
        capacity = self._index.get_max_elements()
        if needed > capacity:
            while capacity < needed:
                capacity *= 2
            self._index.resize_index(capacity)
        self._index.add_items(prepared, ids.astype(np.uint64))

    def remove(self, ident: int) -> None:
        self._index.mark_deleted(ident)

    def query(self, q: np.ndarray, k: int) -> np.ndarray | None:
        """Ids of about the ``k`` nearest, or ``None`` if the graph found fewer."""
        self._index.set_ef(max(self._ef, k))
        try:
            labels, _ = self._index.knn_query(q[None, :], k=k)
        except RuntimeError:
            # hnswlib's way of saying it reached fewer than k live elements.
            return None
        return labels[0].astype(np.int64)
