"""Property test: the supervisor against a small, independent model of it.

Hypothesis drives random sequences of tells, asks, crashes, normal exits and
time steps at a supervisor with three children (random strategy, restart types,
intensity and backoff).  After every step the runtime's observable state -- each
child's presence, state and restart count, what an ``ask`` answers, the
supervision events emitted, whether it escalated -- must equal the model's.

The model below is written from the rules as the issue states them and shares
no code with ``midswarm.actors._rules``: if the runtime or its decision table
is wrong, the two disagree.

Why a thread: hypothesis' state machines are synchronous, and the supervisor
must keep running between steps.  Trio runs in a helper thread with a
``MockClock`` that never advances by itself (``autojump`` would move time while
the test thread is deciding the next step); each step is sent over with
``trio.from_thread.run`` and ends with ``wait_all_tasks_blocked``, so the
runtime has fully reacted before we look.
"""

from __future__ import annotations

import threading
from typing import Any

import attrs
import hypothesis.strategies as st
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from midswarm.actors import (
    Actor,
    ActorStopped,
    Backoff,
    ChildSpec,
    RestartIntensityExceeded,
    SupervisionEvent,
    open_supervisor,
)

NAMES = ("a", "b", "c")


# ----------------------------------------------------------------------- model

@attrs.define(eq=False)
class KidModel:
    name: str
    restart: str
    running: bool = True
    count: int = 0  # "incr" handled by the current instance
    queued: int = 0  # "incr" waiting while the child waits for its restart
    restarts: int = 0
    attempts: int = 0
    started_at: float = 0.0
    group: Group | None = None


@attrs.define(eq=False)
class Group:
    due: float
    delay: float


@attrs.define
class SupervisorModel:
    strategy: str
    max_restarts: int
    within: float
    initial: float
    maximum: float
    reset_after: float
    kids: list[KidModel]
    now: float = 0.0
    history: list[float] = attrs.Factory(list)
    groups: list[Group] = attrs.Factory(list)
    escalated: bool = False
    events: list[tuple[str, str]] = attrs.Factory(list)

    def kid(self, name: str) -> KidModel | None:
        return next((k for k in self.kids if k.name == name), None)

    def crash(self, kid: KidModel) -> None:
        self.events += [("failed", kid.name), ("message_lost", kid.name)]
        self._exit(kid, failed=True)

    def finish(self, kid: KidModel) -> None:
        self.events.append(("stopped", kid.name))
        self._exit(kid, failed=False)

    def advance(self, dt: float) -> None:
        self.now += dt
        self._start_due()

    def _exit(self, kid: KidModel, failed: bool) -> None:
        kid.running = False
        comes_back = (kid.restart == "permanent"
                      or (kid.restart == "transient" and failed))
        if not comes_back:
            self.kids.remove(kid)
            return
        recent = [t for t in self.history if t > self.now - self.within]
        if len(recent) + 1 > self.max_restarts:
            self._escalate(kid)
            return
        self.history = recent + [self.now]
        if self.now - kid.started_at >= self.reset_after:
            kid.attempts = 0
        kid.attempts += 1
        delay = min(self.maximum, self.initial * 2 ** (kid.attempts - 1))
        i = self.kids.index(kid)
        scope = {"one_for_one": [kid], "one_for_all": list(self.kids),
                 "rest_for_one": self.kids[i:]}[self.strategy]
        for sib in reversed(scope):
            if sib is not kid and sib.running:
                self.events.append(("stopped", sib.name))
                sib.running = False
        group = Group(self.now + delay, delay)
        for sib in scope:
            if sib is not kid and sib.restart == "temporary":
                self.kids.remove(sib)
            else:
                sib.group = group
        self.groups.append(group)
        self._start_due()

    def _escalate(self, kid: KidModel) -> None:
        for k in reversed(self.kids):
            if k.running:
                self.events.append(("stopped", k.name))
        self.events.append(("escalated", kid.name))
        for k in self.kids:  # their mailboxes close with messages still queued
            self.events += [("message_lost", k.name)] * k.queued
        self.kids = []
        self.escalated = True

    def _start_due(self) -> None:
        due = sorted((g for g in self.groups if g.due <= self.now), key=lambda g: g.due)
        self.groups = [g for g in self.groups if g.due > self.now]
        for group in due:
            for k in self.kids:
                if k.group is group:
                    k.group = None
                    k.running = True
                    k.restarts += 1
                    k.count, k.queued = k.queued, 0
                    k.started_at = self.now
                    self.events.append(("restarted", k.name))


# --------------------------------------------------------------------- runtime

class Worker(Actor):
    def __init__(self) -> None:
        self.count = 0

    async def handle(self, msg: Any) -> Any:
        if msg == "incr":
            self.count += 1
        elif msg == "get":
            return self.count
        elif msg == "crash":
            raise RuntimeError("crash requested")
        elif msg == "finish":
            self.stop()
        return None


class TrioThread:
    """A Trio run in a helper thread, with a clock that only moves when told."""

    def __init__(self) -> None:
        self.clock = trio.testing.MockClock()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        async def main() -> None:
            self.token = trio.lowlevel.current_trio_token()
            self.finished = trio.Event()
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                self._ready.set()
                await self.finished.wait()
                nursery.cancel_scope.cancel()

        try:
            trio.run(main, clock=self.clock)
        except BaseException as exc:  # surfaced by close()
            self._error = exc
            self._ready.set()

    def run(self, afn: Any, *args: Any) -> Any:
        async def settled() -> Any:
            result = await afn(*args)
            await trio.testing.wait_all_tasks_blocked()
            return result
        return trio.from_thread.run(settled, trio_token=self.token)

    def close(self) -> None:
        trio.from_thread.run_sync(self.finished.set, trio_token=self.token)
        self._thread.join(10)
        if self._error is not None:
            raise self._error


