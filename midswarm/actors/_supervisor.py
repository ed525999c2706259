"""OTP-style supervisors for Trio actors.

Theory of operation
-------------------
A supervisor run is one task (``_serve``) holding a nursery in which every child
instance runs, wrapped by ``_child_main``.  The wrapper never lets an exception
escape into the nursery: it boxes it as :class:`ActorFailed`, emits the
``"failed"`` (or ``"stopped"``) event, settles the message in flight, and posts
an exit report to the supervisor's event channel.  Only cancellation passes
through, so cancelling the supervisor stops everything at once and nothing
outlives it.

``_serve``'s control loop is the only place decisions are made: it reads exit
reports and, when the earliest pending restart group falls due, wakes up to
start it (no timer tasks, no polling).  It asks :func:`plan_exit` what an exit
means and does it; the rules are documented there.  Structural changes
(starting and stopping children) take ``_lock``, so ``start_child`` and
``stop_child`` from other tasks never interleave with a restart.

Exit reports the supervisor caused itself are recognised and ignored: stopping
an instance sets ``stop_requested`` on it first, and a report about an instance
that is no longer the child's current one is stale.

A nested supervisor is a child whose instance is a run of its own ``_serve``.
When it gives up, its run returns the :class:`RestartIntensityExceeded`, the
wrapper raises it, and the parent sees an ordinary child failure.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, overload

import trio

from .._util import open_service_nursery
from ._actor import ActorRef
from ._child import (
    _EMPTY,
    Child,
    Instance,
    Started,
    on_stop_after_crash,
    run_actor,
    settle_unhandled,
)
from ._errors import ActorError, ActorFailed, ActorStopped, RestartIntensityExceeded
from ._rules import ExitKind, RestartHistory, plan_exit
from ._spec import (
    Backoff,
    ChildSpec,
    ChildStatus,
    EventKind,
    Observer,
    Strategy,
    SupervisionEvent,
    SupervisorSpec,
)

__all__ = ["Supervisor", "open_supervisor"]

logger = logging.getLogger("midswarm.actors")

_STOP = object()


class _Exit:
    __slots__ = ("child", "inst", "kind", "failure")

    def __init__(self, child: Child, inst: Instance, kind: str,
                 failure: ActorFailed | None) -> None:
        self.child = child
        self.inst = inst
        self.kind = kind
        self.failure = failure


class _Group:
    """Children that start again together once ``due`` is reached."""

    __slots__ = ("due", "delay")

    def __init__(self, due: float, delay: float) -> None:
        self.due = due
        self.delay = delay


class Supervisor:
    """Starts, watches and restarts child actors (and nested supervisors).

    Get one from :func:`open_supervisor`, or as the return value of
    :meth:`start_child` with a :class:`SupervisorSpec`.
    """

    def __init__(self, spec: SupervisorSpec, observer: Observer | None) -> None:
        self.name = spec.name
        self.strategy: Strategy = spec.strategy
        self.max_restarts = spec.max_restarts
        self.within = spec.within
        self.backoff: Backoff | None = spec.backoff
        self._observer = spec.observer if spec.observer is not None else observer
        self._children: list[Child] = [self._make_child(s) for s in spec.children]
        self._lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._events_send: trio.MemorySendChannel[Any] | None = None
        self._running = False
        self._stopping = False
        self._escalation: RestartIntensityExceeded | None = None
        self._history = RestartHistory(self.max_restarts, self.within)
        self._groups: list[_Group] = []

    # ----------------------------------------------------------------- public

    @overload
    async def start_child(self, spec: ChildSpec) -> ActorRef: ...

    @overload
    async def start_child(self, spec: SupervisorSpec) -> Supervisor: ...

    async def start_child(self, spec: ChildSpec | SupervisorSpec) -> ActorRef | Supervisor:
        """Start a child after the existing ones and return its ref.

        Returns once the child's ``on_start`` has completed (for a nested
        supervisor: once all its children have started), with an
        :class:`ActorRef` (or, for a :class:`SupervisorSpec`, the nested
        :class:`Supervisor`).  Raises :class:`ActorFailed` if it fails to start
        (it is not added), :class:`ValueError` if the name is taken, and
        :class:`ActorStopped` if this supervisor is not running.
        """
        if not isinstance(spec, (ChildSpec, SupervisorSpec)):
            raise TypeError(f"start_child() takes a ChildSpec or SupervisorSpec; got {spec!r}")
        async with self._lock:
            self._check_running()
            if any(c.name == spec.name for c in self._children):
                raise ValueError(f"supervisor {self.name!r} already has a child named "
                                 f"{spec.name!r}")
            child = self._make_child(spec)
            failure = await self._start_instance(child)
            if failure is not None:
                child.close("it failed to start", self._emit_lost)
                raise failure.copy()
            self._children.append(child)
            self._emit("started", child)
        return child.ref if child.ref is not None else self._nested(child)

    async def stop_child(self, name: str) -> None:
        """Stop the child called ``name`` (within its ``shutdown`` grace) and remove it.

        Its mailbox closes: queued asks get :class:`ActorStopped`, queued tells
        are reported as lost.  Raises :class:`KeyError` for an unknown name.
        """
        async with self._lock:
            child = self._find(name)
            child.pending = None
            await self._stop_instance(child)
            self._remove(child, "it was stopped by stop_child()")

    def ref(self, name: str) -> ActorRef:
        """The ref of the actor child called ``name``."""
        child = self._find(name)
        if child.ref is None:
            raise TypeError(f"child {name!r} of {self.name!r} is a supervisor; use supervisor()")
        return child.ref

    def supervisor(self, name: str) -> Supervisor:
        """The nested supervisor child called ``name``."""
        child = self._find(name)
        if child.ref is not None:
            raise TypeError(f"child {name!r} of {self.name!r} is an actor; use ref()")
        return self._nested(child)

    def children(self) -> list[ChildStatus]:
        """The current children in start order (removed children are gone)."""
        return [ChildStatus(c.name, c.kind,
                            "running" if c.instance is not None else "restarting", c.restarts)
                for c in self._children]

    @property
    def running(self) -> bool:
        """Whether this supervisor is up and accepting ``start_child``."""
        return self._running

    def __repr__(self) -> str:
        return f"<Supervisor {self.name!r} {self.strategy} children={len(self._children)}>"

    # ------------------------------------------------------------ internals

    def _make_child(self, spec: ChildSpec | SupervisorSpec) -> Child:
        if isinstance(spec, SupervisorSpec):
            return Child(spec, Supervisor(spec, self._observer))
        return Child(spec, None)

    @staticmethod
    def _nested(child: Child) -> Supervisor:
        assert child.supervisor is not None
        return child.supervisor

    def _find(self, name: str) -> Child:
        for child in self._children:
            if child.name == name:
                return child
        raise KeyError(f"supervisor {self.name!r} has no child named {name!r}")

    def _check_running(self) -> None:
        if not self._running or self._stopping:
            raise ActorStopped(self.name, "the supervisor is not running")

    def _emit(self, kind: EventKind, child: Child, exception: ActorError | None = None,
              delay: float | None = None, message: Any = None) -> None:
        if self._observer is None:
            return
        event = SupervisionEvent(kind, child.name, self.name, exception, child.restarts, delay,
                                 trio.current_time(), message)
        try:
            self._observer(event)
        except Exception:  # a broken observer must not break supervision
            logger.exception("supervision observer raised on %r", event)

    def _emit_lost(self, child: Child, message: Any, error: ActorError) -> None:
        self._emit("message_lost", child, error, message=message)

    def _remove(self, child: Child, reason: str) -> None:
        if child in self._children:
            self._children.remove(child)
        child.close(reason, self._emit_lost)

    def _close_all(self, reason: str) -> None:
        """Close every mailbox in this subtree (the tree is shutting down for good)."""
        for child in list(self._children):
            self._remove(child, reason)

    def _request_stop(self) -> None:
        self._stopping = True
        if self._events_send is not None:
            self._events_send.send_nowait(_STOP)

    # ------------------------------------------------------- instance running

    async def _start_instance(self, child: Child) -> ActorFailed | None:
        """Start a new instance of ``child``; wait for its startup to finish.

        Returns the boxed failure if it failed to start.
        """
        assert self._nursery is not None
        inst = Instance()
        child.instance = inst
        failure: ActorFailed | None = await self._nursery.start(self._child_main, child, inst)
        if failure is not None:
            child.instance = None
        return failure

    async def _child_main(self, child: Child, inst: Instance,
                          task_status: trio.TaskStatus[ActorFailed | None]) -> None:
        started = Started(task_status)
        failure: ActorFailed | None = None
        kind = "normal"
        try:
            with inst.scope:
                if child.ref is not None:
                    await run_actor(child, inst, started)
                else:
                    await self._run_nested(child, inst, started)
            if inst.scope.cancelled_caught or inst.stop_requested:
                kind = "shutdown"
        except Exception as exc:
            failure = ActorFailed.from_exception(child.name, exc)
            kind = "failure"
            self._emit("failed", child, failure)
            extra = await on_stop_after_crash(child, inst)
            if extra is not None:
                logger.warning("on_stop of crashed actor %r raised %r", child.name, extra)
        finally:
            if failure is None:
                self._emit("stopped", child)
            if inst.current is not _EMPTY:
                error: ActorError = (failure if failure is not None else
                                     ActorStopped(child.name, "it was stopped while handling "
                                                  "this message"))
                settle_unhandled(child, inst.current, error, self._emit_lost)
                inst.current = _EMPTY
            inst.done.set()
        if not started.done:
            task_status.started(failure)
        elif self._events_send is not None:
            self._events_send.send_nowait(_Exit(child, inst, kind, failure))

    async def _run_nested(self, child: Child, inst: Instance, started: Started) -> None:
        result = await self._nested(child)._serve(started)
        if result is not None:
            raise result

    async def _stop_instance(self, child: Child) -> None:
        """Stop ``child``'s instance gracefully and wait until it has ended."""
        inst = child.instance
        if inst is None:
            return
        inst.stop_requested = True
        inst.scope.deadline = min(inst.scope.deadline, trio.current_time() + child.shutdown)
        if child.ref is None:
            self._nested(child)._request_stop()
        elif inst.idle:
            inst.loop_scope.cancel()
        await inst.done.wait()
        child.instance = None

    async def _stop_all(self) -> None:
        for child in reversed(list(self._children)):
            child.pending = None
            await self._stop_instance(child)
        self._groups.clear()

    # ---------------------------------------------------------- the run

    async def _serve(self, started: Started) -> RestartIntensityExceeded | None:
        """One run: start the children in order, supervise, stop them in reverse.

        Returns ``None`` after a requested stop and the escalation when restart
        intensity was exceeded.  Raises the start failure of a child if one
        failed to start (after stopping the ones already started).
        """
        send, receive = trio.open_memory_channel[Any](math.inf)  # at most one report per exit
        self._events_send = send
        self._stopping = False
        self._escalation = None
        self._history = RestartHistory(self.max_restarts, self.within)
        self._groups = []
        start_failure: ActorFailed | None = None
        result: RestartIntensityExceeded | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                async with self._lock:
                    for child in list(self._children):
                        child.pending = None
                        start_failure = await self._start_instance(child)
                        if start_failure is not None:
                            await self._stop_all()
                            break
                        self._emit("started", child)
                if start_failure is None:
                    self._running = True
                    started.started()
                    result = await self._control_loop(receive)
        finally:
            self._running = False
            self._nursery = None
            self._events_send = None
        if start_failure is not None:
            raise start_failure.copy()
        return result

    async def _control_loop(self, events: trio.MemoryReceiveChannel[Any]
                            ) -> RestartIntensityExceeded | None:
        while True:
            due = min((g.due for g in self._groups), default=math.inf)
            event: Any = None
            with trio.move_on_at(due):
                event = await events.receive()
            async with self._lock:
                if event is _STOP:
                    await self._stop_all()
                elif event is None:
                    await self._start_due_groups()
                else:
                    await self._on_exit_report(event)
                if event is _STOP or self._escalation is not None:
                    # Refuse start_child from here on, before the lock is free.
                    self._running = False
                    return self._escalation

    async def _on_exit_report(self, report: _Exit) -> None:
        child, inst = report.child, report.inst
        if child.removed or child.instance is not inst or inst.stop_requested:
            return  # stale, or an exit we caused ourselves
        child.instance = None
        if self._stopping:
            return
        ran_for = (trio.current_time() - inst.started_at if inst.started_at is not None
                   else 0.0)
        kind: ExitKind = "failure" if report.kind == "failure" else "normal"
        await self._decide(child, kind, report.failure, ran_for)

    async def _decide(self, child: Child, kind: ExitKind, failure: ActorFailed | None,
                      ran_for: float) -> None:
        """Apply the plan for ``child``'s exit (it has no instance any more)."""
        children = list(self._children)
        index = children.index(child)
        plan = plan_exit(self.strategy, [c.restart for c in children],
                         [c.instance is not None for c in children], index, kind)
        if not plan.restart:
            self._remove(child, "it ended and its restart type says it stays down"
                         if failure is None else "it failed and is not restarted")
            return
        now = trio.current_time()
        if self._history.exceeded_by_one_more(now):
            await self._escalate(child, failure)
            return
        self._history.record(now)
        if self.backoff is not None and ran_for >= self.backoff.reset_after:
            child.backoff_attempts = 0
        child.backoff_attempts += 1
        delay = (self.backoff.delay(child.backoff_attempts, random.random())
                 if self.backoff is not None else 0.0)
        for j in plan.stop:
            await self._stop_instance(children[j])
        for j in plan.remove:
            self._remove(children[j], "a sibling's restart stopped it and it is temporary")
        group = _Group(trio.current_time() + delay, delay)
        for j in plan.start:
            children[j].pending = group
        self._groups.append(group)

    async def _start_due_groups(self) -> None:
        now = trio.current_time()
        due = sorted((g for g in self._groups if g.due <= now), key=lambda g: g.due)
        self._groups = [g for g in self._groups if g.due > now]
        for group in due:
            for child in list(self._children):
                if child.pending is not group or self._stopping or self._escalation:
                    continue
                child.pending = None
                child.restarts += 1
                failure = await self._start_instance(child)
                if failure is None:
                    self._emit("restarted", child, delay=group.delay)
                else:
                    await self._decide(child, "failure", failure, 0.0)

    async def _escalate(self, child: Child, failure: ActorFailed | None) -> None:
        exc = RestartIntensityExceeded(self.name, child.name, self.max_restarts, self.within,
                                       failure)
        await self._stop_all()
        self._escalation = exc
        self._emit("escalated", child, exc)


