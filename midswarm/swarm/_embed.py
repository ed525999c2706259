"""A whole swarm from one Trio program: :func:`open_swarm`.

``spawn="task"`` runs every agent as a Trio task of this program, connected
to the coordinator over the in-memory transport (the same session and
delivery code as QUIC, no sockets, no certificates).  ``spawn="process"``
starts a coordinator listening on loopback QUIC with mutual TLS and every
agent as a ``python -m midswarm agent`` subprocess under the coordinator's
supervisor, which restarts an agent process that dies.

Agent ids are ``<type>-<n>`` (``pattern_matcher-1``, ...), one actor type per
agent.  Each ReasoningBank agent keeps its bank in
``<store_dir>/reasoning-<agent_id>.sqlite`` unless ``parameters`` names a path.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
)
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Literal

import trio

from .._util import open_service_nursery
from ..reasoning import Verdict
from ..transport import QuicConfig, ServerTLS, make_dev_certs
from ._agent_host import memory_connector, run_agent
from ._config import (
    DEFAULT_COMPOSITION,
    ConfigError,
    CoordinatorConfig,
    SwarmConfig,
    check_composition,
    check_parameters,
)
from ._coordinator import AgentInfo, Coordinator, CoordinatorStats, open_coordinator
from ._protocol import PatternMatchResult

__all__ = ["Swarm", "open_swarm"]


def agent_ids(composition: Mapping[str, int]) -> dict[str, str]:
    """``{agent_id: agent_type}`` for a composition, in a stable order."""
    out = {}
    for agent_type, count in composition.items():
        for n in range(1, count + 1):
            out[f"{agent_type}-{n}"] = agent_type
    return out


class Swarm:
    """A running swarm: its coordinator and the agents :func:`open_swarm` started.

    The work methods are the coordinator's (:meth:`Coordinator.submit` and
    friends); :attr:`coordinator` gives the rest.
    """

    def __init__(self, coordinator: Coordinator, agents: dict[str, str], spawn: str,
                 certs: str | None) -> None:
        self.coordinator = coordinator
        #: ``{agent_id: agent_type}`` of the agents this swarm started.
        self.agent_types = agents
        self.spawn = spawn
        #: The certificate directory of a ``spawn="process"`` swarm.
        self.certs = certs

    async def submit(self, task: Any, *, timeout: float | None = None,
                     agent: str | None = None) -> Any:
        """See :meth:`Coordinator.submit`."""
        return await self.coordinator.submit(task, timeout=timeout, agent=agent)

    def map(self, tasks: Iterable[Any] | AsyncIterable[Any], *, concurrency: int = 64,
            ordered: bool = False, timeout: float | None = None,
            return_exceptions: bool = False) -> AsyncGenerator[Any, None]:
        """See :meth:`Coordinator.map`."""
        return self.coordinator.map(tasks, concurrency=concurrency, ordered=ordered,
                                    timeout=timeout, return_exceptions=return_exceptions)

    async def add_patterns(self, vectors: Any, outcomes: Any) -> list[int]:
        """See :meth:`Coordinator.add_patterns`."""
        return await self.coordinator.add_patterns(vectors, outcomes)

    async def report_outcome(self, prediction: PatternMatchResult | int, actual: float
                             ) -> list[Verdict]:
        """See :meth:`Coordinator.report_outcome`."""
        return await self.coordinator.report_outcome(prediction, actual)

    @property
    def agents(self) -> dict[str, AgentInfo]:
        return self.coordinator.agents

    @property
    def stats(self) -> CoordinatorStats:
        return self.coordinator.stats

    def ids(self, agent_type: str) -> list[str]:
        """The ids of this swarm's agents of ``agent_type``."""
        return [a for a, t in self.agent_types.items() if t == agent_type]


