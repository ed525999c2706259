"""Actors, mailboxes, tell/ask and what happens to messages when things go wrong."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing

from midswarm.actors import (
    Actor,
    ActorFailed,
    ActorStopped,
    AskTimeout,
    Backoff,
    ChildSpec,
    SupervisionEvent,
    open_supervisor,
)


class Counter(Actor):
    """Counts "incr"; answers "get"; "crash" raises; "finish" stops normally."""

    instances = 0

    def __init__(self) -> None:
        Counter.instances += 1
        self.instance = Counter.instances
        self.n = 0
        self.seen: list[Any] = []

    async def handle(self, msg: Any) -> Any:
        self.seen.append(msg)
        if msg == "crash":
            raise ValueError("boom")
        if msg == "finish":
            self.stop()
            return "bye"
        if msg == "get":
            return self.n
        if msg == "instance":
            return self.instance
        if msg == "seen":
            return list(self.seen)
        if isinstance(msg, tuple) and msg[0] == "sleep":
            await trio.sleep(msg[1])
            return "slept"
        self.n += 1
        return None


class Recorder:
    def __init__(self) -> None:
        self.events: list[SupervisionEvent] = []

    def __call__(self, event: SupervisionEvent) -> None:
        self.events.append(event)

    def kinds(self, *kinds: str) -> list[tuple[str, str]]:
        return [(e.kind, e.child) for e in self.events if not kinds or e.kind in kinds]


NO_BACKOFF = Backoff(initial=0)


async def test_tell_and_ask_in_order() -> None:
    async with open_supervisor() as sup:
        ref = await sup.start_child(ChildSpec(Counter, name="c"))
        for _ in range(10):
            await ref.tell("incr")
        assert await ref.ask("get") == 10
        await ref.tell("x")
        seen = await ref.ask("seen")
        assert seen == ["incr"] * 10 + ["get", "x", "seen"]


async def test_ask_timeout_is_clear_and_message_still_handled(autojump_clock: Any) -> None:
    async with open_supervisor() as sup:
        ref = await sup.start_child(ChildSpec(Counter, name="slow"))
        start = trio.current_time()
        with pytest.raises(AskTimeout) as info:
            await ref.ask(("sleep", 10), timeout=1.0)
        assert trio.current_time() - start == pytest.approx(1.0)
        assert info.value.actor == "slow" and info.value.timeout == 1.0
        assert "slow" in str(info.value) and "1 s" in str(info.value)
        assert isinstance(info.value, TimeoutError)
        # The timed-out message was not withdrawn: the actor still handles it.
        assert await ref.ask("seen") == [("sleep", 10), "seen"]


async def test_ask_timeout_while_waiting_for_mailbox_room(autojump_clock: Any) -> None:
    async with open_supervisor() as sup:
        ref = await sup.start_child(ChildSpec(Counter, name="c", mailbox_size=1))
        await ref.tell(("sleep", 5))
        await trio.testing.wait_all_tasks_blocked()
        await ref.tell("incr")  # fills the one slot
        with pytest.raises(AskTimeout):
            await ref.ask("get", timeout=1.0)
        # The ask never got into the mailbox, so it is not handled later.
        assert await ref.ask("seen") == [("sleep", 5), "incr", "seen"]


async def test_failure_during_ask_reaches_the_caller() -> None:
    events = Recorder()
    async with open_supervisor(backoff=NO_BACKOFF, observer=events) as sup:
        ref = await sup.start_child(ChildSpec(Counter, name="crashy"))
        await ref.tell("incr")
        with pytest.raises(ActorFailed) as info:
            await ref.ask("crash")
        failed = info.value
        assert failed.actor == "crashy"
        assert failed.exc_type == "ValueError"
        assert failed.message == "boom"
        assert 'raise ValueError("boom")' in failed.traceback
        assert str(failed) == "actor 'crashy' failed: ValueError: boom"
        # The restarted instance has fresh state and handles what comes next.
        assert await ref.ask("get") == 0
    assert events.kinds("failed", "restarted") == [("failed", "crashy"), ("restarted", "crashy")]
    assert isinstance(events.events[1].exception, ActorFailed)


async def test_tell_lost_in_crash_is_reported_and_queue_kept() -> None:
    events = Recorder()
    gate = trio.Event()

    class Gated(Counter):
        async def handle(self, msg: Any) -> Any:
            if msg == "crash":
                await gate.wait()
            return await super().handle(msg)

    async with open_supervisor(backoff=NO_BACKOFF, observer=events) as sup:
        ref = await sup.start_child(ChildSpec(Gated, name="g"))
        await ref.tell("crash")
        for _ in range(3):
            await ref.tell("incr")  # queued behind the crash
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
        # The queued messages survive the crash and reach the new instance.
        assert await ref.ask("get") == 3
    lost = [e for e in events.events if e.kind == "message_lost"]
    assert len(lost) == 1
    assert lost[0].message == "crash" and lost[0].child == "g"
    assert isinstance(lost[0].exception, ActorFailed) and lost[0].exception.message == "boom"


async def test_temporary_child_death_fails_queued_asks_and_reports_tells() -> None:
    events = Recorder()
    gate = trio.Event()
    results: list[Any] = []

    class Gated(Counter):
        async def handle(self, msg: Any) -> Any:
            if msg == "crash":
                await gate.wait()
            return await super().handle(msg)

    async def asker(ref: Any) -> None:
        try:
            results.append(await ref.ask("get"))
        except ActorStopped as exc:
            results.append(exc)

    async with open_supervisor(observer=events) as sup:
        ref = await sup.start_child(ChildSpec(Gated, name="t", restart="temporary"))
        async with trio.open_nursery() as nursery:
            await ref.tell("crash")
            await ref.tell("incr")
            nursery.start_soon(asker, ref)
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        assert len(results) == 1 and isinstance(results[0], ActorStopped)
        assert results[0].actor == "t"
        assert [c.name for c in sup.children()] == []
        with pytest.raises(ActorStopped):
            await ref.tell("incr")
        with pytest.raises(ActorStopped):
            await ref.ask("get")
    lost = [e.message for e in events.events if e.kind == "message_lost"]
    assert lost == ["crash", "incr"]


async def test_tell_waits_when_mailbox_is_full() -> None:
    gate = trio.Event()
    sent = 0

    class Blocked(Counter):
        async def handle(self, msg: Any) -> Any:
            await gate.wait()
            return await super().handle(msg)

    async def producer(ref: Any) -> None:
        nonlocal sent
        for _ in range(20):
            await ref.tell("incr")
            sent += 1

    async with open_supervisor() as sup:
        ref = await sup.start_child(ChildSpec(Blocked, name="b", mailbox_size=3))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer, ref)
            await trio.testing.wait_all_tasks_blocked()
            # One message is being handled, three wait in the mailbox; the
            # producer is stuck on the fifth.
            assert sent == 4
            gate.set()
        assert sent == 20
        assert await ref.ask("get") == 20


async def test_lifecycle_hooks() -> None:
    log: list[str] = []

    class Hooked(Counter):
        async def on_start(self) -> None:
            log.append(f"start{self.instance}")

        async def on_stop(self) -> None:
            log.append(f"stop{self.instance}")

    Counter.instances = 0
    async with open_supervisor(backoff=NO_BACKOFF) as sup:
        ref = await sup.start_child(ChildSpec(Hooked, name="h"))
        with pytest.raises(ActorFailed):
            await ref.ask("crash")
        assert await ref.ask("instance") == 2
    # on_stop runs after a crash too, and at shutdown.
    assert log == ["start1", "stop1", "start2", "stop2"]


async def test_on_start_failure_fails_start_child() -> None:
    class BadStart(Counter):
        async def on_start(self) -> None:
            raise RuntimeError("no database")

    async with open_supervisor() as sup:
        with pytest.raises(ActorFailed) as info:
            await sup.start_child(ChildSpec(BadStart, name="bad"))
        assert info.value.exc_type == "RuntimeError" and info.value.message == "no database"
        assert sup.children() == []
        # The name is free again.
        await sup.start_child(ChildSpec(Counter, name="bad"))


async def test_stop_ends_instance_normally_by_restart_type() -> None:
    events = Recorder()
    async with open_supervisor(backoff=NO_BACKOFF, observer=events) as sup:
        perm = await sup.start_child(ChildSpec(Counter, name="perm"))
        trans = await sup.start_child(ChildSpec(Counter, name="trans", restart="transient"))
        assert await perm.ask("finish") == "bye"
        assert await trans.ask("finish") == "bye"
        await trio.testing.wait_all_tasks_blocked()
        assert [(c.name, c.restarts) for c in sup.children()] == [("perm", 1)]
        with pytest.raises(ActorStopped):
            await trans.tell("incr")
    assert ("failed", "perm") not in events.kinds()


async def test_bad_arguments_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="restart must be one of"):
        ChildSpec(Counter, restart="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mailbox_size must be >= 0"):
        ChildSpec(Counter, mailbox_size=-1)
    with pytest.raises(TypeError, match="mailbox_size must be an int"):
        ChildSpec(Counter, mailbox_size=math.inf)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shutdown must be"):
        ChildSpec(Counter, shutdown=math.nan)
    with pytest.raises(TypeError, match="factory must be callable"):
        ChildSpec(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="strategy must be one of"):
        async with open_supervisor(strategy="all_for_one"):  # type: ignore[arg-type]
            pass
    with pytest.raises(ValueError, match="within must be > 0"):
        async with open_supervisor(within=0):
            pass
    with pytest.raises(ValueError, match="Backoff.jitter"):
        Backoff(jitter=2)
    async with open_supervisor() as sup:
        ref = await sup.start_child(ChildSpec(Counter, name="c"))
        with pytest.raises(ValueError, match="already has a child named 'c'"):
            await sup.start_child(ChildSpec(Counter, name="c"))
        with pytest.raises(ValueError, match="timeout must be >= 0"):
            await ref.ask("get", timeout=-1)
        with pytest.raises(ActorFailed, match="not an Actor"):
            await sup.start_child(ChildSpec(lambda: object(), name="x"))  # type: ignore
        with pytest.raises(KeyError, match="no child named 'nope'"):
            sup.ref("nope")
        # Nothing was lost along the way.
        assert await ref.ask("get") == 0
    assert ChildSpec(Counter).name == "Counter"


async def test_shutdown_grace_then_cancel(autojump_clock: Any) -> None:
    log: list[str] = []
    outcome: list[Any] = []

    class Slow(Counter):
        async def on_stop(self) -> None:
            log.append("on_stop")

    async def asker(ref: Any) -> None:
        try:
            outcome.append(await ref.ask(("sleep", 100)))
        except ActorStopped as exc:
            outcome.append(exc)

    start = trio.current_time()
    async with trio.open_nursery() as outside:
        async with open_supervisor() as sup:
            ref = await sup.start_child(ChildSpec(Slow, name="slow", shutdown=2.0))
            outside.start_soon(asker, ref)
            await trio.testing.wait_all_tasks_blocked()
    # Leaving the block gave the actor its 2 s grace, then cancelled it.
    assert trio.current_time() - start == pytest.approx(2.0)
    assert len(outcome) == 1 and isinstance(outcome[0], ActorStopped)
    assert "while handling" in str(outcome[0])
    assert log == []  # cancelled outright: no on_stop


async def test_shutdown_lets_current_message_finish(autojump_clock: Any) -> None:
    log: list[str] = []
    replies: list[Any] = []

    class Slow(Counter):
        async def on_stop(self) -> None:
            log.append("on_stop")

    async def asker(ref: Any, msg: Any) -> None:
        try:
            replies.append(await ref.ask(msg))
        except ActorStopped as exc:
            replies.append(type(exc).__name__)

    start = trio.current_time()
    async with trio.open_nursery() as outside:
        async with open_supervisor() as sup:
            ref = await sup.start_child(ChildSpec(Slow, name="slow", shutdown=5.0))
            outside.start_soon(asker, ref, ("sleep", 1))
            await trio.testing.wait_all_tasks_blocked()
            outside.start_soon(asker, ref, "get")  # queued: never handled
            await trio.testing.wait_all_tasks_blocked()
    assert trio.current_time() - start == pytest.approx(1.0)
    assert replies == ["slept", "ActorStopped"]
    assert log == ["on_stop"]
