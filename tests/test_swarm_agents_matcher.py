"""The pattern matcher behaviour: search, shards and their merge, adaptation."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from midswarm.actors import ActorFailed, ChildSpec, open_supervisor
from midswarm.kernels import dtw_knn
from midswarm.reasoning import AdaptationCommand, ParameterChange
from midswarm.swarm._agent_matcher import (
    MATCHER_LIMITS,
    PatternMatcher,
    merge_pattern_results,
    similarity_of,
)
from midswarm.swarm._agents import AGENT_FACTORIES
from midswarm.swarm._protocol import (
    AGENT_TYPES,
    PatternLibraryAdd,
    PatternMatchResult,
    PatternMatchTask,
)

LENGTH = 16


def library(rng: np.random.Generator, n: int, ties: bool = True
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random-walk patterns with shuffled ids; with ``ties`` some rows repeat
    (equal distances) so the tie-break by pattern id is exercised."""
    vectors = np.cumsum(rng.normal(size=(n, LENGTH)), axis=1)
    if ties and n >= 4:
        copies = rng.integers(0, n, n // 4)
        targets = rng.integers(0, n, n // 4)
        vectors[targets] = vectors[copies] * 3.0 + 1.0  # same after z-normalisation
    outcomes = rng.normal(size=n)
    ids = rng.permutation(np.arange(1000, 1000 + 5 * n, 5))[:n].astype(np.int64)
    return vectors, outcomes, ids


def same_result(a: PatternMatchResult, b: PatternMatchResult) -> None:
    assert a.matches == b.matches
    assert a.similarity == b.similarity
    assert a.confidence == b.confidence
    assert a.expected_outcome == b.expected_outcome
    assert a.market_context == b.market_context
    assert a.pattern_type == b.pattern_type


def test_factories_cover_the_agent_types() -> None:
    assert tuple(AGENT_FACTORIES) == AGENT_TYPES
    for name, factory in AGENT_FACTORIES.items():
        params: dict[str, Any] = {"path": "unused.sqlite"} if name == "reasoning_bank" else {}
        assert factory("a1", params).agent_id == "a1"


async def test_empty_shard_answers_with_no_matches() -> None:
    async with open_supervisor() as sup:
        ref = await sup.start_child(ChildSpec(lambda: PatternMatcher("a1", {}), name="pm"))
        result = await ref.ask(PatternMatchTask(window=np.arange(8.0)))
    assert result.matches == []
    assert result.similarity == 0.0 and result.confidence == 0.0
    assert result.expected_outcome == 0.0 and result.actual_outcome is None
    assert result.market_context["actionable"] is False
    assert result.market_context["library_size"] == 0


async def test_matches_equal_dtw_knn_and_figures_follow_the_formulas() -> None:
    rng = np.random.default_rng(5)
    vectors, outcomes, ids = library(rng, 60, ties=False)
    order = np.argsort(ids)
    params = {"k": 7, "window": 5, "similarity_threshold": 0.5, "confidence_threshold": 0.3}
    async with open_supervisor() as sup:
        ref = await sup.start_child(ChildSpec(lambda: PatternMatcher("a1", params), name="pm"))
        assert await ref.ask(PatternLibraryAdd(vectors, outcomes, ids)) == 60
        query = vectors[3] + rng.normal(0, 0.3, LENGTH)
        result = await ref.ask(PatternMatchTask(window=query, context={"asset": "A0"}))
    rows, dists = dtw_knn(query, vectors[order], k=7, window=5, znorm=True)
    assert [m.pattern_id for m in result.matches] == ids[order][rows].tolist()
    assert [m.distance for m in result.matches] == dists.tolist()
    assert [m.outcome for m in result.matches] == outcomes[order][rows].tolist()
    sims = np.array([1.0 / (1.0 + d / math.sqrt(LENGTH)) for d in dists])
    assert [m.similarity for m in result.matches] == pytest.approx(sims.tolist(), abs=0)
    assert result.matches[0].pattern_id == ids[3]
    assert result.similarity == sims[0]
    q = sims >= 0.5
    outs = outcomes[order][rows]
    assert result.expected_outcome == pytest.approx((sims[q] * outs[q]).sum() / sims[q].sum())
    assert result.confidence == pytest.approx(
        abs((sims[q] * np.sign(outs[q])).sum()) / sims.sum())
    assert result.market_context["asset"] == "A0"
    assert result.market_context["qualifying"] == int(q.sum())
    assert result.compute_time_ms >= 0.0


async def test_sharded_search_merged_equals_unsharded() -> None:
    for seed in range(40):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(5, 80))
        vectors, outcomes, ids = library(rng, n)
        k = int(rng.integers(1, 12))
        params = {"k": k, "window": int(rng.integers(4, 10)),
                  "similarity_threshold": float(rng.uniform(0.5, 0.7)),
                  "confidence_threshold": 0.3}
        whole = PatternMatcher("all", params)
        await whole.handle(PatternLibraryAdd(vectors, outcomes, ids))
        shards = [PatternMatcher(f"s{i}", params) for i in range(3)]
        owner = rng.integers(0, 3, n)
        for i, shard in enumerate(shards):
            pick = owner == i
            await shard.handle(PatternLibraryAdd(vectors[pick], outcomes[pick], ids[pick]))
        for _ in range(3):
            query = vectors[rng.integers(n)] + rng.normal(0, 0.5, LENGTH)
            task = PatternMatchTask(window=query)
            expected = await whole.handle(task)
            parts = [await shard.handle(task) for shard in shards]
            merged = merge_pattern_results(parts, k)
            same_result(merged, expected)
            # explicit parameters give the same answer as the reported ones
            same_result(merge_pattern_results(parts, k, params), expected)


async def test_merge_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one"):
        merge_pattern_results([], 3)
    m = PatternMatcher("a", {})
    part = await m.handle(PatternMatchTask(window=np.arange(5.0)))
    with pytest.raises(ValueError, match="k must be"):
        merge_pattern_results([part], 0)
    with pytest.raises(ValueError, match="unknown matcher parameter"):
        merge_pattern_results([part], 3, {"kk": 1})


async def test_repeated_add_is_idempotent_and_lengths_are_checked() -> None:
    rng = np.random.default_rng(1)
    vectors, outcomes, ids = library(rng, 10, ties=False)
    m = PatternMatcher("a", {})
    assert await m.handle(PatternLibraryAdd(vectors, outcomes, ids)) == 10
    assert await m.handle(PatternLibraryAdd(vectors, outcomes, ids)) == 10
    with pytest.raises(ValueError, match="length 8 differs"):
        await m.handle(PatternLibraryAdd(np.zeros((1, 8)), np.zeros(1), np.array([1])))
    with pytest.raises(ValueError, match="appears twice"):
        await m.handle(PatternLibraryAdd(vectors[:2], outcomes[:2], np.array([7, 7])))
    with pytest.raises(ValueError, match="2 vectors but 1 outcomes"):
        await m.handle(PatternLibraryAdd(vectors[:2], outcomes[:1], ids[:2]))
    with pytest.raises(ValueError, match="differs from the library"):
        await m.handle(PatternMatchTask(window=np.arange(5.0)))
    assert len(m) == 10


async def test_bad_task_fails_the_ask_with_a_clear_message() -> None:
    async with open_supervisor() as sup:
        ref = await sup.start_child(ChildSpec(lambda: PatternMatcher("a1", {}), name="pm"))
        with pytest.raises(ActorFailed) as info:
            await ref.ask(PatternMatchTask(window=np.array([1.0, np.nan])))
        assert info.value.exc_type == "ValueError"
        assert "finite" in info.value.message
        with pytest.raises(ActorFailed, match="outside"):
            await ref.ask(PatternMatchTask(window=np.arange(4.0), params={"k": 1000}))
        # restarted, still answering
        assert (await ref.ask("parameters"))["k"] == 10


def test_construction_checks_parameters() -> None:
    with pytest.raises(ValueError, match="similarity_threshold"):
        PatternMatcher("a", {"similarity_threshold": 2.0})
    with pytest.raises(ValueError, match="whole number"):
        PatternMatcher("a", {"k": 2.5})
    m = PatternMatcher("a", {"k": 3, "shard": 2})
    assert m.params["k"] == 3 and m.extra == {"shard": 2}


async def test_adaptation_is_clamped_and_stale_commands_are_ignored() -> None:
    def command(id: int, **changes: float) -> AdaptationCommand:
        return AdaptationCommand(
            id=id, agent_id="a1", reason="test", success_rate=0.4, outcomes=20, issued_at=0.0,
            changes=[ParameterChange(name, 0.0, value, "test") for name, value in changes.items()])

    async with open_supervisor() as sup:
        ref = await sup.start_child(ChildSpec(lambda: PatternMatcher("a1", {}), name="pm"))
        await ref.tell(command(3, similarity_threshold=5.0, k=0.2, window=6.6, bogus=1.0))
        params = await ref.ask("parameters")
        assert params["similarity_threshold"] == MATCHER_LIMITS["similarity_threshold"][1]
        assert params["k"] == 1 and params["window"] == 7
        await ref.tell(command(3, similarity_threshold=0.6))  # repeated
        await ref.tell(command(2, similarity_threshold=0.6))  # stale
        assert (await ref.ask("parameters"))["similarity_threshold"] == 0.99
        await ref.tell(command(4, confidence_threshold=-1.0))
        params = await ref.ask("parameters")
        assert params["confidence_threshold"] == MATCHER_LIMITS["confidence_threshold"][0]
        stats = await ref.ask("stats")
        assert stats == {"library_size": 0, "commands_applied": 2, "commands_ignored": 2}


async def test_adapted_parameters_change_the_answer() -> None:
    rng = np.random.default_rng(2)
    vectors, outcomes, ids = library(rng, 40, ties=False)
    m = PatternMatcher("a1", {"k": 5, "similarity_threshold": 0.5})
    await m.handle(PatternLibraryAdd(vectors, outcomes, ids))
    task = PatternMatchTask(window=vectors[0] + rng.normal(0, 0.4, LENGTH))
    before = await m.handle(task)
    await m.handle(AdaptationCommand(
        id=1, agent_id="a1", reason="", success_rate=0.3, outcomes=20, issued_at=0.0,
        changes=[ParameterChange("similarity_threshold", 0.5, 0.99, ""),
                 ParameterChange("k", 5.0, 2.0, "")]))
    after = await m.handle(task)
    assert len(before.matches) == 5 and len(after.matches) == 2
    assert after.market_context["qualifying"] <= 1  # only a near-identical shape passes 0.99
    assert similarity_of(0.0, LENGTH) == 1.0


async def test_many_small_adds_answer_like_one_big_add() -> None:
    # 700 patterns in adds of 37 go through several merges of the recent part
    # into the large one; the answers must not notice.
    rng = np.random.default_rng(9)
    vectors, outcomes, ids = library(rng, 700)
    params = {"k": 9, "window": 6, "similarity_threshold": 0.6, "confidence_threshold": 0.3}
    one = PatternMatcher("one", params)
    await one.handle(PatternLibraryAdd(vectors, outcomes, ids))
    chunked = PatternMatcher("chunked", params)
    shards = [PatternMatcher(f"s{i}", params) for i in range(3)]
    for start in range(0, 700, 37):
        part = slice(start, start + 37)
        assert await chunked.handle(PatternLibraryAdd(vectors[part], outcomes[part], ids[part])) \
            == min(start + 37, 700)
        shard = shards[(start // 37) % 3]
        await shard.handle(PatternLibraryAdd(vectors[part], outcomes[part], ids[part]))
        if start % 111 == 0:  # queries between adds: prepared parts get rebuilt
            query = vectors[rng.integers(700)] + rng.normal(0, 0.5, LENGTH)
            await chunked.handle(PatternMatchTask(window=query))
    for _ in range(10):
        task = PatternMatchTask(window=vectors[rng.integers(700)] + rng.normal(0, 0.5, LENGTH))
        expected = await one.handle(task)
        same_result(await chunked.handle(task), expected)
        same_result(merge_pattern_results([await s.handle(task) for s in shards], 9), expected)
    assert len(chunked) == 700
