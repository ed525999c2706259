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
import math
import os
import tempfile
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Iterable,
    Mapping,
)
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
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
from ._learning import LearningCounters, Predictions, route_adaptation
from ._mapping import map_tasks
from ._protocol import (
    TASK_AGENT_TYPES,
    AdaptationCommand,
    AgentHello,
    Drain,
    ExperienceBatch,
    PatternMatchResult,
    PatternMatchTask,
    Verdicts,
)
from ._proxy import RemoteActor
from ._records import AgentInfo, AgentRecord, CoordinatorStats
from ._scatter import PatternShards
from ._session import AgentSession, serve_connection

__all__ = ["AgentInfo", "Coordinator", "CoordinatorStats", "open_coordinator"]

log = logging.getLogger("midswarm.swarm")

_WHOLE_PARAMETERS = ("window", "k")


class Coordinator:
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
    def agents(self) -> dict[str, AgentInfo]:
        """Every agent id seen so far, connected or not (a fresh snapshot)."""
        return {agent_id: record.info(self._parameters_for(record, record.types))
                for agent_id, record in self._records.items()}

    @property
    def stats(self) -> CoordinatorStats:
        d = self._dispatcher.stats
        return CoordinatorStats(
            submitted=d.submitted, completed=d.completed, failed=d.failed,
            undeliverable=d.undeliverable, timed_out=d.timed_out, resent=d.resent,
            duplicates=d.duplicates, late=d.late,
            in_flight=self._dispatcher.attempts_in_flight, patterns=len(self._library),
            predictions_pending=len(self._predictions), **attrs.asdict(self._learning))

    def connected(self, agent_type: str | None = None) -> list[str]:
        """Ids of the connected agents (hosting ``agent_type``, if given)."""
        return [agent_id for agent_id, record in self._records.items()
                if record.session is not None and record.session.ready
                and not record.session.draining
                and (agent_type is None or agent_type in record.session.links)]

    async def wait_for_agents(self, expected: Mapping[str, int] | Iterable[str],
                              timeout: float | None = None) -> None:
        """Wait until the agents are connected.

        ``expected`` is ``{agent_type: count}`` (at least that many agents
        hosting each type) or an iterable of agent ids.  Raises
        :class:`TimeoutError` naming what is missing after ``timeout`` seconds.
        """
        if isinstance(expected, Mapping):
            counts = dict(expected)

            def missing() -> list[str]:
                return [f"{n - len(self.connected(t))} more {t}" for t, n in counts.items()
                        if len(self.connected(t)) < n]
        else:
            ids = list(expected)

            def missing() -> list[str]:
                live = set(self.connected())
                return [agent_id for agent_id in ids if agent_id not in live]
        with trio.move_on_after(math.inf if timeout is None else timeout):
            while missing():
                await self._membership.wait()
            return
        raise TimeoutError(f"agents not connected after {timeout:g} s: {', '.join(missing())}")

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

    async def map(self, tasks: Iterable[Any] | AsyncIterable[Any], *,
                  concurrency: int = 64, ordered: bool = False, timeout: float | None = None,
                  return_exceptions: bool = False) -> AsyncGenerator[Any, None]:
        """Submit every task and yield the results.

        At most ``concurrency`` tasks are submitted at once (and each waits for
        a credit, so the agents' credits bound what is really in flight); the
        iterable is read lazily.  Results come in completion order, or in
        input order with ``ordered=True`` (then up to ``concurrency`` finished
        results wait for an earlier one).  A task's error is raised from the
        iteration -- after which the remaining tasks are abandoned -- or, with
        ``return_exceptions=True``, yielded in place of its result.
        ``timeout`` applies to each task.  Leaving the loop early abandons the
        tasks not yet done: close the iterator promptly (``async with
        contextlib.aclosing(coord.map(...))``) to stop submitting at once.
        """
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        self._check_open()
        assert self._nursery is not None

        def submit(task: Any, limit: float | None) -> Awaitable[Any]:
            return self.submit(task, timeout=limit)

        async with aclosing(map_tasks(submit, self._nursery, tasks, concurrency=concurrency,
                                      ordered=ordered, timeout=timeout,
                                      return_exceptions=return_exceptions)) as results:
            async for result in results:
                yield result

    async def gather(self, tasks: Iterable[Any] | AsyncIterable[Any], *,
                     timeout: float | None = None, concurrency: int = 64) -> list[Any]:
        """Every task's result, in task order (``map(..., ordered=True)`` into a
        list); raises the first task error.  Shaped like the ``scatter`` a
        :class:`~midswarm.swarm.ParameterServer` takes."""
        return [result async for result in self.map(tasks, ordered=True, timeout=timeout,
                                                    concurrency=concurrency)]

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
        if isinstance(actual, bool) or not isinstance(actual, int | float) \
                or not math.isfinite(actual):
            raise ValueError(f"actual must be a finite number, got {actual!r}")
        taken = self._predictions.take(prediction)
        params = {agent_id: self._parameters_for(record, ["pattern_matcher"])
                  .get("pattern_matcher", {}) for agent_id, record in self._records.items()}
        experiences = Predictions.experiences(taken, float(actual), params)
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

    @property
    def generation(self) -> int:
        """Counts changes of who is connected, of agents' reported actor
        restarts and of the library's shards."""
        return self._generation

    async def wait_for_change(self, since: int | None = None) -> None:
        """Return once :attr:`generation` differs from ``since`` (default: its
        value now, i.e. wait for the next change).  Read ``generation`` before
        checking a condition and pass it here, and no change is missed."""
        if since is None:
            since = self._generation
        while self._generation == since:
            await self._membership.wait()

    async def wait_idle(self) -> None:
        """Return once no task attempt is in flight (late duplicates included)."""
        await self._dispatcher.wait_idle()

    # -- public: connections -----------------------------------------------------------

    def attach(self, conn: Any, *, trusted_identity: bool = True) -> None:
        """Serve an agent on an already-open connection (e.g. one end of
        :func:`~midswarm.transport.memory_connection_pair`).

        With ``trusted_identity`` the hello's agent id must equal
        ``conn.peer_identity`` when that is set.  Raises :class:`CoordinatorClosed`.
        """
        self._check_open()
        assert self._nursery is not None
        trusted = trusted_identity and conn.peer_identity is not None
        self._nursery.start_soon(serve_connection, self, conn, trusted)

    async def _on_quic(self, conn: Any) -> None:
        trusted = self._tls is not None and self._tls.require_client_cert
        await serve_connection(self, conn, trusted)

    async def drain_agent(self, agent_id: str, reason: str = "drained") -> None:
        """Stop giving ``agent_id`` tasks, let its tasks in flight finish (up to
        ``drain_timeout``), then disconnect it; it does not reconnect.
        Raises :class:`LookupError` if it is not connected."""
        record = self._records.get(agent_id)
        session = record.session if record is not None else None
        if session is None:
            raise LookupError(f"agent {agent_id!r} is not connected")
        await self._drain_sessions([session], reason)
        await session.ended.wait()

    async def _drain_sessions(self, sessions: list[AgentSession], reason: str) -> None:
        for session in sessions:
            matcher = session.links.get("pattern_matcher")
            if matcher is not None and not self.closing:
                # Hand its shard on first, so queries stay complete meanwhile.
                with trio.move_on_after(self.config.task_timeout):
                    await self._library.leave(matcher)
            session.draining = True
            for link in session.links.values():
                link.accepting = False
            self._membership_changed()
            try:
                await session.send_control(Drain(reason))
            except Exception as exc:  # the connection is already gone
                log.info("could not tell %s to drain: %r", session.agent_id, exc)
        with trio.move_on_after(self.config.drain_timeout):
            for session in sessions:
                for link in session.links.values():
                    await self._dispatcher.wait_link_idle(link)
        for session in sessions:
            session.end(f"drained: {reason}")

    # -- spawning agent processes --------------------------------------------------------

    async def spawn_agent(self, agent_id: str, types: Iterable[str], certs: str | os.PathLike[str],
                          *, server_name: str = "localhost", extra_args: Iterable[str] = (),
                          threads: int | None = None,
                          log_file: str | os.PathLike[str] | None = None,
                          log_echo_level: int = logging.WARNING) -> None:
        """Start ``python -m midswarm agent`` for ``agent_id`` hosting ``types``,
        supervised: restarted (with backoff) when it dies, stopped with the
        coordinator.  ``certs`` must hold ``ca.pem`` and ``<agent_id>.pem/.key``.
        ``threads`` caps the agent's compute threads (``NUMBA_NUM_THREADS``);
        agents sharing a host should share its cores rather than each start a
        thread per core.  ``log_file``: append the agent's stderr (its log)
        to this file, and pass on to this process's stderr only its log
        records at ``log_echo_level`` or above and any other output
        (tracebacks); default: the agent writes to this process's stderr.
        Returns once the process is started (not yet
        connected: see :meth:`wait_for_agents`).  Raises :class:`RuntimeError`
        without a QUIC listener, :class:`ValueError` for a bad id, types or
        threads, :class:`FileNotFoundError` for missing certificates.
        """
        from ._spawn import spawn_agent

        self._check_open()
        await spawn_agent(self, agent_id, list(types), os.fspath(certs), server_name,
                          list(extra_args), threads,
                          None if log_file is None else os.fspath(log_file), log_echo_level)

    # -- internals for sessions and the spawner ----------------------------------------------

    def _membership_changed(self) -> None:
        self._generation += 1
        self._membership.set()
        self._membership = trio.Event()

    def _record_for(self, hello: AgentHello) -> AgentRecord:
        record = self._records.get(hello.agent_id)
        if record is None:
            record = self._records[hello.agent_id] = AgentRecord(hello.agent_id,
                                                                 list(hello.agent_types))
        else:
            record.types = list(hello.agent_types)
        return record

    def _parameters_for(self, record: AgentRecord, types: Iterable[str]
                        ) -> dict[str, dict[str, Any]]:
        out = {}
        for agent_type in types:
            merged = {key: value.replace("{agent_id}", record.agent_id)
                      if isinstance(value, str) else value
                      for key, value in self._parameters.get(agent_type, {}).items()}
            merged.update(record.parameters.get(agent_type, {}))
            out[agent_type] = merged
        return out

    def _actor_restarted(self, link: RemoteActor) -> None:
        self._membership_changed()
        if link.agent_type == "pattern_matcher" and self._nursery is not None:
            self._nursery.start_soon(self._refill, link)

    async def _refill(self, link: RemoteActor) -> None:
        await self._library.refill(link)
        self._membership_changed()

    def _agent_process_exited(self, agent_id: str, pid: int) -> None:
        record = self._records.get(agent_id)
        session = record.session if record is not None else None
        if session is not None and session.pid == pid:
            session.end(f"agent process {pid} exited")

    def _observe(self, event: SupervisionEvent) -> None:
        if event.kind in ("failed", "escalated"):
            log.warning("supervision: %s %s: %s", event.kind, event.child, event.exception)

    async def shutdown(self) -> None:
        """Drain every agent and refuse new ones; tasks in flight get
        ``drain_timeout`` seconds.  Leaving the :func:`open_coordinator` block
        does this too; calling it earlier lets agents that run in the same
        program (``open_swarm(spawn="task")``) return before the block ends."""
        await self._shutdown()

    async def _shutdown(self) -> None:
        self.closing = True
        sessions = [r.session for r in self._records.values() if r.session is not None]
        if sessions:
            await self._drain_sessions(sessions, "the coordinator is shutting down")
        with trio.move_on_after(self.config.drain_timeout):
            while any(r.session is not None for r in self._records.values()):
                await self._membership.wait()


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
