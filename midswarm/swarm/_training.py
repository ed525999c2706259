"""Synchronous data-parallel training of the MLP through neural-trainer agents.

Theory of operation
-------------------
A :class:`ParameterServer` owns the model: its parameters, Adam's state and a
``version`` that counts the updates applied.  :meth:`ParameterServer.step`
splits a batch into contiguous shards (``numpy.array_split`` of the row
indices: the same batch always gives the same shards), sends each shard as a
:class:`TrainStep` carrying the current version and parameters, and gathers the
:class:`Gradients`.  A gradient whose ``model_version`` is not the current one
was computed on other parameters: it is *stale*, rejected (counted in
:attr:`~ParameterServer.stale_rejected`) and its shard is sent again.  The
loss is a mean over samples, so the batch-size-weighted mean of the shards'
gradients (:func:`midswarm.kernels.mlp.average_grads`) is the full batch's
gradient; one Adam step later the version goes up by one.  Training is thereby
the same as single-process full-batch Adam on the same batches, up to float
rounding in the weighted sum.

The server does not know how tasks reach trainers: it is given an async
``scatter(tasks) -> results`` callable (for a swarm, the coordinator's map
over the ``neural_trainer`` agents; in tests, a function over local actors).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from ..kernels import mlp
from ._protocol import Gradients, TrainStep

__all__ = ["ParameterServer", "Scatter", "StaleGradientsError"]

#: ``scatter(tasks)`` returns one result per task, in task order.
Scatter = Callable[[list[TrainStep]], Awaitable[Sequence[Any]]]


class StaleGradientsError(RuntimeError):
    """A shard's gradient kept coming back for another model version."""


class ParameterServer:
    """The model's parameters, kept and updated by synchronous data-parallel Adam.

    Args:
        scatter: async callable sending a list of :class:`TrainStep` to
            trainers and returning their :class:`Gradients` in the same order.
        layer_sizes: ``[inputs, hidden..., outputs]`` of the MLP.
        seed: seed of :func:`midswarm.kernels.mlp.init_params`.
        lr, beta1, beta2, eps: Adam's hyper-parameters.
        shards: how many shards each batch is split into (fewer for a batch
            with fewer rows).
        max_resends: how many times a shard whose gradient was stale is sent
            again before :meth:`step` gives up.

    Raises :class:`ValueError` for bad sizes, ``shards < 1`` or
    ``max_resends < 0``.
    """

    def __init__(self, scatter: Scatter, layer_sizes: Sequence[int], *, seed: int = 0,
                 lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 shards: int = 2, max_resends: int = 3) -> None:
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise ValueError(f"shards must be an int >= 1, got {shards!r}")
        if isinstance(max_resends, bool) or not isinstance(max_resends, int) or max_resends < 0:
            raise ValueError(f"max_resends must be an int >= 0, got {max_resends!r}")
        self._scatter = scatter
        self.layer_sizes = list(layer_sizes)
        self.params = mlp.init_params(self.layer_sizes, seed)
        self.adam = mlp.adam_init(self.params)
        self.hyper = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps}
        # Fail now, not at the first step, on bad hyper-parameters.
        mlp.adam_step(self.params, [np.zeros_like(p) for p in self.params], self.adam,
                      **self.hyper)
        self.shards = shards
        self.max_resends = max_resends
        #: Updates applied so far; every TrainStep carries it.
        self.version = 0
        #: Gradients rejected because they were for another version.
        self.stale_rejected = 0
        #: Full-batch loss (before the update) of every step.
        self.losses: list[float] = []

    def split(self, rows: int) -> list[np.ndarray]:
        """The row indices of each shard of a batch of ``rows`` rows."""
        return [part for part in np.array_split(np.arange(rows), min(self.shards, rows))]

    async def step(self, x: Any, y: Any) -> float:
        """One synchronous Adam step on the batch ``(x, y)``; returns its loss
        (at the parameters before the update).

        Raises :class:`ValueError` for an empty batch or mismatched shapes
        (the model is unchanged then), :class:`StaleGradientsError` if a
        shard's gradient is still stale after ``max_resends`` resends, and
        whatever ``scatter`` raises.  Cancellation leaves the model unchanged.
        """
        xs = np.asarray(x, dtype=np.float64)
        ys = np.asarray(y, dtype=np.float64)
        if ys.ndim == 1:
            ys = ys[:, None]
        if xs.ndim != 2 or xs.shape[0] == 0:
            raise ValueError(f"x must be a non-empty (samples, inputs) array, got {xs.shape}")
        if ys.shape[0] != xs.shape[0]:
            raise ValueError(f"y has {ys.shape[0]} rows, x has {xs.shape[0]}")
        mlp.loss(self.params, xs[:1], ys[:1])  # shape check before anything is sent
        parts = self.split(xs.shape[0])
        tasks = [TrainStep(model_version=self.version, x=xs[p], y=ys[p], params=self.params)
                 for p in parts]
        results: list[Gradients | None] = [None] * len(tasks)
        pending = list(range(len(tasks)))
        for _attempt in range(self.max_resends + 1):
            answers = await self._scatter([tasks[i] for i in pending])
            if len(answers) != len(pending):
                raise RuntimeError(f"scatter returned {len(answers)} results for "
                                   f"{len(pending)} tasks")
            stale = []
            for i, answer in zip(pending, answers, strict=True):
                if not isinstance(answer, Gradients):
                    raise TypeError(f"scatter returned a {type(answer).__name__} for shard {i}, "
                                    f"not Gradients")
                if answer.model_version != self.version:
                    self.stale_rejected += 1
                    stale.append(i)
                    continue
                if answer.batch_size != parts[i].shape[0]:
                    raise ValueError(f"shard {i}: gradient for {answer.batch_size} rows, the "
                                     f"shard has {parts[i].shape[0]}")
                results[i] = answer
            pending = stale
            if not pending:
                break
        if pending:
            raise StaleGradientsError(
                f"shard(s) {pending} still answered for another model version than "
                f"{self.version} after {self.max_resends} resend(s)")
        done = [r for r in results if r is not None]
        sizes = [r.batch_size for r in done]
        grads = mlp.average_grads([r.grads for r in done], sizes)
        loss = sum(r.loss * r.batch_size for r in done) / sum(sizes)
        self.params, self.adam = mlp.adam_step(self.params, grads, self.adam, **self.hyper)
        self.version += 1
        self.losses.append(loss)
        return loss

    def predict(self, x: Any) -> np.ndarray:
        """The model's output for inputs ``x`` (``(samples, outputs)``)."""
        return mlp.forward(self.params, x)
