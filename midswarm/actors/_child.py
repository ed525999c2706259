"""A supervisor's record of one child, and the loop that runs an actor instance.

The record (:class:`Child`) outlives the instances: it owns the mailbox, the
ref, the restart counters.  An instance (:class:`Instance`) is one run of the
child -- one actor object built by the factory, or one run of a nested
supervisor -- with its own cancel scopes and "done" event.

Messages and instance ends
--------------------------
* The message being handled when ``handle`` raises: its ``ask`` gets the
  :class:`ActorFailed`; a ``tell`` is reported to the observer as
  ``"message_lost"`` with that failure.
* The message being handled when the instance is cancelled (its ``shutdown``
  grace ran out, or the supervisor was cancelled): its ``ask`` gets
  :class:`ActorStopped`; a ``tell`` is reported as ``"message_lost"``.
* Messages still queued stay in the mailbox for the next instance.  If the
  child is removed for good, :meth:`Child.close` drains them: queued asks get
  :class:`ActorStopped`, queued tells are reported as ``"message_lost"``.

Feeds
-----
When the actor's ref has a ``feed`` (a stream served by ``serve_actor``, see
``_serve.py``), the idle instance takes its next message from the feed, which
looks at the mailbox first and otherwise reads the stream in this task.  A
message read that way is handled exactly like one from the mailbox (the rules
above apply to it); requests not yet read stay on the stream, and the
stream's own reader task reads them once the instance has ended.  The loop
runs inside a cancel scope that a put into the mailbox cancels while the
instance waits on the feed (``ref.pulling``), and only then.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import outcome
import trio

from ._actor import Actor, LocalActorRef, _Ask
from ._errors import ActorError, ActorFailed, ActorStopped
from ._spec import ChildSpec, SupervisorSpec

if TYPE_CHECKING:
    from ._supervisor import Supervisor

__all__ = ["Child", "Instance", "Started", "run_actor"]

_EMPTY: Any = object()  # no message held over (None is a valid message)
_STOP: Any = object()  # the instance's message loop is over
_NO_SCOPE = contextlib.nullcontext()

EmitLost = Callable[["Child", Any, ActorError], None]


class Started:
    """Wraps a task_status so the runner can tell whether startup completed."""

    __slots__ = ("_task_status", "done")

    def __init__(self, task_status: Any) -> None:
        self._task_status = task_status
        self.done = False

    def started(self) -> None:
        self.done = True
        self._task_status.started(None)


class Instance:
    """One run of a child, from its factory call to its end."""

    __slots__ = ("scope", "loop_scope", "done", "stop_requested", "idle", "current",
                 "actor", "started_at", "on_stop_called")

    def __init__(self) -> None:
        #: Around the whole run; a stop request puts the shutdown grace on it.
        self.scope = trio.CancelScope()
        #: Around the message loop; cancelled by a stop request while idle.
        self.loop_scope = trio.CancelScope()
        self.done = trio.Event()
        self.stop_requested = False
        self.idle = False
        self.current: Any = _EMPTY
        self.actor: Actor | None = None
        self.started_at: float | None = None
        self.on_stop_called = False


class Child:
    """A supervisor's record of one child; survives its instances."""

    def __init__(self, spec: ChildSpec | SupervisorSpec, supervisor: Supervisor | None) -> None:
        self.spec = spec
        self.name = spec.name
        self.restart = spec.restart
        self.shutdown = spec.shutdown
        self.kind: Literal["actor", "supervisor"]
        self.ref: LocalActorRef | None = None
        self.supervisor = supervisor
        if isinstance(spec, ChildSpec):
            self.kind = "actor"
            send, self.receive = trio.open_memory_channel[Any](spec.mailbox_size)
            self.ref = LocalActorRef(spec.name, send)
        else:
            self.kind = "supervisor"
        self.instance: Instance | None = None
        #: The restart group this child waits in, if any.
        self.pending: object | None = None
        self.restarts = 0
        self.backoff_attempts = 0
        self.removed = False
        #: A message taken from the mailbox by an instance that was then told to
        #: stop before handling it; the next instance handles it first.
        self.held: Any = _EMPTY

    def close(self, reason: str, emit_lost: EmitLost) -> None:
        """Close the mailbox for good and account for every message in it.

        Synchronous (no checkpoint), so nothing can slip into the mailbox between
        draining it and closing it.  Senders waiting for room are accepted and
        accounted for too.
        """
        self.removed = True
        if self.ref is None:
            assert self.supervisor is not None
            self.supervisor._close_all(reason)
            return
        self.ref.closed_reason = reason
        items = []
        if self.held is not _EMPTY:
            items.append(self.held)
            self.held = _EMPTY
        while True:
            try:
                items.append(self.receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        self.receive.close()
        for item in items:
            settle_unhandled(self, item, ActorStopped(self.name, reason), emit_lost)


def settle_unhandled(child: Child, item: Any, error: ActorError, emit_lost: EmitLost) -> None:
    """Report a message that will not be handled: fail its ask or report the tell."""
    if type(item) is _Ask:
        err = error.copy() if isinstance(error, ActorFailed) else error
        item.reply.resolve(outcome.Error(err))
    else:
        emit_lost(child, item, error)


async def run_actor(child: Child, inst: Instance, started: Started) -> None:
    """Build the actor, start it, and handle messages until told to stop.

    Exceptions from the factory, ``on_start``, ``handle`` and ``on_stop``
    propagate; the supervisor's runner boxes them.
    """
    spec = child.spec
    assert isinstance(spec, ChildSpec)
    actor = spec.factory()
    if not isinstance(actor, Actor):
        raise TypeError(f"the factory of child {child.name!r} returned {actor!r}, not an Actor")
    if type(actor).handle is Actor.handle:
        raise TypeError(f"{type(actor).__name__} (child {child.name!r}) does not implement "
                        f"handle()")
    inst.actor = actor
    await actor.on_start()
    inst.started_at = trio.current_time()
    started.started()
    handle = actor.handle
    receive = child.receive
    ref = child.ref
    assert ref is not None
    item = child.held
    child.held = _EMPTY
    # The message loop is written out here rather than in a helper: a crash's
    # traceback is formatted frame by frame, and each frame costs.
    try:
        with inst.loop_scope:
            while item is not _STOP:
                # While the actor waits on its feed, a put into the mailbox
                # cancels this scope (only then: never while it handles a
                # message).  A cancelled scope is spent: a fresh one follows.
                fed = ref.feed is not None
                ref.interrupted = False
                with trio.CancelScope() if fed else _NO_SCOPE as ref.pull_scope:
                    while True:
                        if item is _EMPTY:
                            if inst.stop_requested or actor._stop_requested:
                                item = _STOP
                                break
                            feed = ref.feed
                            if (feed is not None) != fed:
                                break  # a feed came or went: (un)scope the loop
                            inst.idle = True
                            if feed is None:
                                item = await receive.receive()
                            else:
                                item = await feed.next_item(receive)
                            inst.idle = False
                            if inst.stop_requested:
                                # The stop request came while the message was
                                # on its way to us: keep it for the next
                                # instance rather than start on it.
                                child.held = item
                                item = _STOP
                                break
                            if ref.interrupted:
                                break  # handle it outside the spent scope
                        inst.current = item
                        if type(item) is _Ask:
                            result = await handle(item.msg)
                            item.reply.resolve(outcome.Value(result))
                        else:
                            await handle(item)
                        inst.current = item = _EMPTY
    finally:
        ref.pull_scope = None
        # A stream this instance was reading goes back to its server.
        if ref.feed is not None:
            ref.feed.actor_gone()
    inst.on_stop_called = True
    await actor.on_stop()


async def on_stop_after_crash(child: Child, inst: Instance) -> BaseException | None:
    """Give a crashed actor its ``on_stop``, within a fresh shutdown grace.

    Returns what ``on_stop`` raised, if anything (the crash stays the reported
    failure).
    """
    actor = inst.actor
    if actor is None or inst.started_at is None or inst.on_stop_called:
        return None
    inst.on_stop_called = True
    with trio.move_on_after(child.shutdown):
        try:
            await actor.on_stop()
        except Exception as exc:
            return exc
    return None
