"""Numeric kernels of the agents: DTW search, LCSS, features, MLP, ranking.

Compiled with numba (``cache=True``: the machine code is kept on disk next to
the sources, so only the first process on a machine pays for compilation, and
is purged when any source of this package changes, see ``_cache.py``; no
``fastmath``, so inf and NaN keep their IEEE meaning).  Every function checks
its arguments and raises :class:`ValueError` naming the bad one; float32 and
integer inputs are accepted and computed in float64.

- :func:`dtw`, :func:`dtw_matrix`, :func:`dtw_scores`: banded DTW distances.
- :func:`dtw_knn`, :func:`dtw_knn_stats`, :class:`PatternLibrary`: exact
  k-nearest-neighbour search (UCR-Suite-style lower-bound cascade).
- :func:`lcss`, :func:`lcss_matrix`: LCSS similarity (bit-parallel).
- :func:`features`: technical features of OHLCV bars.
- :func:`influence_rank`: PageRank on a similarity graph.
- :mod:`midswarm.kernels.mlp`: a small float64 MLP with gradients and Adam.

Parallel kernels use numba's threading layer; with the workqueue layer (used
only when neither TBB nor OpenMP is available) they must not be called from
two threads at once.
"""

from ._cache import purge_stale_cache

# Before any kernel is loaded: cached code must not outlive a changed callee.
purge_stale_cache()

from . import mlp  # noqa: E402
from ._dtw import dtw, dtw_matrix, dtw_scores  # noqa: E402
from ._features import FEATURE_COLUMNS, FeatureFrame, features  # noqa: E402
from ._graph import influence_rank, pagerank_system  # noqa: E402
from ._lcss import lcss, lcss_matrix  # noqa: E402
from ._search import (  # noqa: E402
    KnnResult,
    PatternLibrary,
    SearchStats,
    dtw_knn,
    dtw_knn_stats,
)

__all__ = [
    "FEATURE_COLUMNS",
    "FeatureFrame",
    "KnnResult",
    "PatternLibrary",
    "SearchStats",
    "dtw",
    "dtw_knn",
    "dtw_knn_stats",
    "dtw_matrix",
    "dtw_scores",
    "features",
    "influence_rank",
    "lcss",
    "lcss_matrix",
    "mlp",
    "pagerank_system",
]
