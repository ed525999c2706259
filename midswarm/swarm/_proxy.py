"""The coordinator's side of one remote actor: its link, and forwards on it.

Theory of operation
-------------------
When an agent binds an actor stream, the coordinator wraps the stream in a
:func:`~midswarm.actors.remote_ref` and records a :class:`RemoteActor` (the
*link*): who hosts it, its type, its credit and what is in flight on it.

Every message for that actor is a :class:`Forward`, and
:meth:`RemoteActor.dispatch` sends it at once, from the caller's task, without
waiting: a task's forward (one holding a credit) is written straight to the
stream (:meth:`~midswarm.actors.RemoteActorRef.ask_nowait`) and its reply is
handed to the forward by the ref's reader, so a task costs no task of its own
and a scatter to several links leaves in one go.  Its time limit is kept by
the link's one *expiry task*, which sleeps until the earliest limit of the
link's direct forwards.  Only when the stream cannot take the frame at once
(backpressure, a large frame, a write in progress) -- and for control
messages, which hold no credit -- does a forwarding task in the agent
session's nursery ``ask`` instead.  So up to ``credit`` tasks are pipelined on
the stream (the agent's actor handles them one at a time; pipelining hides the
round trip).  There is no proxy actor in front of a link: its mailbox would
add a scheduling round to every task and hold nothing a supervisor could
usefully restart.

Whatever happens, every forward is settled exactly once (:meth:`Forward.settle`):
with the reply, with the actor's boxed failure, with
:class:`~midswarm.actors.AskTimeout` when its limit passes, or -- when the
stream breaks, the session ends (the ref's block exits, failing its pending
asks; the forwarding tasks are cancelled) or has already ended -- with
:class:`~midswarm.actors.ActorUnreachable`, which delivery treats as "re-send
elsewhere".  Settling releases the credit the forward held.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from typing import Any

import outcome
import trio

from ..actors import (
    ActorError,
    ActorFailed,
    ActorRef,
    ActorUnreachable,
    AskTimeout,
    RemoteActorRef,
)

__all__ = ["Forward", "RemoteActor"]

log = logging.getLogger("midswarm.swarm")

Settled = Callable[["RemoteActor", outcome.Outcome[Any]], None]


class RemoteActor:
    """The coordinator's record of one actor hosted by a connected agent."""

    def __init__(self, agent_id: str, agent_type: str, name: str, ref: ActorRef, credit: int,
                 nursery: trio.Nursery, on_credit: Callable[[str], None]) -> None:
        self.agent_id = agent_id
        self.agent_type = agent_type
        #: ``agent_id/agent_type``: the actor's name in the Welcome and in errors.
        self.name = name
        self.ref = ref
        self.credit = credit
        self.nursery = nursery
        self._on_credit = on_credit
        #: False once the session ended: no new forwards.
        self.live = True
        #: False while draining or dead: not chosen for new tasks.
        self.accepting = True
        #: Forwards holding a credit that are not settled yet.
        self.in_flight = 0
        #: Every forward that was settled, and how.
        self.dispatched = 0
        self.completed = 0
        self.failed = 0
        self.lost = 0
        # Time limits of the direct forwards: (deadline, sequence, forward, ask
        # id), a heap; settled ones leave it when they reach its top.
        self._limits: list[tuple[float, int, Forward, int]] = []
        self._limit_seq = 0
        self._expiring = False  # the expiry task was started
        self._expiry_scope: trio.CancelScope | None = None
        self._expiry_idle = trio.lowlevel.ParkingLot()  # the expiry task, with nothing to do

    @property
    def free(self) -> bool:
        return self.accepting and self.in_flight < self.credit

    def reserve(self) -> None:
        self.in_flight += 1
        self.dispatched += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._on_credit(self.agent_type)

    async def forward(self, fwd: Forward) -> None:
        """Ask the remote actor and settle ``fwd`` (runs in the session's nursery)."""
        result: outcome.Outcome[Any]
        try:
            value = await self.ref.ask(fwd.msg, timeout=fwd.timeout)
        except ActorError as exc:
            result = outcome.Error(exc)
        except (TypeError, ValueError) as exc:  # raised before anything was sent
            result = outcome.Error(self._unsendable(exc))
        except BaseException:
            fwd.settle(self, outcome.Error(ActorUnreachable(
                self.name, "the agent's session ended while the task was in flight")))
            raise
        else:
            result = outcome.Value(value)
        fwd.settle(self, result)

    def dispatch(self, fwd: Forward) -> None:
        """Send ``fwd`` now (see the module docstring); synchronous, never raises.

        A link whose session is over (or closing) settles the forward at once
        with :class:`ActorUnreachable`.
        """
        fwd.link = self
        if not self.live:
            fwd.settle(self, outcome.Error(ActorUnreachable(
                self.name, "the agent has disconnected")))
            return
        if fwd.reserved and self._send_direct(fwd):
            return
        try:
            self.nursery.start_soon(self.forward, fwd)
        except RuntimeError:  # the session's nursery is closing
            fwd.settle(self, outcome.Error(ActorUnreachable(
                self.name, "the agent's session is closing")))

    def _send_direct(self, fwd: Forward) -> bool:
        """Write ``fwd`` to the stream now; ``False`` if it must go by a task."""
        ref = self.ref
        if not isinstance(ref, RemoteActorRef):
            return False
        if fwd.timeout is not None and not self._expiring:
            try:
                self.nursery.start_soon(self._expire_forwards)
            except RuntimeError:
                return False
            self._expiring = True
        try:
            ask_id = ref.ask_nowait(fwd.msg, fwd.reply, fwd.encoded)
        except ActorError as exc:  # the ref is broken or closing
            fwd.settle(self, outcome.Error(exc))
            return True
        except (TypeError, ValueError) as exc:
            fwd.settle(self, outcome.Error(self._unsendable(exc)))
            return True
        if ask_id is None:
            return False
        if fwd.timeout is not None:
            self._limit(fwd, ask_id)
        return True

    def _unsendable(self, exc: TypeError | ValueError) -> ActorFailed:
        """The failure of a message the wire cannot carry (it cannot be
        encoded, or exceeds the stream's frame limit): it fails its task like
        an actor's failure would -- retried once, then raised to the caller --
        and nothing else."""
        return ActorFailed(self.name, type(exc).__name__, f"could not be sent: {exc}")

    def _limit(self, fwd: Forward, ask_id: int) -> None:
        assert fwd.timeout is not None
        limits = self._limits
        if len(limits) > 64 and len(limits) > 4 * self.in_flight:
            # Settled forwards waiting to reach the top: drop them now.
            limits[:] = [entry for entry in limits if not entry[2].done]
            heapq.heapify(limits)
        deadline = trio.current_time() + fwd.timeout
        self._limit_seq += 1
        heapq.heappush(limits, (deadline, self._limit_seq, fwd, ask_id))
        if self._expiry_idle:
            self._expiry_idle.unpark()
        elif self._expiry_scope is not None and deadline < self._expiry_scope.deadline:
            self._expiry_scope.deadline = deadline

    async def _expire_forwards(self) -> None:
        """Settle each direct forward still unanswered at its time limit with
        :class:`AskTimeout` (the late reply is then dropped).  Runs in the
        session's nursery until the session ends."""
        limits = self._limits
        while True:
            while limits and limits[0][2].done:
                heapq.heappop(limits)
            if not limits:
                await self._expiry_idle.park()
                continue
            deadline = limits[0][0]
            if trio.current_time() < deadline:
                with trio.CancelScope(deadline=deadline) as self._expiry_scope:
                    await trio.sleep_forever()
                self._expiry_scope = None
                continue
            _, _, fwd, ask_id = heapq.heappop(limits)
            assert isinstance(self.ref, RemoteActorRef)
            self.ref.forget(ask_id)
            assert fwd.timeout is not None  # only limited forwards are on the heap
            fwd.settle(self, outcome.Error(AskTimeout(self.name, fwd.timeout)))

    def __repr__(self) -> str:
        return (f"<RemoteActor {self.name} in_flight={self.in_flight}/{self.credit} "
                f"{'live' if self.live else 'gone'}>")


