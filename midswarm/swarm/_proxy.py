"""The coordinator's side of one remote actor: its link, and forwards on it.

Theory of operation
-------------------
When an agent binds an actor stream, the coordinator wraps the stream in a
:func:`~midswarm.actors.remote_ref` and records a :class:`RemoteActor` (the
*link*): who hosts it, its type, its credit and what is in flight on it.

Every message for that actor is a :class:`Forward`.  :meth:`RemoteActor.dispatch`
starts one forwarding task per forward in the agent session's nursery, at
once (no await): the task ``ask``\\ s the remote actor and settles the forward
with the outcome.  So up to ``credit`` tasks are pipelined on the stream (the
agent's actor handles them one at a time; pipelining hides the round trip),
and a scatter to several links leaves in one scheduling round.  There is no
proxy actor in front of a link: its mailbox would add a scheduling round to
every task and hold nothing a supervisor could usefully restart (the
forwarding tasks belong to the session, whose end settles them).

Whatever happens, every forward is settled exactly once (:meth:`Forward.settle`):
with the reply, with the actor's boxed failure, or -- when the stream breaks,
the session ends (its nursery, and so the forwarding task, is cancelled) or
has already ended -- with :class:`~midswarm.actors.ActorUnreachable`, which
delivery treats as "re-send elsewhere".  Settling releases the credit the
forward held.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import outcome
import trio

from ..actors import ActorError, ActorRef, ActorUnreachable

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
        except BaseException:
            fwd.settle(self, outcome.Error(ActorUnreachable(
                self.name, "the agent's session ended while the task was in flight")))
            raise
        else:
            result = outcome.Value(value)
        fwd.settle(self, result)

    def dispatch(self, fwd: Forward) -> None:
        """Start forwarding ``fwd`` (its task runs from the next scheduling round).

        Synchronous and never raises: a link whose session is over (or closing)
        settles the forward at once with :class:`ActorUnreachable`.
        """
        fwd.link = self
        if not self.live:
            fwd.settle(self, outcome.Error(ActorUnreachable(
                self.name, "the agent has disconnected")))
            return
        try:
            self.nursery.start_soon(self.forward, fwd)
        except RuntimeError:  # the session's nursery is closing
            fwd.settle(self, outcome.Error(ActorUnreachable(
                self.name, "the agent's session is closing")))

    def __repr__(self) -> str:
        return (f"<RemoteActor {self.name} in_flight={self.in_flight}/{self.credit} "
                f"{'live' if self.live else 'gone'}>")


class Forward:
    """One message on its way to a remote actor, settled exactly once.

    ``reserved`` says whether it holds a credit of the link (released when it
    is settled); control messages (library shards, parameter queries) do not.
    """

    __slots__ = ("msg", "timeout", "reserved", "_on_settled", "done", "link")

    def __init__(self, msg: Any, timeout: float | None, on_settled: Settled,
                 reserved: bool = True) -> None:
        self.msg = msg
        self.timeout = timeout
        self.reserved = reserved
        self._on_settled = on_settled
        self.done = False
        #: The link it was sent to (set by :meth:`RemoteActor.dispatch`).
        self.link: RemoteActor | None = None

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
