"""influence_rank against scipy's direct solve of the PageRank system."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from midswarm.kernels import influence_rank, lcss_matrix, pagerank_system


def _direct(similarity: np.ndarray, damping: float) -> np.ndarray:
    """PageRank built independently of the kernel: transition matrix, then solve."""
    n = similarity.shape[0]
    w = similarity.astype(float).copy()
    np.fill_diagonal(w, 0.0)
    trans = np.full((n, n), 1.0 / n)
    for j in range(n):
        total = w[j].sum()
        if total > 0:
            trans[j] = w[j] / total
    return scipy.linalg.solve(np.eye(n) - damping * trans.T, np.full(n, (1 - damping) / n))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("damping", [0.5, 0.85, 0.99])
def test_matches_direct_solve_and_sums_to_one(seed: int, damping: float) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    sim = rng.random((n, n))
    if seed % 2:
        sim = (sim + sim.T) / 2
    sim[sim < 0.3] = 0.0  # sparse-ish, possibly with dangling strategies
    if n > 3:
        sim[1, :] = 0.0
    rank = influence_rank(sim, damping=damping)
    np.testing.assert_allclose(rank, _direct(sim, damping), rtol=0, atol=1e-8)
    assert rank.sum() == pytest.approx(1.0, abs=1e-12)
    assert (rank > 0).all()
    m, b = pagerank_system(sim, damping)
    np.testing.assert_allclose(
        scipy.linalg.solve(np.eye(n) - m, b), _direct(sim, damping), rtol=1e-12
    )


def test_central_strategy_ranks_first_on_a_star() -> None:
    n = 7
    sim = np.zeros((n, n))
    sim[0, 1:] = sim[1:, 0] = 1.0
    rank = influence_rank(sim)
    assert rank.argmax() == 0
    np.testing.assert_allclose(rank[1:], rank[1])


def test_no_edges_gives_uniform_rank() -> None:
    np.testing.assert_allclose(influence_rank(np.eye(5)), 0.2, rtol=0, atol=1e-10)


def test_on_an_lcss_similarity_matrix() -> None:
    rng = np.random.default_rng(1)
    signals = np.sign(rng.standard_normal((8, 50)))
    sim = lcss_matrix(signals, 0.5)
    np.testing.assert_allclose(influence_rank(sim), _direct(sim, 0.85), atol=1e-8)


@pytest.mark.parametrize(
    ("sim", "kwargs", "error", "match"),
    [
        (np.ones((2, 3)), {}, ValueError, "similarity: must be square"),
        (-np.ones((2, 2)), {}, ValueError, "similarity: entries must be >= 0"),
        (np.full((2, 2), np.nan), {}, ValueError, "similarity: contains NaN"),
        (np.ones(3), {}, ValueError, "similarity: expected a 2-D"),
        (np.ones((2, 2)), {"damping": 1.0}, ValueError, "damping: must lie strictly"),
        (np.ones((2, 2)), {"tol": 0.0}, ValueError, "tol: must be > 0"),
    ],
)
def test_bad_input_is_rejected(
    sim: np.ndarray, kwargs: dict[str, float], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        influence_rank(sim, **kwargs)
