"""Supervisor semantics: strategies, restart types, intensity, nesting, backoff,
ordered start and stop, and structured concurrency."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from midswarm.actors import (
    Actor,
    ActorFailed,
    ActorStopped,
    Backoff,
    ChildSpec,
    RestartIntensityExceeded,
    SupervisionEvent,
    SupervisorSpec,
    open_supervisor,
)
from midswarm.actors._rules import RestartHistory, plan_exit

NO_BACKOFF = Backoff(initial=0)


class Logged(Actor):
    """Logs its lifecycle as (event, name, instance) into a shared list."""

    def __init__(self, name: str, log: list[tuple[str, str, int]], counts: dict[str, int]
                 ) -> None:
        counts[name] = counts.get(name, 0) + 1
        self.name = name
        self.n = counts[name]
        self.log = log

    async def on_start(self) -> None:
        self.log.append(("start", self.name, self.n))

    async def on_stop(self) -> None:
        self.log.append(("stop", self.name, self.n))

    async def handle(self, msg: Any) -> Any:
        if msg == "crash":
            raise ValueError(f"{self.name} crashed")
        if msg == "finish":
            self.stop()
        if msg == "instance":
            return self.n
        return None


class Family:
    """Children built from Logged, sharing one log."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, int]] = []
        self.counts: dict[str, int] = {}
        self.events: list[SupervisionEvent] = []

    def spec(self, name: str, **kw: Any) -> ChildSpec:
        return ChildSpec(lambda: Logged(name, self.log, self.counts), name=name, **kw)

    def observe(self, event: SupervisionEvent) -> None:
        self.events.append(event)

    def take_log(self) -> list[tuple[str, str, int]]:
        out, self.log[:] = list(self.log), []
        return out


@pytest.mark.parametrize("strategy, expected", [
    ("one_for_one", [("stop", "b", 1), ("start", "b", 2)]),
    ("one_for_all", [("stop", "b", 1), ("stop", "c", 1), ("stop", "a", 1),
                     ("start", "a", 2), ("start", "b", 2), ("start", "c", 2)]),
    ("rest_for_one", [("stop", "b", 1), ("stop", "c", 1),
                      ("start", "b", 2), ("start", "c", 2)]),
])
async def test_strategy_restarts_the_right_children_in_order(strategy: Any,
                                                            expected: list[Any]) -> None:
    fam = Family()
    async with open_supervisor(strategy, backoff=NO_BACKOFF, observer=fam.observe) as sup:
        refs = [await sup.start_child(fam.spec(n)) for n in "abc"]
        assert fam.take_log() == [("start", "a", 1), ("start", "b", 1), ("start", "c", 1)]
        await refs[1].tell("crash")
        await trio.testing.wait_all_tasks_blocked()
        # The crashed child's on_stop comes first (it runs after the crash);
        # siblings stop last-started first, then all start in order.
        assert fam.take_log() == expected
        restarted = [e.child for e in fam.events if e.kind == "restarted"]
        assert restarted == [name for (what, name, _) in expected if what == "start"]
        for ref in refs:  # every ref reaches a live instance
            assert await ref.ask("instance") in (1, 2)
    assert fam.take_log()[-3:] == [("stop", "c", fam.counts["c"]), ("stop", "b", 2),
                                   ("stop", "a", fam.counts["a"])]


@pytest.mark.parametrize("restart, exit_msg, comes_back", [
    ("permanent", "crash", True),
    ("permanent", "finish", True),
    ("transient", "crash", True),
    ("transient", "finish", False),
    ("temporary", "crash", False),
    ("temporary", "finish", False),
])
async def test_restart_types(restart: str, exit_msg: str, comes_back: bool) -> None:
    fam = Family()
    async with open_supervisor(backoff=NO_BACKOFF) as sup:
        ref = await sup.start_child(fam.spec("x", restart=restart))
        await ref.tell(exit_msg)
        await trio.testing.wait_all_tasks_blocked()
        if comes_back:
            assert [(c.name, c.state, c.restarts) for c in sup.children()] == [
                ("x", "running", 1)]
            assert await ref.ask("instance") == 2
        else:
            assert sup.children() == []
            with pytest.raises(ActorStopped):
                await ref.ask("instance")


async def test_temporary_sibling_is_not_restarted_by_one_for_all() -> None:
    fam = Family()
    async with open_supervisor("one_for_all", backoff=NO_BACKOFF) as sup:
        await sup.start_child(fam.spec("a"))
        tmp = await sup.start_child(fam.spec("t", restart="temporary"))
        await sup.start_child(fam.spec("tr", restart="transient"))
        await sup.ref("a").tell("crash")
        await trio.testing.wait_all_tasks_blocked()
        assert [(c.name, c.restarts) for c in sup.children()] == [("a", 1), ("tr", 1)]
        with pytest.raises(ActorStopped):
            await tmp.tell("x")