class Forward:
    """One message on its way to a remote actor, settled exactly once.

    ``reserved`` says whether it holds a credit of the link (released when it
    is settled); control messages (library shards, parameter queries) do not.
    ``encoded``: ``encode_payload(msg)``, when the sender has it (a message
    scattered to several links is encoded once).
    """

    __slots__ = ("msg", "encoded", "timeout", "reserved", "_on_settled", "done", "link")

    def __init__(self, msg: Any, timeout: float | None, on_settled: Settled,
                 reserved: bool = True, encoded: tuple[str, bytes] | None = None) -> None:
        self.msg = msg
        self.encoded = encoded
        self.timeout = timeout
        self.reserved = reserved
        self._on_settled = on_settled
        self.done = False
        #: The link it was sent to (set by :meth:`RemoteActor.dispatch`).
        self.link: RemoteActor | None = None

    def reply(self, result: outcome.Outcome[Any]) -> None:
        """Settle with the outcome of the ask it was sent as (on its link)."""
        assert self.link is not None
        self.settle(self.link, result)

    def settle(self, link: RemoteActor, result: outcome.Outcome[Any]) -> None:
        """Record the outcome (later calls are ignored).  Synchronous, never raises."""
        if self.done:
            return
        self.done = True
        if self.reserved:
            link.release()
        if isinstance(result, outcome.Value):
            link.completed += 1
        else:
            link.failed += 1
        try:
            self._on_settled(link, result)
        except Exception:  # a broken callback must not break the session
            log.exception("settling a forward to %s failed", link.name)
