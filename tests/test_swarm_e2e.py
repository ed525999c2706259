"""End to end: agents as subprocesses (``python -m midswarm agent``) talking QUIC
with mutual TLS to a coordinator on loopback.

Agent processes take a second or more to start, so each test starts one small
swarm and checks several things on it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from midswarm.actors import ChildSpec, open_supervisor
from midswarm.kernels import features, mlp
from midswarm.reasoning import THRESHOLD_STEP
from midswarm.swarm import (
    AgentHello,
    CoordinatorConfig,
    FeatureTask,
    ParameterServer,
    PatternLibraryAdd,
    PatternMatcher,
    PatternMatchTask,
    Refused,
    open_swarm,
)
from midswarm.transport import (
    PROTOCOL_VERSION,
    ClientTLS,
    MessageStream,
    connect_quic,
    decode,
    encode,
    make_dev_certs,
)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="signals and subprocesses")


def bars(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    high = np.maximum(open_, close) * 1.002
    low = np.minimum(open_, close) * 0.998
    return np.stack([open_, high, low, close, rng.uniform(1e3, 2e3, n)], axis=1)


def check_block(block: object, seed: int) -> None:
    want = features(bars(4000, seed))
    assert np.array_equal(block.values, want.values, equal_nan=True)  # type: ignore[attr-defined]


def _placement(coord: Any) -> dict[str, set[int]]:
    """Agent id -> the CPUs its process may run on (checked against spreading)."""
    if not hasattr(os, "sched_getaffinity"):
        return {}
    from midswarm.swarm._embed import _spread

    ids = sorted(coord.agents)
    threads = max(1, (os.cpu_count() or 1) // len(ids))
    expected = dict(zip(ids, map(set, _spread(len(ids), threads)), strict=True))
    got = {a: os.sched_getaffinity(coord.agents[a].pid) for a in ids}
    assert got == expected
    return got


async def test_tasks_complete_once_through_a_kill_and_late_duplicates_are_dropped() -> None:
    cfg = CoordinatorConfig(task_timeout=1.5, credit=1, heartbeat_timeout=15.0,
                            agent_wait=30.0)
    spread = "spread" if hasattr(os, "sched_getaffinity") else "any"
    async with open_swarm({"feature_engineer": 2}, spawn="process", config=cfg,
                          agent_cpus=spread) as swarm:
        coord = swarm.coordinator
        # Every task completes, each exactly once, with the right answer.
        seeds = list(range(30))
        results = await coord.gather(FeatureTask(ohlcv=bars(4000, s)) for s in seeds)
        for seed, block in zip(seeds, results, strict=True):
            check_block(block, seed)
        assert coord.stats.completed == 30
        if hasattr(os, "SCHED_BATCH"):  # spawned beside the coordinator: batch policy
            for info in coord.agents.values():
                assert info.pid is not None
                assert os.sched_getscheduler(info.pid) == os.SCHED_BATCH
        placement = _placement(coord)

        # SIGKILL an agent while it holds a task: the task fails over, and the
        # coordinator's supervisor starts a new process for that agent.
        victim = "feature_engineer-1"
        old_pid = coord.agents[victim].pid
        assert old_pid is not None
        killed = False
        seen: list[int] = []
        batch = list(range(100, 140))
        blocks = coord.map((FeatureTask(ohlcv=bars(4000, s)) for s in batch), ordered=True)
        async for index, block in _numbered(batch, blocks):
            check_block(block, index)
            seen.append(index)
            if not killed and coord.agents[victim].in_flight.get("feature_engineer"):
                os.kill(old_pid, signal.SIGKILL)
                killed = True
        assert killed
        assert sorted(seen) == list(range(100, 140))
        assert coord.stats.resent >= 1
        await coord.wait_for_agents([victim], timeout=60)
        info = coord.agents[victim]
        assert info.restarts == 1 and info.pid != old_pid and info.sessions == 2
        assert _placement(coord) == placement  # the new process got the same CPUs

        # Freeze one agent (SIGSTOP) holding a task: after task_timeout the task
        # is sent to the other agent too and answered; the frozen agent's own
        # answer, once it thaws, is dropped as a duplicate.
        await coord.wait_idle()  # no hedged attempt left holding a credit
        frozen = "feature_engineer-2"
        pid = coord.agents[frozen].pid
        assert pid is not None
        duplicates = coord.stats.duplicates
        os.kill(pid, signal.SIGSTOP)
        try:
            async with trio.open_nursery() as nursery:
                done: list[object] = []

                async def one(seed: int) -> None:
                    done.append(await coord.submit(FeatureTask(ohlcv=bars(4000, seed))))

                # credit=1: one task lands on each agent.
                nursery.start_soon(one, 7)
                nursery.start_soon(one, 8)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert len(done) == 2
        await coord.wait_idle()
        assert coord.stats.duplicates >= duplicates + 1
        assert coord.stats.completed == 30 + 40 + 2


async def _numbered(seeds: list[int], blocks: AsyncIterator[object]
                   ) -> AsyncIterator[tuple[int, object]]:
    numbers = iter(seeds)
    async for block in blocks:
        yield next(numbers), block


PARAMS = {"k": 8, "window": 4, "similarity_threshold": 0.6, "confidence_threshold": 0.3}


async def test_sharded_search_adaptation_and_refused_hellos(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    vectors = np.cumsum(rng.normal(size=(300, 20)), axis=1)
    outcomes = np.abs(rng.normal(size=300)) + 0.1  # every pattern was followed by a rise
    queries = vectors[:6] + rng.normal(0, 0.05, size=(6, 20))
    async with open_supervisor() as sup:
        ref = await sup.start_child(ChildSpec(lambda: PatternMatcher("ref", {}), name="ref"))
        await ref.ask(PatternLibraryAdd(vectors=vectors.astype(np.float32).astype(np.float64),
                                        outcomes=outcomes, ids=np.arange(300)))
        expected = [await ref.ask(PatternMatchTask(window=q, params=PARAMS)) for q in queries]

    cfg = CoordinatorConfig(task_timeout=20.0, heartbeat_timeout=15.0, agent_wait=30.0)
    async with open_swarm({"pattern_matcher": 2, "reasoning_bank": 1}, spawn="process",
                          config=cfg, certs=tmp_path / "certs") as swarm:
        coord = swarm.coordinator
        await swarm.add_patterns(vectors, outcomes)
        assert sorted(coord.shard_sizes().values()) == [150, 150]
        got = await coord.gather(PatternMatchTask(window=q, params=PARAMS) for q in queries)
        for a, b in zip(got, expected, strict=True):
            assert [(m.pattern_id, m.distance) for m in a.matches] == \
                [(m.pattern_id, m.distance) for m in b.matches]
            assert a.expected_outcome == b.expected_outcome and a.confidence == b.confidence

        # The market now falls after every match: the ReasoningBank sees a run
        # of misses and tells the matchers to tighten their thresholds.
        matchers = swarm.ids("pattern_matcher")
        before = {a: await coord.agent_parameters(a) for a in matchers}
        with trio.fail_after(120):
            i = 0
            while coord.stats.adaptations_acked < 1:
                result = await swarm.submit(PatternMatchTask(window=vectors[i % 300] + 0.01))
                assert result.expected_outcome > 0
                await swarm.report_outcome(result, -1.0)
                i += 1
        after = {a: await coord.agent_parameters(a) for a in matchers}
        adapted = [a for a in matchers if after[a] != before[a]]
        assert len(adapted) == coord.stats.adaptations_acked
        for agent_id in adapted:
            for name in ("similarity_threshold", "confidence_threshold"):
                assert after[agent_id][name] == pytest.approx(before[agent_id][name]
                                                              + THRESHOLD_STEP)

        # An impostor with a valid certificate for "spoof" claims another id,
        # and then speaks another protocol version: both are refused.
        certs = swarm.certs
        assert certs is not None
        make_dev_certs(certs, agents=["spoof"])
        tls = ClientTLS(os.path.join(certs, "ca.pem"), cert=os.path.join(certs, "spoof.pem"),
                        key=os.path.join(certs, "spoof.key"))
        for hello, reason in [
                (AgentHello(matchers[0], ["pattern_matcher"]), "does not match the identity"),
                (AgentHello("spoof", ["pattern_matcher"], version=PROTOCOL_VERSION + 998),
                 f"protocol version {PROTOCOL_VERSION + 998} is not supported")]:
            assert coord.port is not None
            async with connect_quic("127.0.0.1", coord.port, tls=tls) as conn:
                control = MessageStream(await conn.open_stream())
                await control.send_message(encode(hello))
                reply = decode(await control.receive_message())
            assert isinstance(reply, Refused) and reason in reply.reason
        # The real agents were not disturbed.
        assert all(coord.agents[a].state == "connected" and coord.agents[a].sessions == 1
                   for a in matchers)
        again = await swarm.submit(PatternMatchTask(window=queries[0], params=PARAMS))
        assert [m.pattern_id for m in again.matches] == \
            [m.pattern_id for m in expected[0].matches]
        assert "spoof" not in coord.agents


async def test_data_parallel_training_over_agent_processes_equals_single_process() -> None:
    layers = [5, 12, 1]
    rng = np.random.default_rng(11)
    data = []
    for _ in range(4):
        x = rng.normal(size=(64, layers[0]))
        data.append((x, np.tanh(x[:, :1] - x[:, 1:2])))
    params = mlp.init_params(layers, 3)
    state = mlp.adam_init(params)
    for x, y in data:
        _, grads = mlp.loss_and_grads(params, x, y)
        params, state = mlp.adam_step(params, grads, state, lr=0.01)

    async with open_swarm({"neural_trainer": 2}, spawn="process") as swarm:
        server = ParameterServer(swarm.coordinator.gather, layers, seed=3, lr=0.01, shards=4)
        for x, y in data:
            await server.step(x, y)
        doers = {a: i.completed for a, i in swarm.agents.items()}
    assert server.version == 4 and server.stale_rejected == 0
    for got, want in zip(server.params, params, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)
    assert all(n > 0 for n in doers.values()), doers
