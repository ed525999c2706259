"""The five actor behaviours of the swarm, and their factories.

Every behaviour is an :class:`~midswarm.actors.Actor` built by a factory
``(agent_id, parameters) -> Actor``; :data:`AGENT_FACTORIES` maps each name of
:data:`~midswarm.swarm._protocol.AGENT_TYPES` to its factory.  An actor's state
lives on the instance and is rebuilt by the constructor when the supervisor
restarts it.  Numeric work runs in a worker thread (the kernels release the
GIL), so an agent's event loop keeps serving its streams meanwhile.

A malformed message raises :class:`ValueError` or :class:`TypeError` naming
the bad field; by actor semantics that fails the ``ask`` with the message and
restarts the instance.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..actors import Actor
from ..kernels import features, influence_rank, lcss_matrix, mlp
from ._agent_bank import ReasoningBankActor
from ._agent_matcher import PatternMatcher
from ._agent_util import check_threads, run_kernel, wire_copy
from ._protocol import (
    AGENT_TYPES,
    CorrelationTask,
    FeatureBlock,
    FeatureTask,
    Gradients,
    StrategyCorrelation,
    TrainStep,
)

__all__ = [
    "AGENT_FACTORIES",
    "FeatureEngineer",
    "NeuralTrainer",
    "PatternMatcher",
    "ReasoningBankActor",
    "StrategyCorrelator",
    "average_ranks",
    "rank_correlation",
]

_FEATURE_OPTIONS = ("window", "ema_span", "rsi_period", "macd_fast", "macd_slow",
                    "macd_signal", "bollinger_k", "atr_period", "vol_window")


def _unknown(actor: Actor, msg: Any) -> TypeError:
    return TypeError(f"{type(actor).__name__} cannot handle {type(msg).__name__} "
                     f"message {msg!r}")


def average_ranks(rows: np.ndarray) -> np.ndarray:
    """Ranks (1-based) within each row of a 2-D array, ties given the mean of
    the ranks they span -- what ``scipy.stats.rankdata(rows, axis=1)`` gives.
    A row holding a NaN is all NaN.

    Plain numpy: importing ``scipy.stats`` costs an agent process about a
    second of start-up on a busy machine, for this one function.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2:
        raise ValueError(f"average_ranks: expected a 2-D array, got shape {rows.shape}")
    n, m = rows.shape
    ranks = np.empty((n, m))
    if m == 0:
        return ranks
    order = np.argsort(rows, axis=1, kind="stable")
    ordered = np.take_along_axis(rows, order, axis=1)
    position = np.broadcast_to(np.arange(m), (n, m))
    # A run of equal values spans [first, last]; each member gets their mean + 1.
    starts = np.ones((n, m), dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = np.ones((n, m), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, position, m - 1)[:, ::-1], axis=1)[:, ::-1]
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=1)
    ranks[np.isnan(rows).any(axis=1)] = np.nan
    return ranks


