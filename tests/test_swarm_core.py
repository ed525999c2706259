"""The swarm core over the in-memory transport: delivery, re-sends, dedup,
credits, hello validation, drain and reconnects.

The agents here host small test actors (as ``feature_engineer``) whose
behaviour each task controls through ``FeatureTask.params``: how long to take,
whether to fail, which event to wait for.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import numpy as np
import pytest
import trio

from midswarm.actors import Actor, ActorFailed
from midswarm.swarm import (
    AgentHello,
    CoordinatorConfig,
    FeatureBlock,
    FeatureTask,
    NoAgentAvailable,
    Refused,
    Swarm,
    TaskTimeout,
    Welcome,
    open_coordinator,
    open_swarm,
    run_agent,
)
from midswarm.swarm._agent_host import memory_connector
from midswarm.transport import MessageStream, decode, encode, memory_connection_pair

#: Events tests use to hold test actors mid-task, by name.
GATES: dict[str, trio.Event] = {}


class Probe(Actor):
    """Answers a FeatureTask with FeatureBlock(names=[agent_id], values=2 * ohlcv)."""

    def __init__(self, agent_id: str, parameters: dict[str, Any]) -> None:
        self.agent_id = agent_id

    async def handle(self, msg: Any) -> Any:
        if msg == "who":
            return self.agent_id
        assert isinstance(msg, FeatureTask)
        p = msg.params
        if p.get("sleep_on") in (None, self.agent_id) and p.get("sleep"):
            await trio.sleep(p["sleep"])
        if p.get("gate"):
            await GATES[p["gate"]].wait()
        if p.get("poison"):
            raise ValueError(f"cannot digest task {p.get('n')}")
        return FeatureBlock(names=[self.agent_id], values=np.asarray(msg.ohlcv) * 2)


def task(n: int, **params: Any) -> FeatureTask:
    return FeatureTask(ohlcv=np.full((1, 5), float(n)), params={"n": n, **params})


def config(**overrides: Any) -> CoordinatorConfig:
    base: dict[str, Any] = dict(task_timeout=5.0, heartbeat_interval=1.0, heartbeat_timeout=5.0,
                                agent_wait=3.0, credit=2, drain_timeout=5.0)
    base.update(overrides)
    return CoordinatorConfig(**base)


@asynccontextmanager
async def probes(count: int = 2, **cfg: Any) -> AsyncIterator[Swarm]:
    async with open_swarm({"feature_engineer": count}, config=config(**cfg),
                          factories={"feature_engineer": Probe}) as swarm:
        yield swarm


async def test_every_task_completes_exactly_once_across_agents() -> None:
    async with probes(3) as swarm:
        results = [r async for r in swarm.map(task(n) for n in range(60))]
        assert sorted(int(r.values[0, 0]) for r in results) == [2 * n for n in range(60)]
        doers = {r.names[0] for r in results}
        assert doers == {"feature_engineer-1", "feature_engineer-2", "feature_engineer-3"}
        ordered = [r async for r in swarm.map((task(n) for n in range(20)), ordered=True)]
        assert [int(r.values[0, 0]) for r in ordered] == [2 * n for n in range(20)]
        stats = swarm.stats
        assert stats.submitted == stats.completed == 80
        assert stats.resent == stats.duplicates == 0
        assert sum(a.completed for a in swarm.agents.values()) == 80


async def test_credit_bounds_tasks_in_flight_per_agent() -> None:
    GATES["credit"] = trio.Event()
    async with probes(2, credit=2) as swarm, trio.open_nursery() as nursery:
        done = []

        async def one(n: int) -> None:
            done.append(await swarm.submit(task(n, gate="credit")))

        for n in range(7):
            nursery.start_soon(one, n)
        await trio.testing.wait_all_tasks_blocked()
        in_flight = {a: info.in_flight["feature_engineer"] for a, info in swarm.agents.items()}
        assert in_flight == {"feature_engineer-1": 2, "feature_engineer-2": 2}
        assert not done
        GATES["credit"].set()
    assert len(done) == 7


async def test_a_submit_cancelled_as_it_takes_a_credit_gives_it_back() -> None:
    """A caller cancelled at the moment its task would take an agent's credit
    must not keep the credit: one lost credit per cancelled caller starves
    the agent and holds a drain for its whole timeout."""
    async with probes(1, credit=1) as swarm:
        for n in range(3):
            with trio.CancelScope() as scope:
                scope.cancel()
                await swarm.submit(task(n))
            assert swarm.agents["feature_engineer-1"].in_flight == {"feature_engineer": 0}
        with trio.fail_after(5):
            result = await swarm.submit(task(7))
        assert int(result.values[0, 0]) == 14


async def test_poison_task_fails_after_one_retry_and_the_swarm_keeps_working() -> None:
    async with probes(2) as swarm:
        with pytest.raises(ActorFailed) as info:
            await swarm.submit(task(7, poison=True))
        assert info.value.exc_type == "ValueError"
        assert "cannot digest task 7" in info.value.message
        # One attempt on each agent, not more.
        assert sum(a.failed for a in swarm.agents.values()) == 2
        assert swarm.stats.failed == 1 and swarm.stats.resent == 1
        results = [r async for r in swarm.map(task(n) for n in range(10))]
        assert len(results) == 10


async def test_map_can_yield_errors_in_place(autojump_clock: trio.abc.Clock) -> None:
    async with probes(2) as swarm:
        out = [r async for r in swarm.map(
            [task(0), task(1, poison=True), task(2)], ordered=True, return_exceptions=True)]
        assert isinstance(out[0], FeatureBlock) and isinstance(out[2], FeatureBlock)
        assert isinstance(out[1], ActorFailed)
        with pytest.raises(ActorFailed):
            async with aclosing(swarm.map([task(1, poison=True)])) as results:
                async for _ in results:
                    pass
        with pytest.raises(TypeError, match="task message"):
            await swarm.submit("not a task")


async def test_slow_agent_gets_hedged_and_its_late_result_is_a_duplicate(
        autojump_clock: trio.abc.Clock) -> None:
    async with probes(2, task_timeout=1.0, credit=1) as swarm:
        slow = "feature_engineer-1"
        # Both agents idle: the first task goes to the first agent, which sleeps.
        result = await swarm.submit(task(1, sleep=2.0, sleep_on=slow))
        assert result.names == ["feature_engineer-2"]
        assert swarm.stats.resent == 1
        assert swarm.stats.duplicates == 0
        await swarm.coordinator.wait_idle()
        assert swarm.stats.duplicates == 1
        assert swarm.stats.completed == 1


async def test_an_attempt_that_never_answers_frees_its_credit_at_its_limit(
        autojump_clock: trio.abc.Clock) -> None:
    # One agent, one credit: each attempt holds the only credit until its hard
    # limit (task_timeout * max_attempts = 2 s) settles it -- no task of its
    # own waits for the reply, the link's expiry task does it.
    async with probes(1, task_timeout=1.0, credit=1, max_attempts=2) as swarm:
        from midswarm.swarm import TaskUndeliverable

        start = trio.current_time()
        with pytest.raises(TaskUndeliverable, match="AskTimeout|no reply"):
            await swarm.submit(task(1, sleep=30.0))
        assert trio.current_time() - start == pytest.approx(4.0, abs=0.1)
        assert swarm.stats.undeliverable == 1
        # The credit is free again, while the agent still sleeps on both tasks.
        info = swarm.agents["feature_engineer-1"]
        assert info.in_flight["feature_engineer"] == 0
        await swarm.coordinator.wait_idle()  # no attempt is left in flight
        assert trio.current_time() - start == pytest.approx(4.0, abs=0.1)
        # The sleepers' replies come after their attempts were given up: dropped.
        await trio.sleep(70)
        assert (await swarm.submit(task(2))).names == ["feature_engineer-1"]
        stats = swarm.stats
        assert (stats.completed, stats.duplicates, stats.late) == (1, 0, 0)


async def test_a_task_that_cannot_be_sent_fails_alone() -> None:
    """A task the wire cannot carry (here an object msgpack cannot encode)
    fails its caller with the reason; no credit is lost, no session ends."""
    async with probes(2, credit=1) as swarm:
        for _ in range(3):  # more than the agents' credits: none may leak
            with pytest.raises(ActorFailed, match="could not be sent.*cannot encode"):
                await swarm.submit(task(1, bad=object()))
        with pytest.raises(ActorFailed, match="could not be sent"):
            await swarm.submit(task(1, bad=object()), agent="feature_engineer-2")
        assert all(info.in_flight["feature_engineer"] == 0
                   for info in swarm.agents.values())
        assert all(info.sessions == 1 and info.state == "connected"
                   for info in swarm.agents.values())
        result = await swarm.submit(task(2))
        assert int(result.values[0, 0]) == 4
        assert swarm.stats.failed == 4 and swarm.stats.completed == 1


async def test_task_is_rerouted_when_its_agent_disconnects() -> None:
    GATES["disconnect"] = trio.Event()
    async with probes(2, credit=1) as swarm, trio.open_nursery() as nursery:
        results: list[FeatureBlock] = []

        async def one() -> None:
            results.append(await swarm.submit(task(5, gate="disconnect")))

        nursery.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()
        (holder,) = [a for a, i in swarm.agents.items() if i.in_flight["feature_engineer"]]
        session = swarm.coordinator._records[holder].session
        assert session is not None
        session.conn.close(0, "test: connection lost")
        await trio.testing.wait_all_tasks_blocked()
        GATES["disconnect"].set()
    (result,) = results
    assert result.names[0] != holder
    assert swarm.stats.resent == 1


async def test_agent_reconnects_after_losing_its_connection() -> None:
    async with probes(1) as swarm:
        coord = swarm.coordinator
        session = coord._records["feature_engineer-1"].session
        assert session is not None
        session.conn.close(0, "test: connection lost")
        with trio.fail_after(10):
            while True:
                seen = coord.generation
                if coord.agents["feature_engineer-1"].sessions == 2:
                    break
                await coord.wait_for_change(seen)
        await coord.wait_for_agents(["feature_engineer-1"], timeout=10)
        assert (await swarm.submit(task(3))).names == ["feature_engineer-1"]


async def test_no_agent_of_the_type_raises_after_waiting(autojump_clock: trio.abc.Clock) -> None:
    async with probes(1, agent_wait=2.0) as swarm:
        from midswarm.swarm import CorrelationTask

        with pytest.raises(NoAgentAvailable, match="correlator"):
            await swarm.submit(CorrelationTask(strategies=np.zeros((2, 4))))
        with pytest.raises(TaskTimeout):
            await swarm.submit(task(1, sleep=30.0), timeout=1.0)


async def test_drain_finishes_tasks_in_flight_and_the_agent_stops() -> None:
    GATES["drain"] = trio.Event()
    async with open_coordinator(config=config()) as coord, trio.open_nursery() as nursery:
        stopped = trio.Event()

        async def agent() -> None:
            await run_agent(functools.partial(memory_connector, coord, "d1"), "d1",
                            ["feature_engineer"], factories={"feature_engineer": Probe})
            stopped.set()

        nursery.start_soon(agent)
        await coord.wait_for_agents(["d1"], timeout=5)
        results: list[Any] = []

        async def one() -> None:
            results.append(await coord.submit(task(4, gate="drain")))

        nursery.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(coord.drain_agent, "d1")
        await trio.testing.wait_all_tasks_blocked()
        assert coord.agents["d1"].state == "draining"
        GATES["drain"].set()
        await stopped.wait()
    assert len(results) == 1 and results[0].names == ["d1"]


# --- hello validation ---------------------------------------------------------------


async def raw_hello(coord: Any, identity: str | None, hello: Any) -> Any:
    client, server = memory_connection_pair(client_identity=identity)
    coord.attach(server)
    control = MessageStream(await client.open_stream())
    await control.send_message(hello if isinstance(hello, bytes) else encode(hello))
    reply = decode(await control.receive_message())
    client.close()
    return reply


async def test_bad_hellos_are_refused_with_a_reason() -> None:
    async with probes(1) as swarm:
        coord = swarm.coordinator
        reply = await raw_hello(coord, "x1", AgentHello("x1", ["feature_engineer"], version=999))
        assert isinstance(reply, Refused) and reply.retry_after is None
        assert "protocol version 999" in reply.reason
        reply = await raw_hello(coord, "a1", AgentHello("a2", ["feature_engineer"]))
        assert isinstance(reply, Refused)
        assert "'a2' does not match the identity 'a1'" in reply.reason
        reply = await raw_hello(coord, "x2", AgentHello("x2", ["juggler"]))
        assert isinstance(reply, Refused) and "unknown agent type" in reply.reason
        reply = await raw_hello(coord, "x3", b"\x93\x01\xa3bad\x80")
        assert isinstance(reply, Refused) and "AgentHello" in reply.reason
        live = "feature_engineer-1"
        reply = await raw_hello(coord, live, AgentHello(live, ["feature_engineer"]))
        assert isinstance(reply, Refused) and "already connected" in reply.reason
        assert reply.retry_after is not None
        # The real agent kept working through all of it.
        assert (await swarm.submit(task(9))).names == [live]
        assert swarm.agents[live].sessions == 1
        assert set(swarm.agents) == {live}


async def test_welcome_carries_assignments_and_parameters() -> None:
    async with open_coordinator(config=config(), parameters={
            "feature_engineer": {"window": 5, "path": "/x/{agent_id}.db"}}) as coord:
        reply = await raw_hello(coord, "w1", AgentHello("w1", ["feature_engineer"]))
        assert isinstance(reply, Welcome)
        assert reply.stream_assignments == {"feature_engineer": "w1/feature_engineer"}
        assert reply.parameters == {"feature_engineer": {"window": 5, "path": "/x/w1.db"}}


async def test_submit_after_close_and_bad_arguments() -> None:
    from midswarm.swarm import CoordinatorClosed
    from midswarm.swarm import open_swarm as swarm_of

    async with probes(1) as swarm:
        coord = swarm.coordinator
        with pytest.raises(LookupError):
            await coord.submit(task(1), agent="nobody")
        assert await coord.ask_agent("feature_engineer-1", "feature_engineer", "who") == \
            "feature_engineer-1"
        with pytest.raises(ValueError, match="concurrency"):
            async for _ in coord.map([], concurrency=0):
                pass
    with pytest.raises(CoordinatorClosed):
        await coord.submit(task(1))
    with pytest.raises(ValueError, match="unknown agent type"):
        async with swarm_of({"jugglers": 1}):
            pass


async def test_a_silent_connection_is_taken_over_by_a_new_hello(
        autojump_clock: trio.abc.Clock) -> None:
    async with open_coordinator(config=config(heartbeat_interval=1.0)) as coord:
        first, server = memory_connection_pair(client_identity="t1")
        coord.attach(server)
        control = MessageStream(await first.open_stream())
        await control.send_message(encode(AgentHello("t1", ["feature_engineer"])))
        assert isinstance(decode(await control.receive_message()), Welcome)
        # Heard from just now: a second hello is a live duplicate.
        reply = await raw_hello(coord, "t1", AgentHello("t1", ["feature_engineer"]))
        assert isinstance(reply, Refused) and reply.retry_after == 2.0
        await trio.sleep(2.5)  # the first connection says nothing more
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(
                run_agent, functools.partial(memory_connector, coord, "t1"), "t1",
                ["feature_engineer"], factories={"feature_engineer": Probe}))
            await coord.wait_for_agents(["t1"], timeout=10)
            assert first.closed
            assert coord.agents["t1"].sessions == 2
            assert (await coord.submit(task(2))).names == ["t1"]
            await coord.shutdown()


def test_spreading_agents_deals_out_cpus_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from midswarm.swarm._embed import _spread

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert _spread(2, 1) == [[0], [1]]
    assert _spread(3, 1) == [[0], [1], [0]]  # more agents than CPUs: round again
    assert _spread(1, 4) == [[0, 1]]  # no more threads' worth than there are CPUs
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 3, 5, 7, 8, 9, 10, 11},
                        raising=False)
    assert _spread(2, 4) == [[2, 3, 5, 7], [8, 9, 10, 11]]
