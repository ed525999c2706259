"""Influence ranking: PageRank on a strategy-similarity graph.

Theory of operation
-------------------
Row ``j`` of the similarity matrix (diagonal ignored) is the out-weight of
strategy ``j``; normalised it is the probability of moving from ``j`` to each
other strategy.  A strategy with no out-weight ("dangling") moves uniformly.
PageRank ``r`` solves ``r = b + M r`` with ``b = (1 - d) / n`` and
``M = d * T^T``; every column of ``M`` sums to ``d < 1``, so ``I - M`` is
column diagonally dominant and the Neumann series ``r = sum_k M^k b`` converges.

We sum it by *forward push* (a Gauss-Southwell / Gauss-Seidel sweep): keep an
estimate ``x`` and a residual ``res`` with ``r = x + (I - M)^{-1} res``;
pushing node ``u`` moves ``res[u]`` into ``x[u]`` and spreads ``M[:, u] * res[u]``
onto the residuals.  Each push shrinks the residual mass by at least
``(1 - d) * res[u]``, and the remaining error is at most
``sum(res) / (1 - d)`` in the L1 norm, which is the stopping rule.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from ._validate import as_matrix, check_fraction, check_nonnegative_float

__all__ = ["influence_rank", "pagerank_system"]


def pagerank_system(similarity: np.ndarray, damping: float) -> tuple[np.ndarray, np.ndarray]:
    """``(M, b)`` of the PageRank system ``r = b + M r`` (see module docstring).

    Exposed so the solve can be cross-checked against a direct solver.
    """
    n = similarity.shape[0]
    weights = similarity.copy()
    np.fill_diagonal(weights, 0.0)
    out_weight = weights.sum(axis=1)
    trans = np.empty_like(weights)
    dangling = out_weight <= 0.0
    trans[~dangling] = weights[~dangling] / out_weight[~dangling, None]
    trans[dangling] = 1.0 / n
    return damping * trans.T, np.full(n, (1.0 - damping) / n)


@numba.njit(cache=True, nogil=True)
def _push_solve(m_t: np.ndarray, b: np.ndarray, stop: float, max_sweeps: int) -> np.ndarray:
    # m_t is M transposed: row u holds column u of M, contiguous for the push.
    n = b.shape[0]
    x = np.zeros(n)
    res = b.copy()
    total = 0.0
    for u in range(n):
        total += abs(res[u])
    for _ in range(max_sweeps):
        if total <= stop:
            break
        for u in range(n):
            amount = res[u]
            if amount == 0.0:
                continue
            x[u] += amount
            res[u] = 0.0
            for v in range(n):
                res[v] += amount * m_t[u, v]
        total = 0.0
        for u in range(n):
            total += abs(res[u])
    return x


def influence_rank(similarity: Any, damping: float = 0.85, tol: float = 1e-10) -> np.ndarray:
    """PageRank of strategies on their similarity graph; the result sums to 1.

    ``similarity[j, i] >= 0`` is the weight of the edge from strategy ``j`` to
    ``i`` (a symmetric LCSS matrix gives an undirected graph); the diagonal is
    ignored and a strategy with no edges spreads its rank uniformly.  Solved by
    forward push on the Neumann series of the diagonally dominant system to an
    L1 error of at most *tol*; :func:`pagerank_system` gives the system for a
    direct cross-check.

    Raises:
        ValueError: if *similarity* is not a finite square 2-D array with
            non-negative entries, *damping* is not strictly between 0 and 1,
            or *tol* is not a finite number > 0.
    """
    sim = as_matrix("similarity", similarity)
    if sim.shape[0] != sim.shape[1]:
        raise ValueError(f"similarity: must be square, got shape {sim.shape}")
    if (sim < 0).any():
        raise ValueError("similarity: entries must be >= 0")
    d = check_fraction("damping", damping)
    t = check_nonnegative_float("tol", tol)
    if t == 0.0:
        raise ValueError("tol: must be > 0")
    m, b = pagerank_system(sim, d)
    # Residual mass shrinks by a factor of at least d per sweep.
    sweeps = int(np.ceil(np.log(t * (1.0 - d)) / np.log(d))) + 10
    x = _push_solve(np.ascontiguousarray(m.T), b, t * (1.0 - d), max(sweeps, 1))
    return x / x.sum()