class SupervisorMachine(RuleBasedStateMachine):
    @initialize(
        strategy=st.sampled_from(["one_for_one", "one_for_all", "rest_for_one"]),
        restarts=st.lists(st.sampled_from(["permanent", "transient", "temporary"]),
                          min_size=3, max_size=3),
        max_restarts=st.integers(0, 4),
        within=st.sampled_from([1.0, 2.0, 4.0]),
        initial=st.sampled_from([0.0, 0.25, 0.5]),
        maximum=st.sampled_from([1.0, 2.0]),
        reset_after=st.sampled_from([1.0, 3.0]),
    )
    def setup(self, strategy: Any, restarts: list[Any], max_restarts: int, within: float,
              initial: float, maximum: float, reset_after: float) -> None:
        self.model = SupervisorModel(
            strategy, max_restarts, within, initial, maximum, reset_after,
            [KidModel(n, r) for n, r in zip(NAMES, restarts, strict=True)])
        self.events: list[SupervisionEvent] = []
        self.escalation: RestartIntensityExceeded | None = None
        self.trio = TrioThread()
        backoff = Backoff(initial=initial, multiplier=2.0, maximum=maximum, jitter=0.0,
                          reset_after=reset_after)
        self.stop = self.trio.run(self._make_event)

        async def supervise(task_status: trio.TaskStatus[Any]) -> None:
            try:
                async with open_supervisor(strategy, max_restarts, within, backoff,
                                           observer=self.events.append) as sup:
                    for name, restart in zip(NAMES, restarts, strict=True):
                        await sup.start_child(ChildSpec(Worker, name=name, restart=restart,
                                                        mailbox_size=1000))
                    task_status.started(sup)
                    await self.stop.wait()
            except RestartIntensityExceeded as exc:
                self.escalation = exc

        self.sup = self.trio.run(self.trio.nursery.start, supervise)
        self.refs = {n: self.sup.ref(n) for n in NAMES}
        self.events.clear()  # the three "started"

    async def _make_event(self) -> trio.Event:
        return trio.Event()

    def teardown(self) -> None:
        if hasattr(self, "trio"):
            trio.from_thread.run_sync(self.stop.set, trio_token=self.trio.token)
            self.trio.close()

    # ------------------------------------------------------------------ steps

    def _tell(self, name: str, msg: str) -> bool:
        """Tell; return False if the runtime said the actor is gone."""
        async def tell() -> bool:
            try:
                await self.refs[name].tell(msg)
            except ActorStopped:
                return False
            return True
        return bool(self.trio.run(tell))

    def _running(self, name: str) -> bool:
        kid = self.model.kid(name)
        return kid is not None and kid.running

    @rule(name=st.sampled_from(NAMES))
    def incr(self, name: str) -> None:
        delivered = self._tell(name, "incr")
        kid = self.model.kid(name)
        assert delivered == (kid is not None)
        if kid is not None:
            if kid.running:
                kid.count += 1
            else:
                kid.queued += 1

    @rule(name=st.sampled_from(NAMES))
    def get(self, name: str) -> None:
        # Only ask actors the model says are running: an ask to a child waiting
        # out its backoff would (rightly) wait, and steps must not block.
        kid = self.model.kid(name)
        if kid is None or kid.running:
            async def ask() -> Any:
                try:
                    return await self.refs[name].ask("get", timeout=1.0)
                except ActorStopped:
                    return "stopped"
            answer = self.trio.run(ask)
            assert answer == ("stopped" if kid is None else kid.count)

    @precondition(lambda self: not self.model.escalated)
    @rule(name=st.sampled_from(NAMES))
    def crash(self, name: str) -> None:
        kid = self.model.kid(name)
        if kid is not None and kid.running:
            assert self._tell(name, "crash")
            self.model.crash(kid)

    @precondition(lambda self: not self.model.escalated)
    @rule(name=st.sampled_from(NAMES))
    def finish(self, name: str) -> None:
        kid = self.model.kid(name)
        if kid is not None and kid.running:
            assert self._tell(name, "finish")
            self.model.finish(kid)

    @rule(dt=st.sampled_from([0.125, 0.25, 0.5, 1.0, 2.0, 4.0]))
    def advance(self, dt: float) -> None:
        async def jump() -> None:
            self.trio.clock.jump(dt)
        self.trio.run(jump)
        self.model.advance(dt)

    # -------------------------------------------------------------- checking

    @invariant()
    def runtime_matches_model(self) -> None:
        if not hasattr(self, "model"):
            return
        got_events = [(e.kind, e.child) for e in self.events]
        self.events.clear()
        expected_events, self.model.events = self.model.events, []
        assert got_events == expected_events
        assert (self.escalation is not None) == self.model.escalated
        got = [(c.name, c.state, c.restarts) for c in self.sup.children()]
        want = [(k.name, "running" if k.running else "restarting", k.restarts)
                for k in self.model.kids]
        assert got == want


SupervisorMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_supervisor_matches_model = SupervisorMachine.TestCase