def rank_correlation(strategies: np.ndarray) -> np.ndarray:
    """Spearman rank correlation between the rows of ``strategies``, as an
    ``(n, n)`` matrix: the Pearson correlation of the rows' average ranks
    (:func:`average_ranks`), which is what ``scipy.stats.spearmanr`` gives
    for each pair.  A constant row has no ranking: its row and column
    (diagonal entry included) are NaN, and the other entries are still given;
    so are those of a row holding a NaN.
    """
    rows = np.asarray(strategies, dtype=np.float64)
    n = rows.shape[0]
    if rows.shape[1] < 2:
        return np.full((n, n), np.nan)
    ranks = average_ranks(rows)
    centred = ranks - ranks.mean(axis=1, keepdims=True)
    norms = np.sqrt((centred * centred).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = centred / norms[:, None]
    rho = np.clip(unit @ unit.T, -1.0, 1.0)
    np.fill_diagonal(rho, 1.0)
    undefined = ~(norms > 0)  # constant rows (0) and rows with a NaN
    rho[undefined, :] = np.nan
    rho[:, undefined] = np.nan
    return rho


class StrategyCorrelator(Actor):
    """:class:`CorrelationTask` -> :class:`StrategyCorrelation`.

    ``matrix`` is :func:`~midswarm.kernels.lcss_matrix` of the strategies'
    signals (``epsilon`` and ``window`` from the task), ``influence`` the
    :func:`~midswarm.kernels.influence_rank` of that matrix (damping from
    ``parameters["damping"]``, default 0.85; ``parameters["threads"]``: numba
    threads, default 1) and ``rank_correlation`` the
    Spearman correlation of :func:`rank_correlation`.  Names default to
    ``s0, s1, ...``; given names must be one per strategy.
    """

    def __init__(self, agent_id: str, parameters: Mapping[str, Any] | None = None) -> None:
        params = dict(parameters or {})
        self.agent_id = agent_id
        self.threads = check_threads(params.get("threads", 1))
        self.damping = float(params.get("damping", 0.85))
        if not 0.0 < self.damping < 1.0:
            raise ValueError(f"parameters['damping'] must be in (0, 1), got {self.damping!r}")

    @classmethod
    async def warm_up(cls) -> None:
        """Have numba load (or compile) the LCSS and ranking kernels now: a
        throwaway correlator answers one small task (through the codec, as a
        real one arrives).  An agent calls this before its hello."""
        rng = np.random.default_rng(0)
        signals = np.sign(rng.normal(size=(6, 40)))
        await cls("warm-up").handle(wire_copy(CorrelationTask(
            strategies=signals, names=[f"s{i}" for i in range(6)], epsilon=0.5, window=16)))

    async def handle(self, msg: Any) -> Any:
        if not isinstance(msg, CorrelationTask):
            raise _unknown(self, msg)
        signals = np.asarray(msg.strategies, dtype=np.float64)
        if signals.ndim != 2 or signals.shape[0] < 1 or signals.shape[1] < 1:
            raise ValueError(f"CorrelationTask.strategies must be a 2-D array with one row per "
                             f"strategy, got shape {signals.shape}")
        names = list(msg.names) or [f"s{i}" for i in range(signals.shape[0])]
        if len(names) != signals.shape[0]:
            raise ValueError(f"CorrelationTask.names: {len(names)} names for "
                             f"{signals.shape[0]} strategies")
        return await run_kernel(self.threads, self._correlate, signals, names, msg)

    def _correlate(self, signals: np.ndarray, names: list[str], msg: CorrelationTask
                   ) -> StrategyCorrelation:
        matrix = lcss_matrix(signals, msg.epsilon, msg.window)
        influence = influence_rank(matrix, self.damping)
        return StrategyCorrelation(names=names, matrix=matrix, influence=influence,
                                   rank_correlation=rank_correlation(signals))


class FeatureEngineer(Actor):
    """:class:`FeatureTask` -> :class:`FeatureBlock` of
    :func:`~midswarm.kernels.features` (columns :data:`~midswarm.kernels.FEATURE_COLUMNS`).

    ``parameters`` and then ``task.params`` may set the feature options
    (``window``, ``ema_span``, ``rsi_period``, ``macd_fast``, ``macd_slow``,
    ``macd_signal``, ``bollinger_k``, ``atr_period``, ``vol_window``); an
    unknown option raises :class:`ValueError`.  ``parameters["threads"]`` sets
    the numba threads of one computation (default 1).  ``values`` is a C-ordered
    ``(bars, columns)`` float64 array; rows without enough history are NaN.
    """

    def __init__(self, agent_id: str, parameters: Mapping[str, Any] | None = None) -> None:
        options = dict(parameters or {})
        self.agent_id = agent_id
        self.threads = check_threads(options.pop("threads", 1))
        self.options = self._options(options, "parameters")

    @staticmethod
    def _options(values: Mapping[str, Any], name: str) -> dict[str, Any]:
        unknown = [key for key in values if key not in _FEATURE_OPTIONS]
        if unknown:
            raise ValueError(f"{name}: unknown feature option(s) {', '.join(map(repr, unknown))} "
                             f"(known: {', '.join(_FEATURE_OPTIONS)})")
        return dict(values)

    @classmethod
    async def warm_up(cls) -> None:
        """Have numba load (or compile) the feature kernels now: a throwaway
        feature engineer computes the features of 64 random-walk bars
        (through the codec, as a real task arrives).  An agent calls this
        before its hello."""
        rng = np.random.default_rng(0)
        close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, size=64)))
        ohlcv = np.stack([close, close * 1.01, close * 0.99, close, np.full(64, 1000.0)], axis=1)
        await cls("warm-up").handle(wire_copy(FeatureTask(ohlcv=ohlcv)))

    async def handle(self, msg: Any) -> Any:
        if not isinstance(msg, FeatureTask):
            raise _unknown(self, msg)
        options = dict(self.options)
        options.update(self._options(msg.params, "FeatureTask.params"))
        ohlcv = np.asarray(msg.ohlcv)
        if ohlcv.ndim != 2 or ohlcv.shape[1] != 5:
            raise ValueError(f"FeatureTask.ohlcv must have shape (bars, 5) (open, high, low, "
                             f"close, volume), got {ohlcv.shape}")
        frame = await run_kernel(self.threads, functools.partial(features, ohlcv, **options))
        return FeatureBlock(names=list(frame.columns),
                            values=np.ascontiguousarray(frame.values))


class NeuralTrainer(Actor):
    """:class:`TrainStep` -> :class:`Gradients`: the mean-squared-error loss and
    its gradients (:func:`midswarm.kernels.mlp.loss_and_grads`) at the step's
    parameters on its batch, tagged with the step's ``model_version``.
    Stateless: the parameter server sends the parameters with every step.
    """

    def __init__(self, agent_id: str, parameters: Mapping[str, Any] | None = None) -> None:
        self.agent_id = agent_id
        self.steps = 0

    @classmethod
    async def warm_up(cls) -> None:
        """One gradient computation on a small batch by a throwaway trainer
        (numpy only: this mostly warms numpy's and the codec's first calls).
        An agent calls this before its hello."""
        rng = np.random.default_rng(0)
        params = mlp.init_params([7, 16, 1], seed=0)
        await cls("warm-up").handle(wire_copy(TrainStep(
            model_version=0, x=rng.normal(size=(16, 7)), y=rng.normal(size=16), params=params)))

    async def handle(self, msg: Any) -> Any:
        if not isinstance(msg, TrainStep):
            raise _unknown(self, msg)
        x = np.asarray(msg.x)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"TrainStep.x must be a non-empty (samples, inputs) array, got "
                             f"shape {x.shape}")
        value, grads = await run_kernel(1, mlp.loss_and_grads, msg.params, x, msg.y)
        self.steps += 1
        return Gradients(model_version=msg.model_version, grads=grads, batch_size=x.shape[0],
                         loss=value)


AgentFactory = Callable[[str, dict[str, Any]], Actor]

#: Agent type -> factory ``(agent_id, parameters) -> Actor``.
AGENT_FACTORIES: dict[str, AgentFactory] = {
    "pattern_matcher": PatternMatcher,
    "correlator": StrategyCorrelator,
    "feature_engineer": FeatureEngineer,
    "neural_trainer": NeuralTrainer,
    "reasoning_bank": ReasoningBankActor,
}
assert tuple(AGENT_FACTORIES) == AGENT_TYPES
