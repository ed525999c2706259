"""Ranking memory items for a query: weighted relevance, then MMR for diversity.

relevance_i = w_sim * max(cos(q, v_i), 0) + w_rec * exp(-age_days_i / recency_days)
              + w_rel * confidence_i

Maximal marginal relevance then picks items one at a time, each maximising

    lambda * relevance_i - (1 - lambda) * max_{j already picked} max(cos(v_i, v_j), 0)

Both terms live in [0, 1] when the weights sum to one, so ``lambda`` trades
them off as documented: 1 is pure relevance order, 0 picks the item least
like those already picked (after the first, which is always the most
relevant).  Negative cosines are clipped to 0 in both places: an item pointing
away from the query is irrelevant, not "negatively" relevant, and one pointing
away from a picked item is simply different.
"""

from __future__ import annotations

import math

import numpy as np

from ._types import RetrievalWeights

__all__ = ["check_weights", "mmr_select", "relevance"]

_DAY = 86400.0


def check_weights(weights: RetrievalWeights, mmr_lambda: float) -> None:
    """Raise :class:`ValueError` for weights or lambda that make no ranking."""
    if not isinstance(weights, RetrievalWeights):
        raise TypeError(f"weights must be a RetrievalWeights, got {type(weights).__name__}")
    parts = (weights.similarity, weights.recency, weights.reliability)
    if not all(isinstance(w, int | float) and math.isfinite(w) and w >= 0 for w in parts):
        raise ValueError(f"retrieval weights must be finite and >= 0, got {weights}")
    if sum(parts) <= 0:
        raise ValueError("at least one retrieval weight must be positive")
    if not (isinstance(weights.recency_days, int | float) and weights.recency_days > 0
            and math.isfinite(weights.recency_days)):
        raise ValueError(f"recency_days must be a positive number, got {weights.recency_days}")
    if isinstance(mmr_lambda, bool) or not isinstance(mmr_lambda, int | float) or not (
            0.0 <= mmr_lambda <= 1.0):
        raise ValueError(f"mmr_lambda must be in [0, 1], got {mmr_lambda!r}")


def relevance(cosines: np.ndarray, ages_seconds: np.ndarray, confidences: np.ndarray,
              weights: RetrievalWeights) -> np.ndarray:
    """Per-item relevance; ages below zero (evidence from the future) count as zero."""
    age_days = np.maximum(ages_seconds, 0.0) / _DAY
    return (weights.similarity * np.maximum(cosines, 0.0)
            + weights.recency * np.exp(-age_days / weights.recency_days)
            + weights.reliability * confidences)


def mmr_select(units: np.ndarray, scores: np.ndarray, k: int, mmr_lambda: float) -> list[int]:
    """Indices of up to ``k`` items chosen by MMR from unit vectors ``units``.

    Equal MMR values go to the lower index, so the caller's order breaks ties.
    """
    n = len(scores)
    chosen: list[int] = []
    if n == 0:
        return chosen
    penalty = np.zeros(n, np.float64)
    available = np.ones(n, bool)
    for _ in range(min(k, n)):
        value = mmr_lambda * scores - (1.0 - mmr_lambda) * penalty
        value[~available] = -np.inf
        pick = int(np.argmax(value))
        chosen.append(pick)
        available[pick] = False
        similarity = np.maximum(np.einsum("ij,j->i", units, units[pick]), 0.0)
        np.maximum(penalty, similarity, out=penalty)
    return chosen
