"""Task delivery: least-loaded choice within credits, re-sends, deduplication.

Theory of operation
-------------------
Every task gets an id and a :class:`_TaskState` in the open-task table for as
long as its caller waits.  An *attempt* sends the task to one remote actor of
the right type over that actor's link (a forwarding task, see :mod:`._proxy`);
its outcome comes back to the task state, tagged with the link it came from.

Choosing the agent: among the accepting links of the type with a free credit,
the one with the lowest share of its credit in use (then the one given the
fewest tasks so far, which spreads ties round-robin).  With no free credit the
caller waits -- that is the backpressure; nothing queues without bound.  Agents
an earlier attempt of this task failed on are avoided while another agent of
the type is connected.

The submit loop (:meth:`Dispatcher.deliver`) reacts to outcomes:

* a result: it is the answer; the task leaves the table;
* a delivery failure (the stream broke, the agent left, its session ended,
  the attempt's hard time limit passed): re-send to another agent, at most
  ``max_attempts`` sends in all, then :class:`TaskUndeliverable`;
* the actor's own failure (:class:`~midswarm.actors.ActorFailed`: its handler
  raised on this input): one more try on another agent, then the failure goes
  to the caller -- a poison task must not take the swarm down one agent after
  another;
* no outcome within ``task_timeout``: send it to another agent as well
  (when there is one) and take whichever answer comes first.

Attempts are not cancelled when their task is answered: they run on (in the
agent session's nursery) until their own reply or time limit, holding their
credit, because the agent really is busy with them.  Their late results reach
a closed task state and are dropped -- counted as ``duplicates`` when the task
was answered, ``late`` when its caller had given up.  So delivery is
at-least-once on the wire and exactly-once for the caller.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import attrs
import outcome
import trio

from ..actors import ActorError, ActorFailed
from ._config import CoordinatorConfig
from ._errors import NoAgentAvailable, TaskTimeout, TaskUndeliverable
from ._protocol import AGENT_TYPES
from ._proxy import Forward, RemoteActor

__all__ = ["DeliveryStats", "Dispatcher"]


@attrs.define
class DeliveryStats:
    """Counters of the delivery layer (mutable; the coordinator exposes copies)."""

    submitted: int = 0
    completed: int = 0
    #: Tasks whose actor failed on them (the caller got ActorFailed).
    failed: int = 0
    undeliverable: int = 0
    timed_out: int = 0
    #: Sends of a task after its first one.
    resent: int = 0
    #: Results that arrived for a task already answered (dropped).
    duplicates: int = 0
    #: Outcomes that arrived after the caller stopped waiting without an answer.
    late: int = 0

    def count_unclaimed(self, result: outcome.Outcome[Any], answered: bool) -> None:
        """Count a result that arrived when nobody waits for it any more: a
        duplicate if the task was answered, else late (errors are not counted)."""
        if isinstance(result, outcome.Value):
            if answered:
                self.duplicates += 1
            else:
                self.late += 1


class _TaskState:
    __slots__ = ("task_id", "send", "receive", "closed", "answered", "stats")

    def __init__(self, task_id: int, capacity: int, stats: DeliveryStats) -> None:
        self.task_id = task_id
        self.send, self.receive = trio.open_memory_channel[
            tuple[RemoteActor, outcome.Outcome[Any]]](capacity)
        self.closed = False
        self.answered = False
        self.stats = stats

    def on_settled(self, link: RemoteActor, result: outcome.Outcome[Any]) -> None:
        if self.closed:
            self.stats.count_unclaimed(result, self.answered)
            return
        try:
            self.send.send_nowait((link, result))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            # Cannot happen: capacity covers every attempt of the task.
            self.stats.late += 1


class Dispatcher:
    """Routes tasks to remote actors; see the module docstring."""

    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        self.stats = DeliveryStats()
        self._links: dict[str, list[RemoteActor]] = {t: [] for t in AGENT_TYPES}
        self._lots = {t: trio.lowlevel.ParkingLot() for t in AGENT_TYPES}
        self._next_id = 1
        self._attempts = 0
        self._idle = trio.Event()
        self._idle.set()
        self._membership = trio.Event()

    # -- membership ---------------------------------------------------------------

    def add(self, link: RemoteActor) -> None:
        self._links[link.agent_type].append(link)
        self._changed(link.agent_type)

    def remove(self, link: RemoteActor) -> None:
        link.live = False
        link.accepting = False
        links = self._links[link.agent_type]
        if link in links:
            links.remove(link)
        self._changed(link.agent_type)

    def _changed(self, agent_type: str) -> None:
        self._lots[agent_type].unpark_all()
        self._membership.set()
        self._membership = trio.Event()

    def credit_freed(self, agent_type: str) -> None:
        """Called by a link when a forward holding its credit is settled."""
        self._lots[agent_type].unpark_all()

    def links(self, agent_type: str) -> list[RemoteActor]:
        """The live links of a type, in connection order."""
        return list(self._links[agent_type])

    def find(self, agent_id: str, agent_type: str) -> RemoteActor | None:
        for link in self._links[agent_type]:
            if link.agent_id == agent_id:
                return link
        return None

    async def wait_membership_change(self) -> None:
        """Return at the next connect or disconnect of any remote actor."""
        await self._membership.wait()

    def new_task_id(self) -> int:
        task_id = self._next_id
        self._next_id += 1
        return task_id

    # -- choosing -----------------------------------------------------------------

    def _choose(self, agent_type: str, avoid: set[str]) -> RemoteActor | None:
        accepting = [link for link in self._links[agent_type] if link.accepting]
        fresh = [link for link in accepting if link.agent_id not in avoid]
        pool = fresh or accepting
        best: RemoteActor | None = None
        best_key: tuple[float, int] = (math.inf, 0)
        for link in pool:
            if link.in_flight >= link.credit:
                continue
            key = (link.in_flight / link.credit, link.dispatched)
            if key < best_key:
                best, best_key = link, key
        return best

    def has_alternative(self, agent_type: str, avoid: set[str]) -> bool:
        return any(link.accepting and link.agent_id not in avoid
                   for link in self._links[agent_type])

    async def acquire(self, agent_type: str, avoid: set[str]) -> RemoteActor:
        """Reserve a credit on the best link of ``agent_type``; wait for one.

        Raises :class:`NoAgentAvailable` when no agent of the type is
        connected for ``config.agent_wait`` seconds.
        """
        lot = self._lots[agent_type]
        absent_since: float | None = None
        while True:
            link = self._choose(agent_type, avoid)
            if link is not None:
                # Cancellation is checked before the credit is taken (this
                # never yields otherwise): a credit taken and then abandoned
                # by a cancelled caller would never be given back.
                await trio.lowlevel.checkpoint_if_cancelled()
                link.reserve()
                return link
            now = trio.current_time()
            if any(link.accepting for link in self._links[agent_type]):
                absent_since = None
                await lot.park()
                continue
            if absent_since is None:
                absent_since = now
            remaining = absent_since + self.config.agent_wait - now
            if remaining <= 0:
                raise NoAgentAvailable(agent_type, self.config.agent_wait)
            with trio.move_on_after(remaining):
                await lot.park()

    async def acquire_pinned(self, link: RemoteActor) -> None:
        """Reserve a credit on ``link``; waits for one.  Raises
        :class:`~midswarm.actors.ActorUnreachable` if the link goes away."""
        from ..actors import ActorUnreachable

        lot = self._lots[link.agent_type]
        while not link.free:
            if not link.live:
                raise ActorUnreachable(link.name, "the agent has disconnected")
            if not link.accepting:
                raise ActorUnreachable(link.name, "the agent is draining")
            await lot.park()
        await trio.lowlevel.checkpoint_if_cancelled()  # before the credit: see acquire
        link.reserve()

    async def acquire_all(self, links: list[RemoteActor]) -> bool:
        """Reserve one credit on every link at once (all or none, so two
        scatters can never hold part of each other's credits).

        Waits while any of them is full; returns ``False`` without reserving
        if one of them stops accepting.
        """
        types = {link.agent_type for link in links}
        while True:
            if not all(link.accepting for link in links):
                await trio.lowlevel.checkpoint()
                return False
            if all(link.in_flight < link.credit for link in links):
                await trio.lowlevel.checkpoint_if_cancelled()  # before the credits: see acquire
                for link in links:
                    link.reserve()
                return True
            (agent_type,) = types if len(types) == 1 else (next(iter(types)),)
            await self._lots[agent_type].park()

    # -- sending ------------------------------------------------------------------

    def _attempt_started(self) -> None:
        self._attempts += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def _attempt_ended(self) -> None:
        self._attempts -= 1
        if self._attempts == 0:
            self._idle.set()

    def dispatch(self, link: RemoteActor, msg: Any, timeout: float | None,
                 on_settled: Any, *, reserved: bool = True,
                 encoded: tuple[str, bytes] | None = None) -> None:
        """Forward ``msg`` to ``link`` (whose credit the caller reserved when
        ``reserved``); ``on_settled(link, outcome)`` gets the outcome, possibly
        before this returns (a link that is gone).  Synchronous, so a caller
        sending to several links sends to all of them in the same scheduling
        round; ``encoded`` (``encode_payload(msg)``) spares it encoding
        ``msg`` once per link."""
        self._attempt_started()

        def settled(lnk: RemoteActor, result: outcome.Outcome[Any]) -> None:
            self._attempt_ended()
            on_settled(lnk, result)

        link.dispatch(Forward(msg, timeout, settled, reserved, encoded))

    async def wait_link_idle(self, link: RemoteActor) -> None:
        """Return once nothing holds a credit of ``link``."""
        while link.in_flight:
            await self._lots[link.agent_type].park()

    async def wait_idle(self) -> None:
        """Return once no attempt is in flight anywhere (late ones included)."""
        await self._idle.wait()

    @property
    def attempts_in_flight(self) -> int:
        return self._attempts

    async def call(self, link: RemoteActor, msg: Any, timeout: float | None) -> Any:
        """Ask ``link``'s actor directly (no credit, no re-send); raises what the
        ask raised (:class:`ActorFailed`, :class:`ActorUnreachable`, ...)."""
        state = _TaskState(0, 1, self.stats)
        self.dispatch(link, msg, timeout, state.on_settled, reserved=False)
        _link, result = await state.receive.receive()
        return result.unwrap()

    # -- delivering -----------------------------------------------------------------

    async def deliver(self, agent_type: str, msg: Any, *, timeout: float | None = None,
                      agent_id: str | None = None) -> Any:
        """Deliver ``msg`` to an agent of ``agent_type`` and return the answer.

        ``agent_id`` pins the task to that agent (one attempt, no re-send).
        Raises :class:`TaskTimeout` after ``timeout`` seconds,
        :class:`NoAgentAvailable`, :class:`TaskUndeliverable`, the actor's
        :class:`ActorFailed`; a pinned task also raises the delivery error
        itself (:class:`~midswarm.actors.ActorUnreachable`, ...).
        """
        task_id = self.new_task_id()
        state = _TaskState(task_id, self.config.max_attempts + 1, self.stats)
        self.stats.submitted += 1
        try:
            with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
                if agent_id is not None:
                    result = await self._drive_pinned(state, agent_type, msg, agent_id)
                else:
                    result = await self._drive(state, agent_type, msg)
                state.answered = True
                self.stats.completed += 1
                return result
        except ActorFailed:
            self.stats.failed += 1
            raise
        except TaskUndeliverable:
            self.stats.undeliverable += 1
            raise
        finally:
            state.closed = True
        assert scope.cancelled_caught and timeout is not None
        self.stats.timed_out += 1
        raise TaskTimeout(task_id, timeout)

    async def _drive_pinned(self, state: _TaskState, agent_type: str, msg: Any,
                            agent_id: str) -> Any:
        link = self.find(agent_id, agent_type)
        if link is None:
            raise LookupError(f"agent {agent_id!r} has no connected {agent_type}")
        await self.acquire_pinned(link)
        hard = self.config.task_timeout * self.config.max_attempts
        self.dispatch(link, msg, hard, state.on_settled)
        _link, result = await state.receive.receive()
        return result.unwrap()

    async def _drive(self, state: _TaskState, agent_type: str, msg: Any) -> Any:
        cfg = self.config
        hard = cfg.task_timeout * cfg.max_attempts
        avoid: set[str] = set()
        attempts = 0
        outstanding = 0
        poison_retried = False
        last_error: BaseException | None = None
        current: RemoteActor | None = None

        async def launch() -> None:
            nonlocal attempts, outstanding, current
            current = await self.acquire(agent_type, avoid)
            attempts += 1
            outstanding += 1
            if attempts > 1:
                self.stats.resent += 1
            self.dispatch(current, msg, hard, state.on_settled)

        await launch()
        while True:
            with trio.move_on_after(cfg.task_timeout) as waited:
                link, result = await state.receive.receive()
            if waited.cancelled_caught:
                assert current is not None
                # Slow: also ask someone else, if there is someone else.
                if attempts < cfg.max_attempts and self.has_alternative(
                        agent_type, avoid | {current.agent_id}):
                    avoid.add(current.agent_id)
                    await launch()
                continue
            outstanding -= 1
            if not isinstance(result, outcome.Error):
                return result.unwrap()
            error = result.error
            avoid.add(link.agent_id)
            if isinstance(error, ActorFailed):
                if poison_retried or attempts >= cfg.max_attempts:
                    raise error.copy()
                poison_retried = True
                await launch()
                continue
            assert isinstance(error, ActorError), error
            last_error = error
            if attempts < cfg.max_attempts:
                await launch()
            elif outstanding == 0:
                raise TaskUndeliverable(state.task_id, agent_type, attempts, last_error)

    def live_types(self) -> Iterable[str]:
        return (t for t, links in self._links.items() if links)