async def test_intensity_exceeded_stops_children_in_reverse_and_escalates(
        autojump_clock: Any) -> None:
    fam = Family()
    with pytest.raises(RestartIntensityExceeded) as info:
        async with open_supervisor(max_restarts=2, within=5.0, backoff=NO_BACKOFF,
                                   name="top", observer=fam.observe) as sup:
            for n in "abc":
                await sup.start_child(fam.spec(n))
            fam.take_log()
            for _ in range(3):
                await sup.ref("b").tell("crash")
                await trio.testing.wait_all_tasks_blocked()
            await trio.sleep_forever()  # the escalation cancels the body
    exc = info.value
    assert (exc.supervisor, exc.child, exc.max_restarts, exc.within) == ("top", "b", 2, 5.0)
    assert isinstance(exc.last_failure, ActorFailed)
    assert exc.last_failure.message == "b crashed"
    assert fam.take_log() == [
        ("stop", "b", 1), ("start", "b", 2),
        ("stop", "b", 2), ("start", "b", 3),
        ("stop", "b", 3), ("stop", "c", 1), ("stop", "a", 1)]
    assert [e.kind for e in fam.events][-2:] == ["stopped", "escalated"]


async def test_restarts_spread_out_do_not_escalate(autojump_clock: Any) -> None:
    async with open_supervisor(max_restarts=2, within=5.0, backoff=NO_BACKOFF) as sup:
        ref = await sup.start_child(ChildSpec(lambda: Logged("x", [], {}), name="x"))
        for _ in range(10):
            await ref.tell("crash")
            await trio.sleep(2.6)  # at most two restarts in any 5 s window
        assert sup.children()[0].restarts == 10


async def test_zero_max_restarts_escalates_on_first_failure() -> None:
    with pytest.raises(RestartIntensityExceeded):
        async with open_supervisor(max_restarts=0, backoff=NO_BACKOFF) as sup:
            ref = await sup.start_child(ChildSpec(lambda: Logged("x", [], {}), name="x"))
            await ref.tell("crash")
            await trio.sleep_forever()


async def test_nested_escalation_is_handled_by_parent_strategy() -> None:
    fam = Family()
    inner = SupervisorSpec("inner", [fam.spec("y1"), fam.spec("y2")], max_restarts=0,
                           backoff=NO_BACKOFF)
    async with open_supervisor("rest_for_one", backoff=NO_BACKOFF,
                               observer=fam.observe) as sup:
        await sup.start_child(fam.spec("x"))
        nested = await sup.start_child(inner)
        await sup.start_child(fam.spec("z"))
        y2 = nested.ref("y2")
        fam.take_log()
        await y2.tell("crash")
        await trio.testing.wait_all_tasks_blocked()
        # inner gives up (stopping y1), the parent restarts inner and, being
        # rest_for_one, z after it; x is untouched.
        assert fam.take_log() == [
            ("stop", "y2", 1), ("stop", "y1", 1), ("stop", "z", 1),
            ("start", "y1", 2), ("start", "y2", 2), ("start", "z", 2)]
        kinds = [(e.kind, e.supervisor, e.child) for e in fam.events
                 if e.kind in ("escalated", "failed", "restarted")]
        assert kinds == [("failed", "inner", "y2"), ("escalated", "inner", "y2"),
                         ("failed", "supervisor", "inner"),
                         ("restarted", "supervisor", "inner"), ("restarted", "supervisor", "z")]
        failed_inner = [e for e in fam.events if e.kind == "failed" and e.child == "inner"][0]
        assert isinstance(failed_inner.exception, ActorFailed)
        assert failed_inner.exception.exc_type == "midswarm.actors.RestartIntensityExceeded"
        # A (re)started nested supervisor reports the children it starts.
        started = [e.child for e in fam.events if e.kind == "started" and e.supervisor == "inner"]
        assert started == ["y1", "y2", "y1", "y2"]
        # The ref taken before the restart reaches the new instance.
        assert await y2.ask("instance") == 2
        assert [c.restarts for c in sup.children()] == [0, 1, 1]