@asynccontextmanager
async def open_swarm(agents: Mapping[str, int] | None = None, *,
                     spawn: Literal["task", "process"] = "task",
                     store_dir: str | os.PathLike[str] | None = None,
                     config: SwarmConfig | CoordinatorConfig | None = None,
                     parameters: Mapping[str, Mapping[str, Any]] | None = None,
                     certs: str | os.PathLike[str] | None = None,
                     host: str = "127.0.0.1", port: int = 0,
                     factories: Mapping[str, Callable[[str, dict[str, Any]], Any]] | None = None,
                     quic_config: QuicConfig | None = None,
                     agent_threads: int | None = None,
                     agent_cpus: Literal["any", "spread"] = "any",
                     agent_log: str | os.PathLike[str] | None = None,
                     agent_log_echo: int = logging.WARNING,
                     ready_timeout: float = 300.0) -> AsyncIterator[Swarm]:
    """Start a coordinator and its agents; yield a :class:`Swarm` once all are connected.

    ``agents`` is ``{agent_type: count}`` (default: the config's composition,
    else 2 pattern matchers, 1 correlator, 1 feature engineer, 2 neural
    trainers, 1 ReasoningBank).  ``config`` is a :class:`SwarmConfig` (e.g.
    from :func:`load_config`: composition, parameters, coordinator settings) or
    just the :class:`CoordinatorConfig`; explicit ``agents``/``parameters``
    win over it.  ``store_dir`` holds the pattern library and the banks (a
    temporary directory by default).  For ``spawn="process"``: ``certs`` is
    where development certificates are made (a temporary directory by
    default), ``host``/``port`` where the coordinator listens.
    ``factories`` replaces actor factories for ``spawn="task"`` only (a
    subprocess builds its actors from :data:`AGENT_FACTORIES`).
    ``agent_threads`` caps each agent process's compute threads (default: the
    host's cores shared out among the agents, at least one each): agent
    processes that each start a thread per core on one host fight over the
    cores, and a parallel kernel waiting for a descheduled thread stalls.
    ``agent_cpus="spread"`` (process mode, Linux) binds each agent process to
    its own ``agent_threads`` CPUs of this process's set, round-robin, so the
    kernel never queues two agents on one core while another core idles (it
    avoids moving recently run processes between cores; traces of a loaded
    2-core machine showed a scatter's second agent waiting for the first);
    ``"any"`` (the default) leaves placement to the operating system.
    ``agent_log`` (process mode) is a file the agent processes' logs are
    appended to; of those, only records at ``agent_log_echo`` or above
    (WARNING by default) and any other output (tracebacks) still reach this
    process's stderr.  Without it the agents log to this process's stderr.

    Every agent warms its kernels up before it connects (see
    :func:`run_agent`), so the swarm is yielded in its steady state;
    ``ready_timeout`` covers that too -- numba compiles the kernels on the
    first run after they changed, which can take minutes.

    Leaving the block drains and stops everything.  Raises
    :class:`ConfigError` for a bad composition or parameters,
    :class:`TimeoutError` when the agents are not all connected within
    ``ready_timeout`` seconds.
    """
    swarm_cfg = config if isinstance(config, SwarmConfig) else None
    coord_cfg = (swarm_cfg.coordinator if swarm_cfg is not None else
                 config if isinstance(config, CoordinatorConfig) else CoordinatorConfig())
    composition = check_composition(
        agents if agents is not None else
        swarm_cfg.agents if swarm_cfg is not None else DEFAULT_COMPOSITION)
    params = check_parameters(dict(swarm_cfg.parameters) if swarm_cfg is not None else {})
    for agent_type, table in check_parameters(parameters or {}).items():
        params.setdefault(agent_type, {}).update(table)
    if spawn not in ("task", "process"):
        raise ConfigError(f"spawn must be 'task' or 'process', got {spawn!r}")
    if agent_cpus not in ("any", "spread"):
        raise ConfigError(f"agent_cpus must be 'any' or 'spread', got {agent_cpus!r}")
    if spawn == "process" and factories is not None:
        raise ConfigError("factories= only applies to spawn='task' (agent processes build "
                          "their actors from AGENT_FACTORIES)")
    ids = agent_ids(composition)
    async with AsyncExitStack() as stack:
        if store_dir is None and swarm_cfg is not None and swarm_cfg.store_dir is not None:
            store_dir = swarm_cfg.store_dir
        if store_dir is None:
            store_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="midswarm-"))
        directory = os.fspath(store_dir)
        params.setdefault("reasoning_bank", {}).setdefault(
            "path", os.path.join(os.path.abspath(directory), "reasoning-{agent_id}.sqlite"))
        certs_dir: str | None = None
        tls: ServerTLS | None = None
        if spawn == "process":
            if certs is None and swarm_cfg is not None:
                certs = swarm_cfg.certs
            if certs is None:
                certs = stack.enter_context(tempfile.TemporaryDirectory(prefix="midswarm-certs-"))
            certs_dir = os.fspath(certs)
            await trio.to_thread.run_sync(functools.partial(make_dev_certs, certs_dir,
                                                            agents=list(ids)))
            tls = ServerTLS(os.path.join(certs_dir, "coordinator.pem"),
                            os.path.join(certs_dir, "coordinator.key"),
                            ca=os.path.join(certs_dir, "ca.pem"), require_client_cert=True)
        coord = await stack.enter_async_context(open_coordinator(
            port=port, host=host, tls=tls, store_dir=directory, config=coord_cfg,
            parameters=params, quic_config=quic_config))
        if spawn == "process":
            assert certs_dir is not None
            threads = agent_threads if agent_threads is not None else max(
                1, (os.cpu_count() or 1) // max(1, len(ids)))
            cpus = _spread(len(ids), threads) if agent_cpus == "spread" else None
            for i, (agent_id, agent_type) in enumerate(ids.items()):
                await coord.spawn_agent(agent_id, [agent_type], certs_dir, threads=threads,
                                        log_file=agent_log, log_echo_level=agent_log_echo,
                                        cpus=None if cpus is None else cpus[i])
            await coord.wait_for_agents(list(ids), timeout=ready_timeout)
            yield Swarm(coord, ids, spawn, certs_dir)
            return
        async with open_service_nursery() as nursery:
            with trio.move_on_after(ready_timeout) as starting:
                for agent_id, agent_type in ids.items():
                    await nursery.start(functools.partial(
                        run_agent, functools.partial(memory_connector, coord, agent_id),
                        agent_id, [agent_type], factories=factories))
            if starting.cancelled_caught:
                raise TimeoutError(f"the agents did not all connect within {ready_timeout:g} s")
            await coord.wait_for_agents(list(ids), timeout=ready_timeout)
            try:
                yield Swarm(coord, ids, spawn, None)
            except BaseException:
                nursery.cancel_scope.cancel()
                raise
            # Drained agents return by themselves; the rest stop with the nursery.
            await coord.shutdown()
            nursery.cancel_scope.cancel()


def _spread(agents: int, threads: int) -> list[list[int]]:
    """For each of ``agents`` processes, ``threads`` CPUs of this process's
    affinity set, dealt out in turn (wrapping round when there are too few)."""
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not available:
        raise ConfigError("agent_cpus='spread' needs CPU affinity (Linux)")
    per = min(threads, len(available))
    return [[available[(i * per + j) % len(available)] for j in range(per)]
            for i in range(agents)]
