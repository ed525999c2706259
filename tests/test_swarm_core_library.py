"""The sharded pattern library and the learning loop, with the real pattern
matcher and ReasoningBank actors, over the in-memory transport."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from midswarm.actors import ActorFailed, ChildSpec, open_supervisor
from midswarm.reasoning import THRESHOLD_STEP
from midswarm.swarm import (
    CoordinatorConfig,
    PatternLibraryAdd,
    PatternMatcher,
    PatternMatchResult,
    PatternMatchTask,
    Swarm,
    open_swarm,
)

CFG = CoordinatorConfig(task_timeout=20.0, agent_wait=10.0, heartbeat_timeout=10.0)
PARAMS = {"k": 7, "window": 4, "similarity_threshold": 0.6, "confidence_threshold": 0.3}


def library(n: int, length: int = 24, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = np.cumsum(rng.normal(size=(n, length)), axis=1)
    outcomes = rng.normal(size=n)
    return vectors, outcomes


async def unsharded(vectors: np.ndarray, outcomes: np.ndarray,
                    queries: np.ndarray) -> list[PatternMatchResult]:
    """What one matcher holding the whole library answers (float32 patterns,
    as the coordinator's store keeps them)."""
    async with open_supervisor() as sup:
        ref = await sup.start_child(ChildSpec(lambda: PatternMatcher("ref", {}), name="ref"))
        await ref.ask(PatternLibraryAdd(vectors=vectors.astype(np.float32).astype(np.float64),
                                        outcomes=outcomes, ids=np.arange(len(vectors))))
        return [await ref.ask(PatternMatchTask(window=q, params=PARAMS)) for q in queries]


def same(a: PatternMatchResult, b: PatternMatchResult) -> None:
    assert [(m.pattern_id, m.distance, m.outcome) for m in a.matches] == \
        [(m.pattern_id, m.distance, m.outcome) for m in b.matches]
    assert a.expected_outcome == b.expected_outcome
    assert a.confidence == b.confidence
    assert a.similarity == b.similarity


async def answers(swarm: Swarm, queries: np.ndarray) -> list[PatternMatchResult]:
    return [r async for r in swarm.map(
        (PatternMatchTask(window=q, params=PARAMS) for q in queries), ordered=True)]


async def test_sharded_search_equals_unsharded_through_membership_changes(
        tmp_path: Path) -> None:
    vectors, outcomes = library(240)
    queries = library(6, seed=2)[0]
    expected = await unsharded(vectors, outcomes, queries)
    async with open_swarm({"pattern_matcher": 3}, config=CFG, store_dir=tmp_path) as swarm:
        coord = swarm.coordinator
        ids = await swarm.add_patterns(vectors[:100], outcomes[:100])
        ids += await swarm.add_patterns(vectors[100:], outcomes[100:])
        assert ids == list(range(240))
        sizes = coord.shard_sizes()
        assert sorted(sizes.values()) == [80, 80, 80]
        for got, want in zip(await answers(swarm, queries), expected, strict=True):
            same(got, want)
            assert got.market_context["library_size"] == 240

        # A matcher leaves: its patterns go to the other two.
        await coord.drain_agent("pattern_matcher-2")
        assert set(coord.shard_sizes()) == {"pattern_matcher-1/pattern_matcher",
                                            "pattern_matcher-3/pattern_matcher"}
        assert sum(coord.shard_sizes().values()) == 240
        for got, want in zip(await answers(swarm, queries), expected, strict=True):
            same(got, want)

        # A matcher crashes on a bad message and is restarted empty by its
        # agent: the coordinator hears of it and sends its shard again.
        with pytest.raises(ActorFailed):
            await coord.ask_agent("pattern_matcher-1", "pattern_matcher",
                                  PatternMatchTask(window=np.ones(5)))
        owned = coord.shard_sizes()["pattern_matcher-1/pattern_matcher"]
        with trio.fail_after(10):
            while True:
                seen = coord.generation
                stats = await coord.ask_agent("pattern_matcher-1", "pattern_matcher", "stats")
                if coord.agents["pattern_matcher-1"].actor_restarts == 1 and \
                        stats["library_size"] == owned:
                    break
                await coord.wait_for_change(seen)
        for got, want in zip(await answers(swarm, queries), expected, strict=True):
            same(got, want)

    # The library is durable: a new coordinator on the same directory serves it.
    async with open_swarm({"pattern_matcher": 2}, config=CFG, store_dir=tmp_path) as swarm:
        assert swarm.stats.patterns == 240
        for got, want in zip(await answers(swarm, queries), expected, strict=True):
            same(got, want)
        with pytest.raises(ValueError, match="length 24"):
            await swarm.add_patterns(np.ones((2, 5)), np.ones(2))


async def test_a_query_cancelled_as_it_takes_the_credits_gives_them_back() -> None:
    """The scatter takes a credit on every matcher at once; a caller cancelled
    right then must leave none of them taken."""
    vectors, outcomes = library(40)
    query = PatternMatchTask(window=library(1, seed=4)[0][0])
    async with open_swarm({"pattern_matcher": 2}, config=CFG) as swarm:
        await swarm.add_patterns(vectors, outcomes)
        for _ in range(3):
            with trio.CancelScope() as scope:
                scope.cancel()
                await swarm.submit(query)
            assert [info.in_flight for info in swarm.agents.values()] == \
                [{"pattern_matcher": 0}] * 2
        with trio.fail_after(10):
            assert (await swarm.submit(query)).matches  # the credits still serve


async def test_a_scattered_query_is_encoded_once_for_all_matchers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Three matchers, one encoding of the query per scatter; each still gets
    it whole (the merged answer equals the unsharded search's)."""
    from midswarm.actors import _wire

    encoded: list[PatternMatchTask] = []
    encode = _wire.encode

    def counting_encode(msg: Any) -> bytes:
        if isinstance(msg, PatternMatchTask):
            encoded.append(msg)
        return encode(msg)

    monkeypatch.setattr(_wire, "encode", counting_encode)
    vectors, outcomes = library(60)
    queries = library(3, seed=5)[0]
    expected = await unsharded(vectors, outcomes, queries)
    async with open_swarm({"pattern_matcher": 3}, config=CFG,
                          parameters={"pattern_matcher": PARAMS}) as swarm:
        await swarm.add_patterns(vectors, outcomes)
        assert len(swarm.coordinator.shard_sizes()) == 3
        encoded.clear()
        for query, want in zip(queries, expected, strict=True):
            same(await swarm.submit(PatternMatchTask(window=query, params=PARAMS)), want)
    assert len(encoded) == len(queries)


async def test_patterns_added_before_any_matcher_are_served_once_one_joins() -> None:
    vectors, outcomes = library(50)
    queries = library(2, seed=3)[0]
    expected = await unsharded(vectors, outcomes, queries)
    async with open_swarm({"pattern_matcher": 0}, config=CFG) as swarm:
        await swarm.add_patterns(vectors, outcomes)
        assert swarm.coordinator.shard_sizes() == {}
        import functools

        from midswarm.swarm import run_agent
        from midswarm.swarm._agent_host import memory_connector

        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(
                run_agent, functools.partial(memory_connector, swarm.coordinator, "late"),
                "late", ["pattern_matcher"]))
            await swarm.coordinator.wait_for_agents(["late"], timeout=10)
            assert swarm.coordinator.shard_sizes() == {"late/pattern_matcher": 50}
            for got, want in zip(await answers(swarm, queries), expected, strict=True):
                same(got, want)
            await swarm.coordinator.shutdown()


async def test_bad_outcomes_adapt_the_matcher_that_made_them() -> None:
    # Every stored pattern was followed by a rise; the market now falls.
    vectors, _ = library(40)
    rising = np.ones(40)
    async with open_swarm({"pattern_matcher": 1, "reasoning_bank": 1}, config=CFG) as swarm:
        coord = swarm.coordinator
        await swarm.add_patterns(vectors, rising)
        before = await coord.agent_parameters("pattern_matcher-1")
        verdicts: list[Any] = []
        for i in range(20):
            result = await swarm.submit(PatternMatchTask(window=vectors[i] + 0.01))
            assert result.expected_outcome > 0
            verdicts += await swarm.report_outcome(result, -1.0)
        assert len(verdicts) == 20
        assert all(v.should_adapt and v.score < 0.3 for v in verdicts)
        stats = coord.stats
        assert stats.experiences == stats.verdicts == 20
        assert stats.adaptations_issued == stats.adaptations_sent == stats.adaptations_acked == 1
        after = await coord.agent_parameters("pattern_matcher-1")
        for name in ("similarity_threshold", "confidence_threshold"):
            assert after[name] == pytest.approx(before[name] + THRESHOLD_STEP)
        # Kept for the next welcome, so a reconnect keeps the adapted values.
        assert coord.agents["pattern_matcher-1"].parameters["pattern_matcher"] == after
        with pytest.raises(KeyError):
            await swarm.report_outcome(result, -1.0)
        with pytest.raises(ValueError, match="finite"):
            await swarm.report_outcome(result, float("nan"))
