"""MLP gradients, data-parallel averaging, Adam and determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import check_grad

from midswarm.kernels import mlp


def _data(n: int, n_in: int, n_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_in))
    y = np.sin(X @ rng.standard_normal((n_in, n_out)))
    return X, y


@pytest.mark.parametrize("sizes", [[3, 1], [4, 7, 2], [5, 8, 6, 3]])
def test_gradients_pass_check_grad(sizes: list[int]) -> None:
    params = mlp.init_params(sizes, seed=1)
    # Non-zero biases so their gradients are exercised away from the origin.
    params = [p + 0.1 for p in params]
    X, y = _data(13, sizes[0], sizes[-1], seed=2)

    def f(flat: np.ndarray) -> float:
        return mlp.loss(mlp.unflatten(flat, params), X, y)

    def g(flat: np.ndarray) -> np.ndarray:
        return mlp.flatten(mlp.loss_and_grads(mlp.unflatten(flat, params), X, y)[1])

    x0 = mlp.flatten(params)
    # Forward differences: truncation error ~ epsilon * curvature.  A wrong
    # gradient is off by O(|gradient|), five orders of magnitude more.
    err = check_grad(f, g, x0, epsilon=1e-7)
    scale = float(np.linalg.norm(g(x0)))
    assert err < 1e-5 * max(1.0, scale), (err, scale)


def test_loss_and_grads_loss_equals_loss() -> None:
    params = mlp.init_params([4, 5, 2], seed=3)
    X, y = _data(20, 4, 2, seed=4)
    value, grads = mlp.loss_and_grads(params, X, y)
    assert value == mlp.loss(params, X, y)
    assert value == pytest.approx(np.mean((mlp.forward(params, X) - y) ** 2))
    assert [g.shape for g in grads] == [p.shape for p in params]
    assert all(g.dtype == np.float64 for g in grads)


def test_shard_gradients_weighted_by_batch_size_equal_full_batch() -> None:
    params = mlp.init_params([6, 10, 3], seed=5)
    X, y = _data(101, 6, 3, seed=6)
    full_loss, full = mlp.loss_and_grads(params, X, y)
    cuts = [0, 17, 18, 60, 101]  # uneven shards, one of a single sample
    shard_grads = []
    sizes = []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        shard_grads.append(mlp.loss_and_grads(params, X[lo:hi], y[lo:hi])[1])
        sizes.append(hi - lo)
    averaged = mlp.average_grads(shard_grads, sizes)
    for a, b in zip(averaged, full, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_adam_step_matches_the_update_rule() -> None:
    params = mlp.init_params([2, 3, 1], seed=7)
    X, y = _data(9, 2, 1, seed=8)
    state = mlp.adam_init(params)
    lr, b1, b2, eps = 0.01, 0.8, 0.99, 1e-7
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    expected = [p.copy() for p in params]
    current = params
    for step in (1, 2, 3):
        _, grads = mlp.loss_and_grads(current, X, y)
        current, state = mlp.adam_step(current, grads, state, lr=lr, beta1=b1, beta2=b2,
                                       eps=eps)
        for i, g in enumerate(grads):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1**step)
            v_hat = v[i] / (1 - b2**step)
            expected[i] = expected[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
        assert state.step == step
        for a, b in zip(current, expected, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def test_adam_training_reduces_loss_and_leaves_inputs_untouched() -> None:
    params = mlp.init_params([3, 16, 1], seed=9)
    X, y = _data(64, 3, 1, seed=10)
    before = [p.copy() for p in params]
    state = mlp.adam_init(params)
    start = mlp.loss(params, X, y)
    current = params
    for _ in range(300):
        _, grads = mlp.loss_and_grads(current, X, y)
        current, state = mlp.adam_step(current, grads, state, lr=0.01)
    assert mlp.loss(current, X, y) < 0.2 * start
    for a, b in zip(params, before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_deterministic_from_seed() -> None:
    a = mlp.init_params([4, 8, 2], seed=42)
    b = mlp.init_params([4, 8, 2], seed=42)
    c = mlp.init_params([4, 8, 2], seed=43)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    X, y = _data(10, 4, 2, seed=0)
    g1 = mlp.flatten(mlp.loss_and_grads(a, X, y)[1])
    g2 = mlp.flatten(mlp.loss_and_grads(b, X, y)[1])
    np.testing.assert_array_equal(g1, g2)


def test_one_dimensional_targets_for_one_output() -> None:
    params = mlp.init_params([2, 1], seed=0)
    X, y = _data(5, 2, 1, seed=1)
    assert mlp.loss(params, X, y[:, 0]) == mlp.loss(params, X, y)


def test_flatten_roundtrip() -> None:
    params = mlp.init_params([3, 4, 2], seed=0)
    back = mlp.unflatten(mlp.flatten(params), params)
    for a, b in zip(params, back, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="flat: expected a vector of 26 values"):
        mlp.unflatten(np.zeros(5), params)


def test_bad_input_is_rejected() -> None:
    params = mlp.init_params([3, 2], seed=0)
    with pytest.raises(ValueError, match="layer_sizes: need at least"):
        mlp.init_params([3], seed=0)
    with pytest.raises(ValueError, match=r"layer_sizes\[1\]: must be >= 1"):
        mlp.init_params([3, 0], seed=0)
    with pytest.raises(ValueError, match="X: has 4 features, the network expects 3"):
        mlp.forward(params, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="X: contains NaN"):
        mlp.forward(params, np.array([[1.0, np.nan, 0.0]]))
    with pytest.raises(ValueError, match=r"y: expected shape \(2, 2\)"):
        mlp.loss_and_grads(params, np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="params: layer 1 expects"):
        mlp.forward([np.zeros((3, 2)), np.zeros(2), np.zeros((4, 1)), np.zeros(1)],
                    np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"batch_sizes\[0\]: must be >= 1"):
        mlp.average_grads([params], [0])
    with pytest.raises(ValueError, match="grads_list: no gradients"):
        mlp.average_grads([], [])
    state = mlp.adam_init(params)
    with pytest.raises(ValueError, match=r"grads\[0\]: contains NaN"):
        mlp.adam_step(params, [np.full((3, 2), np.nan), np.zeros(2)], state)
    with pytest.raises(ValueError, match="beta1"):
        mlp.adam_step(params, [np.zeros((3, 2)), np.zeros(2)], state, beta1=1.0)
