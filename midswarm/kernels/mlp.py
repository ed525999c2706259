"""A small fully-connected network in float64: init, forward, gradients, Adam.

Parameters are a flat list ``[W0, b0, W1, b1, ...]`` of float64 arrays with
``W_l`` of shape ``(fan_in, fan_out)`` and ``b_l`` of shape ``(fan_out,)``;
gradients come back in the same layout, so they can be sent over the wire,
summed and averaged by a parameter server without knowing the architecture.
Hidden layers use ``tanh`` (smooth, so gradients can be checked numerically);
the output layer is linear.  The loss is the mean squared error over all
samples and outputs.  Because the loss is a mean over samples, the
batch-size-weighted average of per-shard gradients (:func:`average_grads`)
equals the gradient of the whole batch.

Everything is deterministic: :func:`init_params` draws from
``numpy.random.default_rng(seed)`` and nothing else is random.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validate import as_matrix, check_nonnegative_float, check_positive_int

__all__ = [
    "AdamState",
    "adam_init",
    "adam_step",
    "average_grads",
    "flatten",
    "forward",
    "init_params",
    "loss",
    "loss_and_grads",
    "unflatten",
]

Params = list[np.ndarray]


def init_params(layer_sizes: Sequence[int], seed: int) -> Params:
    """Glorot-normal weights and zero biases for layers of the given widths.

    ``layer_sizes = [inputs, hidden..., outputs]`` needs at least two entries.

    Raises:
        ValueError: for fewer than two sizes or a size < 1.
        TypeError: for a non-int size or seed.
    """
    sizes = list(layer_sizes)
    if len(sizes) < 2:
        raise ValueError(f"layer_sizes: need at least input and output sizes, got {sizes}")
    sizes = [check_positive_int(f"layer_sizes[{i}]", s) for i, s in enumerate(sizes)]
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    rng = np.random.default_rng(int(seed))
    params: Params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        scale = np.sqrt(2.0 / (fan_in + fan_out))
        params.append(rng.normal(0.0, scale, size=(fan_in, fan_out)))
        params.append(np.zeros(fan_out))
    return params


def _check_params(params: Sequence[Any]) -> Params:
    if len(params) < 2 or len(params) % 2:
        raise ValueError(
            f"params: expected [W0, b0, W1, b1, ...], got {len(params)} array(s)"
        )
    out: Params = []
    for layer in range(len(params) // 2):
        w = np.asarray(params[2 * layer], dtype=np.float64)
        b = np.asarray(params[2 * layer + 1], dtype=np.float64)
        if w.ndim != 2 or b.shape != (w.shape[1],):
            raise ValueError(
                f"params: layer {layer} has weight shape {w.shape} and bias shape {b.shape}"
            )
        if layer and w.shape[0] != out[-2].shape[1]:
            raise ValueError(
                f"params: layer {layer} expects {w.shape[0]} inputs but layer {layer - 1} "
                f"produces {out[-2].shape[1]}"
            )
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise ValueError(f"params: layer {layer} contains NaN or inf")
        out.extend((w, b))
    return out


def _check_xy(params: Params, X: Any, y: Any | None) -> tuple[np.ndarray, np.ndarray | None]:
    x = as_matrix("X", X)
    if x.shape[1] != params[0].shape[0]:
        raise ValueError(f"X: has {x.shape[1]} features, the network expects {params[0].shape[0]}")
    if y is None:
        return x, None
    n_out = params[-1].shape[0]
    t = np.asarray(y)
    if t.ndim == 1 and n_out == 1:
        t = t[:, None]
    t = as_matrix("y", t)
    if t.shape != (x.shape[0], n_out):
        raise ValueError(f"y: expected shape {(x.shape[0], n_out)}, got {t.shape}")
    return x, t


def _forward(params: Params, x: np.ndarray) -> list[np.ndarray]:
    acts = [x]
    n_layers = len(params) // 2
    for layer in range(n_layers):
        z = acts[-1] @ params[2 * layer] + params[2 * layer + 1]
        acts.append(np.tanh(z) if layer < n_layers - 1 else z)
    return acts


def forward(params: Sequence[Any], X: Any) -> np.ndarray:
    """Network output for inputs ``X`` of shape ``(samples, inputs)``.

    Raises:
        ValueError: for malformed params, or X of the wrong shape or with NaN/inf.
    """
    p = _check_params(params)
    x, _ = _check_xy(p, X, None)
    return _forward(p, x)[-1]


def loss(params: Sequence[Any], X: Any, y: Any) -> float:
    """Mean squared error of the network on ``(X, y)``."""
    p = _check_params(params)
    x, t = _check_xy(p, X, y)
    assert t is not None
    diff = _forward(p, x)[-1] - t
    return float(np.mean(diff * diff))


def loss_and_grads(params: Sequence[Any], X: Any, y: Any) -> tuple[float, Params]:
    """Mean squared error and its gradient with respect to every parameter.

    ``y`` has shape ``(samples, outputs)`` (or ``(samples,)`` for one output).
    Gradients are float64 arrays in the layout of *params*.

    Raises:
        ValueError: for malformed params, or X/y of the wrong shape or with NaN/inf.
    """
    p = _check_params(params)
    x, t = _check_xy(p, X, y)
    assert t is not None
    acts = _forward(p, x)
    diff = acts[-1] - t
    value = float(np.mean(diff * diff))
    delta = (2.0 / diff.size) * diff
    n_layers = len(p) // 2
    grads: Params = [np.empty(0)] * len(p)
    for layer in range(n_layers - 1, -1, -1):
        grads[2 * layer] = acts[layer].T @ delta
        grads[2 * layer + 1] = delta.sum(axis=0)
        if layer:
            a = acts[layer]
            delta = (delta @ p[2 * layer].T) * (1.0 - a * a)
    return value, grads


def average_grads(grads_list: Sequence[Sequence[Any]], batch_sizes: Sequence[int]) -> Params:
    """Batch-size-weighted average of per-shard gradients.

    With the mean-over-samples loss this equals the full-batch gradient.

    Raises:
        ValueError: for no shards, mismatched counts or layouts, or a batch size < 1.
    """
    if len(grads_list) == 0:
        raise ValueError("grads_list: no gradients to average")
    if len(grads_list) != len(batch_sizes):
        raise ValueError(
            f"batch_sizes: {len(batch_sizes)} sizes for {len(grads_list)} gradient lists"
        )
    sizes = [check_positive_int(f"batch_sizes[{i}]", s) for i, s in enumerate(batch_sizes)]
    total = float(sum(sizes))
    first = [np.asarray(g, dtype=np.float64) for g in grads_list[0]]
    out = [np.zeros_like(g) for g in first]
    for shard, (grads, size) in enumerate(zip(grads_list, sizes, strict=True)):
        if len(grads) != len(out):
            raise ValueError(f"grads_list[{shard}]: {len(grads)} arrays, expected {len(out)}")
        for i, g in enumerate(grads):
            arr = np.asarray(g, dtype=np.float64)
            if arr.shape != out[i].shape:
                raise ValueError(
                    f"grads_list[{shard}][{i}]: shape {arr.shape}, expected {out[i].shape}"
                )
            out[i] += (size / total) * arr
    return out


@dataclass(frozen=True)
class AdamState:
    """Adam's step count and first/second moment estimates (layout of params)."""

    step: int
    m: tuple[np.ndarray, ...]
    v: tuple[np.ndarray, ...]


