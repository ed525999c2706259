"""The correlator, feature engineer, neural trainer and ReasoningBank behaviours,
each run under a supervisor in-process and asked through its ref."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from midswarm.actors import ActorFailed, ActorRef, ChildSpec, open_supervisor
from midswarm.kernels import FEATURE_COLUMNS, features, influence_rank, lcss_matrix, mlp
from midswarm.reasoning import Experience, ReasoningBank
from midswarm.swarm._agent_bank import default_bank_path
from midswarm.swarm._agents import AGENT_FACTORIES, average_ranks, rank_correlation
from midswarm.swarm._market import synthetic_market
from midswarm.swarm._protocol import (
    CorrelationTask,
    ExperienceBatch,
    FeatureTask,
    Gradients,
    StrategyCorrelation,
    TrainStep,
    Verdicts,
)


@asynccontextmanager
async def running(agent_type: str, params: dict[str, Any] | None = None
                  ) -> AsyncIterator[ActorRef]:
    factory = AGENT_FACTORIES[agent_type]
    async with open_supervisor() as sup:
        yield await sup.start_child(ChildSpec(lambda: factory("a1", dict(params or {})),
                                              name=agent_type))


async def test_correlator_matrix_influence_and_rank_correlation() -> None:
    rng = np.random.default_rng(0)
    base = np.cumsum(rng.normal(size=120))
    signals = np.stack([base, base + rng.normal(0, 0.1, 120), -base, rng.normal(size=120)])
    async with running("correlator") as ref:
        out = await ref.ask(CorrelationTask(strategies=signals, names=list("abcd"),
                                            epsilon=0.5, window=10))
    assert isinstance(out, StrategyCorrelation)
    assert out.names == list("abcd")
    np.testing.assert_array_equal(out.matrix, lcss_matrix(signals, 0.5, 10))
    np.testing.assert_allclose(out.influence, influence_rank(out.matrix, 0.85), rtol=0, atol=0)
    assert out.influence.sum() == pytest.approx(1.0)
    assert out.rank_correlation is not None
    for i in range(4):
        for j in range(4):
            rho = stats.spearmanr(signals[i], signals[j]).statistic
            assert out.rank_correlation[i, j] == pytest.approx(rho)
    assert out.rank_correlation[0, 1] > 0.9 and out.rank_correlation[0, 2] == pytest.approx(-1)


async def test_correlator_names_default_and_are_checked() -> None:
    signals = np.array([[0.0, 1, 2, 3], [3.0, 2, 1, 0]])
    async with running("correlator") as ref:
        out = await ref.ask(CorrelationTask(strategies=signals))
        assert out.names == ["s0", "s1"]
        np.testing.assert_allclose(out.rank_correlation, [[1, -1], [-1, 1]])
        with pytest.raises(ActorFailed, match="3 names for 2 strategies"):
            await ref.ask(CorrelationTask(strategies=signals, names=["a", "b", "c"]))


def test_rank_correlation_of_a_constant_row_is_nan() -> None:
    rho = rank_correlation(np.array([[1.0, 2, 3], [5.0, 5, 5], [3.0, 1, 2]]))
    assert np.isnan(rho[1]).all() and np.isnan(rho[:, 1]).all()
    assert rho[0, 0] == 1.0
    assert rho[0, 2] == pytest.approx(stats.spearmanr([1.0, 2, 3], [3.0, 1, 2]).statistic)


def test_average_ranks_equal_scipy_rankdata_with_ties_and_nan() -> None:
    rng = np.random.default_rng(4)
    signs = rng.integers(-1, 2, size=(6, 50)).astype(float)  # the demo's signals: many ties
    continuous = rng.normal(size=(3, 17))
    with_nan = rng.integers(0, 3, size=(2, 9)).astype(float)
    with_nan[1, 4] = np.nan
    for rows in (signs, continuous, with_nan, np.zeros((2, 1)), np.zeros((3, 0))):
        np.testing.assert_array_equal(average_ranks(rows), stats.rankdata(rows, axis=1))
    rho = rank_correlation(signs)
    for i in range(6):
        for j in range(6):
            assert rho[i, j] == pytest.approx(stats.spearmanr(signs[i], signs[j]).statistic,
                                              abs=1e-12)
    rho = rank_correlation(with_nan)
    assert np.isnan(rho[1]).all() and np.isnan(rho[:, 1]).all() and rho[0, 0] == 1.0
    with pytest.raises(ValueError, match="2-D"):
        average_ranks(np.zeros(3))


async def test_feature_engineer_equals_the_kernel() -> None:
    ohlcv = synthetic_market(3, assets=1, bars=300).bars["A0"]
    async with running("feature_engineer", {"window": 10}) as ref:
        block = await ref.ask(FeatureTask(ohlcv=ohlcv, params={"rsi_period": 7}))
        with pytest.raises(ActorFailed, match="unknown feature option"):
            await ref.ask(FeatureTask(ohlcv=ohlcv, params={"rsi": 7}))
        with pytest.raises(ActorFailed, match=r"shape \(bars, 5\)"):
            await ref.ask(FeatureTask(ohlcv=ohlcv[:, :4]))
    expected = features(ohlcv, window=10, rsi_period=7)
    assert block.names == list(FEATURE_COLUMNS)
    assert block.values.flags.c_contiguous
    np.testing.assert_array_equal(block.values, expected.values)


async def test_neural_trainer_returns_the_kernels_gradients() -> None:
    rng = np.random.default_rng(1)
    params = mlp.init_params([4, 8, 1], seed=3)
    x = rng.normal(size=(32, 4))
    y = rng.normal(size=(32, 1))
    async with running("neural_trainer") as ref:
        out = await ref.ask(TrainStep(model_version=7, x=x, y=y, params=params))
        with pytest.raises(ActorFailed, match="features"):
            await ref.ask(TrainStep(model_version=7, x=x[:, :3], y=y, params=params))
    value, grads = mlp.loss_and_grads(params, x, y)
    assert isinstance(out, Gradients)
    assert out.model_version == 7 and out.batch_size == 32 and out.loss == value
    for got, want in zip(out.grads, grads, strict=True):
        np.testing.assert_array_equal(got, want)


def experience(agent: str, expected: float, actual: float, **context: Any) -> Experience:
    return Experience(agent_id=agent, action="predict", expected=expected, actual=actual,
                      similarity=0.9, confidence=0.8, context=context,
                      vector=np.array([1.0, 2.0, 3.0]))


async def test_reasoning_bank_judges_records_and_adapts(tmp_path: Path) -> None:
    path = tmp_path / "bank.sqlite"
    misses = [experience("m1", 0.01, -0.02, similarity_threshold=0.8,
                         confidence_threshold=0.6) for _ in range(25)]
    hits = [experience("m2", 0.01, 0.012) for _ in range(3)]
    async with running("reasoning_bank", {"path": str(path)}) as ref:
        out = await ref.ask(ExperienceBatch(experiences=misses + hits))
        assert await ref.ask("size") == 28
    assert isinstance(out, Verdicts)
    assert len(out.verdicts) == 28 and len(out.ids) == 28 and len(set(out.ids)) == 28
    assert all(v.should_adapt for v in out.verdicts[:25])
    assert all(v.score >= 0.5 and not v.should_adapt for v in out.verdicts[25:])
    # 25 misses of m1: the bank raises its thresholds; m2 has too few outcomes
    assert [c.agent_id for c in out.adaptations] == ["m1"]
    changes = {c.parameter: c.suggested for c in out.adaptations[0].changes}
    assert changes["similarity_threshold"] == pytest.approx(0.82)
    # a real SQLite file, readable by another connection
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM experiences").fetchone()[0] == 28
    with ReasoningBank(path, readonly=True) as bank:
        assert bank.get_experience(out.ids[-1]).actual == 0.012


async def test_reasoning_bank_refuses_a_bad_batch_and_records_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bank.sqlite"
    good = experience("m1", 0.01, 0.02)
    bad = experience("m1", float("nan"), 0.02)
    short = Experience("m1", "predict", 0.01, 0.02, 0.9, 0.8, {}, np.array([1.0, 2.0]))
    async with running("reasoning_bank", {"path": str(path)}) as ref:
        with pytest.raises(ActorFailed, match=r"experiences\[1\].*expected"):
            await ref.ask(ExperienceBatch(experiences=[good, bad]))
        await ref.ask(ExperienceBatch(experiences=[good]))
        with pytest.raises(ActorFailed, match=r"experiences\[1\]: vector has 2 values"):
            await ref.ask(ExperienceBatch(experiences=[good, short]))
        # restarted after each failure, reopening the same file
        assert await ref.ask("size") == 1


def test_default_bank_path_is_a_file_name_per_agent() -> None:
    path = default_bank_path("agent/1 x")
    assert path.endswith("reasoning-agent_1_x.sqlite")


@pytest.mark.skipif(not hasattr(__import__("os"), "SCHED_BATCH"), reason="Linux only")
async def test_kernels_run_in_batch_scheduled_worker_threads() -> None:
    import os

    from midswarm.swarm._agent_util import run_kernel

    before = os.sched_getscheduler(0)
    assert await run_kernel(1, os.sched_getscheduler, 0, inline_below=0) == os.SCHED_BATCH
    assert os.sched_getscheduler(0) == before  # the event loop's thread is left alone