async def test_nested_escalation_climbs_to_the_top() -> None:
    fam = Family()
    inner = SupervisorSpec("inner", [fam.spec("y")], max_restarts=0, backoff=NO_BACKOFF)
    with pytest.raises(RestartIntensityExceeded) as info:
        async with open_supervisor(max_restarts=0, backoff=NO_BACKOFF, name="top") as sup:
            nested = await sup.start_child(inner)
            await nested.ref("y").tell("crash")
            await trio.sleep_forever()
    assert info.value.supervisor == "top" and info.value.child == "inner"
    assert info.value.last_failure is not None
    assert "inner" in info.value.last_failure.message


async def test_backoff_delays_grow_cap_and_reset(autojump_clock: Any) -> None:
    fam = Family()
    backoff = Backoff(initial=0.5, multiplier=2.0, maximum=3.0, jitter=0.0, reset_after=10.0)
    async with open_supervisor(max_restarts=100, within=1.0, backoff=backoff,
                               observer=fam.observe) as sup:
        ref = await sup.start_child(fam.spec("x"))
        crash_times = []
        for _ in range(5):
            crash_times.append(trio.current_time())
            await ref.tell("crash")
            await ref.ask("instance")  # waits out the backoff: queued for the new instance
        restarts = [e for e in fam.events if e.kind == "restarted"]
        assert [e.delay for e in restarts] == [0.5, 1.0, 2.0, 3.0, 3.0]
        waited = [r.time - t for r, t in zip(restarts, crash_times, strict=True)]
        assert waited == pytest.approx([0.5, 1.0, 2.0, 3.0, 3.0])
        # A quiet period of reset_after seconds resets the sequence.
        await trio.sleep(10.0)
        await ref.tell("crash")
        await ref.ask("instance")
        assert fam.events[-1].kind == "restarted" and fam.events[-1].delay == 0.5
        # ...a shorter one does not.
        await trio.sleep(9.0)
        await ref.tell("crash")
        await ref.ask("instance")
        assert fam.events[-1].delay == 1.0


async def test_backoff_jitter_stays_in_bounds(autojump_clock: Any) -> None:
    fam = Family()
    backoff = Backoff(initial=1.0, multiplier=2.0, maximum=100.0, jitter=0.25)
    async with open_supervisor(max_restarts=100, within=1.0, backoff=backoff,
                               observer=fam.observe) as sup:
        ref = await sup.start_child(fam.spec("x"))
        for _ in range(6):
            await ref.tell("crash")
            await ref.ask("instance")
    delays = [e.delay for e in fam.events if e.kind == "restarted"]
    for n, d in enumerate(delays):
        assert d is not None and 0.75 * 2 ** n <= d <= 1.25 * 2 ** n
    assert len(set(delays)) == len(delays)


def test_backoff_delay_function() -> None:
    b = Backoff(initial=0.1, multiplier=3.0, maximum=2.0, jitter=0.5)
    assert b.delay(1) == pytest.approx(0.1)
    assert b.delay(2) == pytest.approx(0.3)
    assert b.delay(1, 0.0) == pytest.approx(0.05)
    assert b.delay(1, 1.0) == pytest.approx(0.15)
    assert b.delay(10_000, 1.0) == 2.0  # capped, no overflow
    assert Backoff(initial=0).delay(7) == 0.0
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        b.delay(0)


def test_plan_table_examples() -> None:
    types = ["permanent", "temporary", "transient", "permanent"]
    running = [True, True, True, True]
    plan = plan_exit("rest_for_one", types, running, 1, "failure")
    assert not plan.restart and plan.remove == (1,)
    plan = plan_exit("rest_for_one", types, running, 2, "failure")
    assert plan.restart and plan.stop == (3,) and plan.start == (2, 3) and plan.remove == ()
    plan = plan_exit("one_for_all", types, [True, True, True, False], 0, "normal")
    assert plan.stop == (2, 1) and plan.remove == (1,) and plan.start == (0, 2, 3)
    assert not plan_exit("one_for_one", types, running, 2, "normal").restart


def test_restart_history_window_is_half_open() -> None:
    history = RestartHistory(max_restarts=2, within=5.0)
    history.record(0.0)
    history.record(1.0)
    assert history.exceeded_by_one_more(4.5)
    # A restart exactly `within` seconds old has left the window (now - within, now].
    assert not history.exceeded_by_one_more(5.0)
    history.record(5.0)
    assert len(history) == 2
    assert history.exceeded_by_one_more(5.5)
    assert RestartHistory(max_restarts=0, within=1.0).exceeded_by_one_more(0.0)


