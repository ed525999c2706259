"""The coordinator: agents in, tasks out, results back exactly once.

Theory of operation
-------------------
:func:`open_coordinator` runs, inside one ``async with`` block:

* a supervisor (``coordinator``) owning the ``agent-processes`` supervisor
  of the agents it spawned itself (:meth:`Coordinator.spawn_agent`), which
  restarts an agent process that dies;
* a QUIC listener when ``tls`` is given (agents on other processes or hosts),
  and :meth:`Coordinator.attach` for any other connection object with the same
  shape (the in-memory pairs of an embedded swarm): both are served by the
  same code (:mod:`._session`), so the in-process and the multi-process swarm
  share all their logic;
* delivery (:mod:`._delivery`), the sharded pattern library
  (:mod:`._scatter`) and the learning loop's bookkeeping (:mod:`._learning`).

Leaving the block normally drains: agents are told :class:`Drain`, tasks in
flight get ``drain_timeout`` seconds to finish, then connections close and
spawned agent processes exit.  Leaving it with an exception, or cancelling
it, stops everything at once.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from collections.abc import (
    AsyncIterator,
    Mapping,
)
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import trio

from .._util import open_service_nursery
from ..actors import (
    ActorError,
    Backoff,
    SupervisionEvent,
    Supervisor,
    SupervisorSpec,
    open_supervisor,
)
from ..reasoning import Verdict
from ..transport import QuicConfig, ServerTLS, serve_quic
from ._config import CoordinatorConfig, check_parameters
from ._delivery import Dispatcher
from ._errors import CoordinatorClosed, TaskTimeout
from ._learning import LearningCounters, Predictions, check_actual, route_adaptation
from ._mapping import TaskMapping
from ._membership import Membership
from ._protocol import (
    TASK_AGENT_TYPES,
    AdaptationCommand,
    ExperienceBatch,
    PatternMatchResult,
    PatternMatchTask,
    Verdicts,
)
from ._records import AgentInfo, AgentRecord, CoordinatorStats
from ._scatter import PatternShards

__all__ = ["AgentInfo", "Coordinator", "CoordinatorStats", "open_coordinator"]

log = logging.getLogger("midswarm.swarm")

_WHOLE_PARAMETERS = ("window", "k")


class Coordinator(Membership, TaskMapping):
    """A running coordinator; get one from :func:`open_coordinator`."""

    def __init__(self, config: CoordinatorConfig, parameters: Mapping[str, Any],
                 store_dir: str, tls: ServerTLS | None) -> None:
        self.config = config
        self.store_dir = store_dir
        self.coordinator_id = config.coordinator_id
        self._tls = tls
        self._parameters = check_parameters(parameters)
        self._records: dict[str, AgentRecord] = {}
        self._dispatcher = Dispatcher(config)
        self._library = PatternShards(self._dispatcher, config, store_dir)
        self._predictions = Predictions()
        self._nursery: trio.Nursery | None = None
        self._processes: Supervisor | None = None
        self._process_nursery: trio.Nursery | None = None
        self._listener: Any = None
        self._membership = trio.Event()
        self._generation = 0
        self.closing = False
        self.closed = False
        self._learning = LearningCounters()

    # -- public: who is there ------------------------------------------------------------

    @property
    def port(self) -> int | None:
        """The UDP port the QUIC listener is bound to (``None`` without ``tls``)."""
        return None if self._listener is None else int(self._listener.port)

    @property
    def host(self) -> str | None:
        return None if self._listener is None else str(self._listener.host)

    @property
    def stats(self) -> CoordinatorStats:
        d = self._dispatcher.stats
        return CoordinatorStats(
            submitted=d.submitted, completed=d.completed, failed=d.failed,
            undeliverable=d.undeliverable, timed_out=d.timed_out, resent=d.resent,
            duplicates=d.duplicates, late=d.late,
            in_flight=self._dispatcher.attempts_in_flight, patterns=len(self._library),
            predictions_pending=len(self._predictions), **attrs.asdict(self._learning))

    # -- public: work ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closing or self.closed or self._nursery is None:
            raise CoordinatorClosed("the coordinator is shutting down" if self.closing
                                    else "the coordinator is not running")

    async def submit(self, task: Any, *, timeout: float | None = None,
                     agent: str | None = None) -> Any:
        """Have an agent do ``task`` and return its result.

        The task's class picks the agent type (:data:`TASK_AGENT_TYPES`).  A
        :class:`PatternMatchTask` is scattered to every pattern matcher and
        their answers merged (see :mod:`._scatter`); the result is remembered
        for :meth:`report_outcome`.  ``agent`` pins the task to that agent
        (one attempt, no re-send; for a pattern task: that matcher's shard
        only).  Waits for a free credit when every agent of the type is busy.

        Raises :class:`TypeError` for a message that is not a task,
        :class:`TaskTimeout` after ``timeout`` seconds, :class:`NoAgentAvailable`,
        :class:`TaskUndeliverable`, :class:`~midswarm.actors.ActorFailed` when
        the actor failed on this task (after one retry elsewhere), and
        :class:`CoordinatorClosed`.  Cancelling the call abandons the task
        (an attempt already sent runs to its end on its agent).
        """
        agent_type = TASK_AGENT_TYPES.get(type(task))
        if agent_type is None:
            names = ", ".join(cls.__name__ for cls in TASK_AGENT_TYPES)
            raise TypeError(f"submit() takes a task message ({names}), "
                            f"got {type(task).__name__}")
        self._check_open()
        if agent_type != "pattern_matcher" or agent is not None:
            result = await self._dispatcher.deliver(agent_type, task, timeout=timeout,
                                                    agent_id=agent)
            if isinstance(result, PatternMatchResult) and agent is not None:
                self._predictions.remember(self._dispatcher.new_task_id(), result, [agent])
            return result
        return await self._scatter(task, timeout)

    async def _scatter(self, task: PatternMatchTask, timeout: float | None) -> PatternMatchResult:
        stats = self._dispatcher.stats
        stats.submitted += 1
        if timeout is None:
            return await self._scatter_once(task)
        with trio.move_on_after(timeout):
            return await self._scatter_once(task)
        stats.timed_out += 1
        raise TaskTimeout(0, timeout)

    async def _scatter_once(self, task: PatternMatchTask) -> PatternMatchResult:
        stats = self._dispatcher.stats
        try:
            answer = await self._library.scatter(task)
        except ActorError:
            stats.failed += 1
            raise
        stats.completed += 1
        task_id = self._dispatcher.new_task_id()
        self._predictions.remember(task_id, answer.result, answer.contributors)
        return answer.result

    def _map_nursery(self) -> trio.Nursery:
        self._check_open()
        assert self._nursery is not None
        return self._nursery

    # -- public: the pattern library and the learning loop ------------------------------

    async def add_patterns(self, vectors: Any, outcomes: Any) -> list[int]:
        """Add patterns (one per row, with their known outcomes) to the library.

        They are stored durably under ``store_dir`` and sent to the pattern
        matchers' shards; returns their ids once every connected matcher that
        owns some of them has them.  Raises :class:`ValueError` for bad shapes
        or values.
        """
        self._check_open()
        return await self._library.add(vectors, outcomes)

    def shard_sizes(self) -> dict[str, int]:
        """Pattern matcher (``agent_id/pattern_matcher``) -> patterns it owns."""
        return self._library.shard_sizes()

    async def report_outcome(self, prediction: PatternMatchResult | int, actual: float
                             ) -> list[Verdict]:
        """Close the learning loop for one pattern-match answer.

        ``prediction`` is a :class:`PatternMatchResult` returned by
        :meth:`submit`/:meth:`map` (or its task id) and ``actual`` the outcome
        that happened.  Builds one :class:`~midswarm.reasoning.Experience` per
        matcher credited with the answer (see :mod:`._learning`), has the
        ReasoningBank actor judge them, and sends every
        :class:`AdaptationCommand` of its verdicts to its agent, waiting (up
        to ``task_timeout``) for the agent to apply it.  Returns the verdicts.

        Raises :class:`KeyError` for an unknown or already reported
        prediction (nothing changes then), :class:`ValueError` for a
        non-finite ``actual``, and what :meth:`submit` raises for the
        ReasoningBank task -- the prediction is then pending again.
        """
        self._check_open()
        actual = check_actual(actual)
        taken = self._predictions.take(prediction)
        params = {agent_id: self._parameters_for(record, ["pattern_matcher"])
                  .get("pattern_matcher", {}) for agent_id, record in self._records.items()}
        experiences = Predictions.experiences(taken, actual, params)
        try:
            verdicts: Verdicts = await self.submit(ExperienceBatch(experiences))
        except BaseException:
            self._predictions.remember(taken.task_id, taken.result, taken.contributors)
            raise
        self._learning.experiences += len(experiences)
        self._learning.verdicts += len(verdicts.verdicts)
        for command in verdicts.adaptations:
            self._learning.adaptations_issued += 1
            await self._route_adaptation(command)
        return list(verdicts.verdicts)

    async def adapt(self, command: AdaptationCommand) -> bool:
        """Send an adaptation command to its agent's pattern matcher.

        Returns ``True`` once the agent acknowledged applying it, ``False`` if
        the agent is not connected (the changes are then kept and sent in its
        next welcome) or did not acknowledge within ``task_timeout``.
        """
        self._check_open()
        return await self._route_adaptation(command)

    async def _route_adaptation(self, command: AdaptationCommand) -> bool:
        return await route_adaptation(command, self._records.get(command.agent_id),
                                      self._dispatcher, self.config.task_timeout,
                                      self._learning)

    async def ask_agent(self, agent_id: str, agent_type: str, msg: Any,
                        timeout: float | None = None) -> Any:
        """Ask one agent's actor directly (no credit, no re-send), e.g.
        ``"parameters"`` of a pattern matcher.  Raises :class:`LookupError`
        if that agent does not host a connected ``agent_type``, else what the
        ask raises."""
        self._check_open()
        link = self._dispatcher.find(agent_id, agent_type)
        if link is None:
            raise LookupError(f"agent {agent_id!r} has no connected {agent_type}")
        return await self._dispatcher.call(
            link, msg, self.config.task_timeout if timeout is None else timeout)

    async def agent_parameters(self, agent_id: str) -> dict[str, Any]:
        """The current parameters of ``agent_id``'s pattern matcher, asked from it."""
        result = await self.ask_agent(agent_id, "pattern_matcher", "parameters")
        return dict(result)

    async def wait_idle(self) -> None:
        """Return once no task attempt is in flight (late duplicates included)."""
        await self._dispatcher.wait_idle()

    def _observe(self, event: SupervisionEvent) -> None:
        if event.kind in ("failed", "escalated"):
            log.warning("supervision: %s %s: %s", event.kind, event.child, event.exception)



