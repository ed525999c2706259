"""Who is in the swarm: the agents' records and sessions, connections coming
in, draining, spawning agent processes and the coordinator's shutdown.

:class:`Membership` is the base class of :class:`~midswarm.swarm.Coordinator`
(``_coordinator.py``), which sets every attribute declared here and adds the
work: tasks, the pattern library, the learning loop.  Every change of who is
connected, of an agent's actors or of the library's shards bumps
:attr:`Membership.generation` and wakes :meth:`Membership.wait_for_change`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

import trio

from ._config import CoordinatorConfig
from ._delivery import Dispatcher
from ._protocol import AgentHello, Drain
from ._proxy import RemoteActor
from ._records import AgentInfo, AgentRecord
from ._scatter import PatternShards
from ._session import AgentSession, serve_connection

if TYPE_CHECKING:
    from ._coordinator import Coordinator

__all__ = ["Membership"]

log = logging.getLogger("midswarm.swarm")


class Membership:
    """The agents of a :class:`~midswarm.swarm.Coordinator` (its base class)."""

    config: CoordinatorConfig
    closing: bool
    _tls: Any
    _records: dict[str, AgentRecord]
    _parameters: dict[str, dict[str, Any]]
    _dispatcher: Dispatcher
    _library: PatternShards
    _nursery: trio.Nursery | None
    _membership: trio.Event
    _generation: int

    def _check_open(self) -> None:
        raise NotImplementedError

    def _coordinator(self) -> Coordinator:
        # Sessions and the spawner work with the whole coordinator, which is
        # the only subclass.
        return cast("Coordinator", self)

    # -- public: who is there ------------------------------------------------------------

    @property
    def agents(self) -> dict[str, AgentInfo]:
        """Every agent id seen so far, connected or not (a fresh snapshot)."""
        return {agent_id: record.info(self._parameters_for(record, record.types))
                for agent_id, record in self._records.items()}

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
        self._nursery.start_soon(serve_connection, self._coordinator(), conn, trusted)

    async def _on_quic(self, conn: Any) -> None:
        trusted = self._tls is not None and self._tls.require_client_cert
        await serve_connection(self._coordinator(), conn, trusted)

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

    async def spawn_agent(self, agent_id: str, types: Iterable[str],
                          certs: str | os.PathLike[str],
                          *, server_name: str = "localhost", extra_args: Iterable[str] = (),
                          threads: int | None = None,
                          log_file: str | os.PathLike[str] | None = None,
                          log_echo_level: int = logging.WARNING,
                          cpus: Iterable[int] | None = None) -> None:
        """Start ``python -m midswarm agent`` for ``agent_id`` hosting ``types``,
        supervised: restarted (with backoff) when it dies, stopped with the
        coordinator.  ``certs`` must hold ``ca.pem`` and ``<agent_id>.pem/.key``.
        ``threads`` caps the agent's compute threads (``NUMBA_NUM_THREADS``);
        agents sharing a host should share its cores rather than each start a
        thread per core.  ``log_file``: append the agent's stderr (its log)
        to this file, and pass on to this process's stderr only its log
        records at ``log_echo_level`` or above and any other output
        (tracebacks); default: the agent writes to this process's stderr.
        ``cpus``: the CPUs the agent may run on (Linux; default: any).
        Returns once the process is started (not yet
        connected: see :meth:`wait_for_agents`).  Raises :class:`RuntimeError`
        without a QUIC listener, :class:`ValueError` for a bad id, types,
        threads or cpus, :class:`FileNotFoundError` for missing certificates.
        """
        from ._spawn import spawn_agent

        self._check_open()
        if cpus is not None:
            cpu_list = list(cpus)
            if not cpu_list or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                       for c in cpu_list):
                raise ValueError(f"cpus must be non-negative CPU ids, got {cpus!r}")
            extra_args = [*extra_args, "--cpus", ",".join(map(str, sorted(set(cpu_list))))]
        await spawn_agent(self._coordinator(), agent_id, list(types), os.fspath(certs), server_name,
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