async def test_start_failure_during_restart_is_retried(autojump_clock: Any) -> None:
    attempts = 0

    class Flaky(Actor):
        async def on_start(self) -> None:
            nonlocal attempts
            attempts += 1
            if attempts in (2, 3):
                raise ConnectionError("not yet")

        async def handle(self, msg: Any) -> Any:
            if msg == "crash":
                raise ValueError("x")
            return attempts

    events: list[SupervisionEvent] = []
    backoff = Backoff(initial=1.0, jitter=0.0, multiplier=2.0)
    async with open_supervisor(max_restarts=5, within=60, backoff=backoff,
                               observer=events.append) as sup:
        ref = await sup.start_child(ChildSpec(Flaky, name="f"))
        await ref.tell("crash")
        assert await ref.ask("n") == 4
    assert [(e.kind, e.delay) for e in events if e.kind in ("failed", "restarted")] == [
        ("failed", None), ("failed", None), ("failed", None), ("restarted", 4.0)]
    assert [e.exception.exc_type for e in events  # type: ignore[union-attr]
            if e.kind == "failed"] == ["ValueError", "ConnectionError", "ConnectionError"]


async def test_stop_child_removes_it() -> None:
    fam = Family()
    async with open_supervisor() as sup:
        for n in "ab":
            await sup.start_child(fam.spec(n))
        ref = sup.ref("a")
        await sup.stop_child("a")
        assert [c.name for c in sup.children()] == ["b"]
        with pytest.raises(ActorStopped, match="stop_child"):
            await ref.tell("x")
        with pytest.raises(KeyError):
            await sup.stop_child("a")
    assert ("stop", "a", 1) in fam.log


async def test_broken_observer_does_not_break_supervision() -> None:
    def observer(event: SupervisionEvent) -> None:
        raise RuntimeError("observer bug")

    async with open_supervisor(backoff=NO_BACKOFF, observer=observer) as sup:
        ref = await sup.start_child(ChildSpec(lambda: Logged("x", [], {}), name="x"))
        await ref.tell("crash")
        assert await ref.ask("instance") == 1  # a fresh Logged counts from 1 again


def _all_tasks() -> set[trio.lowlevel.Task]:
    seen: set[trio.lowlevel.Task] = set()
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        if task is None or task in seen:
            continue
        seen.add(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return seen


async def test_no_task_outlives_the_supervisor(autojump_clock: Any) -> None:
    fam = Family()
    before = _all_tasks()
    inner = SupervisorSpec("inner", [fam.spec("y")])
    async with open_supervisor("one_for_all") as sup:
        for n in "ab":
            await sup.start_child(fam.spec(n))
        await sup.start_child(inner)
        nursery = sup._nursery
        assert nursery is not None and len(nursery.child_tasks) == 3
        assert len(_all_tasks()) > len(before) + 3
        await sup.ref("a").tell("crash")
        await trio.testing.wait_all_tasks_blocked()
        # A restart of all three is pending (backoff) while we leave.
        assert [c.state for c in sup.children()] == ["restarting"] * 3
    assert len(nursery.child_tasks) == 0
    assert _all_tasks() == before
    assert not sup.running


async def test_cancelling_the_scope_stops_everything_promptly(autojump_clock: Any) -> None:
    fam = Family()
    replies: list[Any] = []

    class Stuck(Logged):
        async def handle(self, msg: Any) -> Any:
            await trio.sleep_forever()

    async def asker(ref: Any) -> None:
        try:
            replies.append(await ref.ask("x"))
        except ActorStopped as exc:
            replies.append(exc)

    before = _all_tasks()
    start = trio.current_time()
    async with trio.open_nursery() as outside:
        with trio.move_on_after(1.0):
            async with open_supervisor() as sup:
                ref = await sup.start_child(
                    ChildSpec(lambda: Stuck("s", fam.log, fam.counts), name="s", shutdown=100))
                await sup.start_child(SupervisorSpec("inner", [fam.spec("y")]))
                outside.start_soon(asker, ref)
                await trio.sleep_forever()
    # Cancellation does not wait out the 100 s shutdown grace.
    assert trio.current_time() - start == pytest.approx(1.0)
    assert _all_tasks() == before
    assert len(replies) == 1 and isinstance(replies[0], ActorStopped)


async def test_body_exception_comes_out_unwrapped_and_stops_children() -> None:
    fam = Family()
    refs = []
    with pytest.raises(KeyError, match="from the body"):
        async with open_supervisor() as sup:
            refs.append(await sup.start_child(fam.spec("a")))
            raise KeyError("from the body")
    assert sup.children() == []
    with pytest.raises(ActorStopped, match="supervisor has shut down"):
        await refs[0].tell("x")


async def test_start_child_after_exit_is_refused() -> None:
    async with open_supervisor() as sup:
        pass
    with pytest.raises(ActorStopped, match="not running"):
        await sup.start_child(ChildSpec(lambda: Logged("x", [], {}), name="x"))