_ROOT_DEFAULT_BACKOFF = Backoff()


@asynccontextmanager
async def open_supervisor(strategy: Strategy = "one_for_one", max_restarts: int = 3,
                          within: float = 5.0, backoff: Backoff | None = _ROOT_DEFAULT_BACKOFF,
                          *, name: str = "supervisor", observer: Observer | None = None
                          ) -> AsyncIterator[Supervisor]:
    """Open a supervisor for the duration of an ``async with`` block.

    ``strategy``, ``max_restarts``, ``within`` and ``backoff`` are as in
    :class:`SupervisorSpec` (``backoff=None`` restarts at once).  ``observer``
    is called synchronously with every :class:`SupervisionEvent` of this
    supervisor and of nested supervisors that do not set their own.

    Leaving the block stops the children gracefully, last-started first, each
    within its ``shutdown`` grace; then every mailbox closes (queued asks get
    :class:`ActorStopped`, queued tells are reported as lost).  If the block
    raises, or the surrounding scope is cancelled, the children are cancelled
    at once instead.  If restart intensity is exceeded, the children are
    stopped, the block is cancelled, and :class:`RestartIntensityExceeded` is
    raised from the ``async with``.
    """
    spec = SupervisorSpec(name=name, strategy=strategy, max_restarts=max_restarts,
                          within=within, backoff=backoff, observer=observer)
    sup = Supervisor(spec, observer)
    escalation: RestartIntensityExceeded | None = None
    body_scope = trio.CancelScope()

    async def serve(task_status: trio.TaskStatus[None]) -> None:
        nonlocal escalation
        escalation = await sup._serve(Started(task_status))
        if escalation is not None:
            body_scope.cancel()

    try:
        # serve() never raises (children are boxed, escalation is returned), so
        # the body's exception can come out unwrapped.
        async with open_service_nursery() as nursery:
            await nursery.start(serve)
            with body_scope:
                yield sup
            sup._request_stop()
    finally:
        sup._close_all("its supervisor has shut down")
    if escalation is not None:
        raise escalation