def adam_init(params: Sequence[Any]) -> AdamState:
    """Zero moments for *params*."""
    p = _check_params(params)
    return AdamState(0, tuple(np.zeros_like(a) for a in p), tuple(np.zeros_like(a) for a in p))


def adam_step(
    params: Sequence[Any], grads: Sequence[Any], state: AdamState, lr: float = 1e-3,
    beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
) -> tuple[Params, AdamState]:
    """One Adam update (Kingma & Ba, with bias correction); returns new params
    and state, leaving the inputs untouched.

    Raises:
        ValueError: for gradients or state that do not match *params*, NaN/inf
            gradients, or hyper-parameters out of range.
    """
    p = _check_params(params)
    lr = check_nonnegative_float("lr", lr)
    eps = check_nonnegative_float("eps", eps)
    for name, beta in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= float(beta) < 1.0:
            raise ValueError(f"{name}: must be in [0, 1), got {beta}")
    if len(grads) != len(p) or len(state.m) != len(p) or len(state.v) != len(p):
        raise ValueError("grads: layout does not match params (or state does not)")
    step = state.step + 1
    new_p: Params = []
    new_m = []
    new_v = []
    c1 = 1.0 - beta1**step
    c2 = 1.0 - beta2**step
    for i, (param, g) in enumerate(zip(p, grads, strict=True)):
        g = np.asarray(g, dtype=np.float64)
        if g.shape != param.shape:
            raise ValueError(f"grads[{i}]: shape {g.shape}, expected {param.shape}")
        if not np.isfinite(g).all():
            raise ValueError(f"grads[{i}]: contains NaN or inf")
        m = beta1 * state.m[i] + (1.0 - beta1) * g
        v = beta2 * state.v[i] + (1.0 - beta2) * g * g
        new_p.append(param - lr * (m / c1) / (np.sqrt(v / c2) + eps))
        new_m.append(m)
        new_v.append(v)
    return new_p, AdamState(step, tuple(new_m), tuple(new_v))


def flatten(arrays: Sequence[Any]) -> np.ndarray:
    """Concatenate arrays (params or grads) into one float64 vector."""
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def unflatten(flat: Any, like: Sequence[Any]) -> Params:
    """Split a vector made by :func:`flatten` back into arrays shaped like *like*.

    Raises:
        ValueError: if the vector's length does not match.
    """
    vec = np.asarray(flat, dtype=np.float64)
    total = sum(int(np.size(a)) for a in like)
    if vec.ndim != 1 or vec.shape[0] != total:
        raise ValueError(f"flat: expected a vector of {total} values, got shape {vec.shape}")
    out: Params = []
    pos = 0
    for a in like:
        shape = np.shape(a)
        size = int(np.prod(shape))
        out.append(vec[pos:pos + size].reshape(shape).copy())
        pos += size
    return out