@asynccontextmanager
async def open_coordinator(port: int = 0, host: str = "127.0.0.1", tls: ServerTLS | None = None,
                           store_dir: str | os.PathLike[str] | None = None,
                           config: CoordinatorConfig | None = None, *,
                           parameters: Mapping[str, Mapping[str, Any]] | None = None,
                           quic_config: QuicConfig | None = None) -> AsyncIterator[Coordinator]:
    """Run a coordinator for the duration of an ``async with`` block.

    With ``tls`` (a :class:`~midswarm.transport.ServerTLS`; use
    ``require_client_cert=True`` so each agent's id is checked against its
    certificate) it listens for agents on UDP ``host:port`` (``port=0`` picks
    a free one: :attr:`Coordinator.port`); without, it only serves
    connections given to :meth:`Coordinator.attach`.  ``store_dir`` holds the
    pattern library (a temporary directory, deleted afterwards, when
    ``None``); patterns already stored there are loaded and served again.
    ``parameters`` maps agent type to the initial parameters sent to its
    actors (in a string value, ``{agent_id}`` is replaced by the agent's
    id).  See the module docstring for what leaving the block does.

    Raises :class:`OSError` if the port cannot be bound,
    :class:`~midswarm.swarm.ConfigError` for bad ``parameters``.
    """
    cfg = config if config is not None else CoordinatorConfig()
    async with AsyncExitStack() as stack:
        if store_dir is None:
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="midswarm-"))
        else:
            directory = os.fspath(store_dir)
            os.makedirs(directory, exist_ok=True)
        coord = Coordinator(cfg, parameters or {}, directory, tls)
        loaded = await trio.to_thread.run_sync(coord._library.open_existing)
        if loaded:
            log.info("loaded %d stored patterns from %s", loaded, directory)
        try:
            async with open_supervisor(name="coordinator", max_restarts=10, within=10.0,
                                       observer=coord._observe) as sup:
                coord._processes = await sup.start_child(SupervisorSpec(
                    name="agent-processes", max_restarts=20, within=60.0,
                    backoff=Backoff(initial=0.2, maximum=5.0), restart="temporary"))
                async with open_service_nursery() as process_nursery:
                    coord._process_nursery = process_nursery
                    async with open_service_nursery() as nursery:
                        coord._nursery = nursery
                        if tls is not None:
                            coord._listener = await nursery.start(functools.partial(
                                serve_quic, coord._on_quic, port, host, tls, quic_config))
                        try:
                            yield coord
                        except BaseException:
                            coord.closing = True
                            nursery.cancel_scope.cancel()
                            raise
                        await coord._shutdown()
                        nursery.cancel_scope.cancel()
                    from ._spawn import stop_all

                    await stop_all(coord, cfg.drain_timeout)
                    process_nursery.cancel_scope.cancel()
        finally:
            coord.closing = True
            coord.closed = True
            coord._nursery = None
            coord._library.close()
