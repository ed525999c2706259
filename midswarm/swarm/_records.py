"""What the coordinator remembers and reports about agents, and its counters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from ._session import AgentSession

__all__ = ["AgentInfo", "AgentRecord", "CoordinatorStats"]


@attrs.frozen
class AgentInfo:
    """What :attr:`Coordinator.agents` says about one agent.

    ``state`` is ``"connecting"`` (welcomed, its actors not yet taking
    tasks), ``"connected"``, ``"draining"`` or ``"disconnected"``.
    ``in_flight`` maps each hosted type to the tasks sent to it and not yet
    answered; ``completed``/``failed`` count answers and failures (delivery
    failures included) over all its sessions.  ``restarts`` counts how often
    the coordinator's supervisor restarted the agent's process (agents it
    spawned); ``actor_restarts`` how often the agent reported restarting one
    of its actors; ``sessions`` how many times it connected.  ``resumed``
    says whether the current connection resumed an earlier TLS session (the
    agent's hello then came as 0-RTT early data).
    """

    agent_id: str
    types: tuple[str, ...]
    state: str
    in_flight: dict[str, int]
    completed: int
    failed: int
    restarts: int
    actor_restarts: int
    sessions: int
    pid: int | None
    resumed: bool
    parameters: dict[str, dict[str, Any]]
    last_disconnect_reason: str


@attrs.frozen
class CoordinatorStats:
    """Counters since the coordinator started (a snapshot)."""

    submitted: int
    completed: int
    failed: int
    undeliverable: int
    timed_out: int
    resent: int
    duplicates: int
    late: int
    in_flight: int
    patterns: int
    predictions_pending: int
    experiences: int
    verdicts: int
    adaptations_issued: int
    adaptations_sent: int
    adaptations_acked: int
    adaptations_deferred: int


class AgentRecord:
    """What the coordinator remembers about an agent id, across its sessions."""

    def __init__(self, agent_id: str, types: list[str]) -> None:
        self.agent_id = agent_id
        self.types = types
        self.session: AgentSession | None = None
        self.sessions = 0
        self.actor_restarts = 0
        #: Per type, parameters to send in the next Welcome (adaptations included).
        self.parameters: dict[str, dict[str, Any]] = {}
        self.process: Any = None  # a _spawn.SpawnedAgent for agents we spawned
        self.disconnected_at: float | None = None
        self.last_end_reason = ""
        self.completed = 0
        self.failed = 0

    def info(self, parameters: dict[str, dict[str, Any]]) -> AgentInfo:
        """A snapshot; ``parameters`` are what its next welcome would carry."""
        session = self.session
        in_flight = {}
        completed, failed = self.completed, self.failed
        resumed = False
        if session is not None:
            for agent_type, link in session.links.items():
                in_flight[agent_type] = link.in_flight
                completed += link.completed
                failed += link.failed
            resumed = bool(getattr(session.conn, "session_resumed", False))
        state = ("disconnected" if session is None else
                 "draining" if session.draining else
                 "connected" if session.ready else "connecting")
        process = self.process
        return AgentInfo(
            agent_id=self.agent_id, types=tuple(self.types), state=state, in_flight=in_flight,
            completed=completed, failed=failed,
            restarts=process.restarts if process is not None else 0,
            actor_restarts=self.actor_restarts, sessions=self.sessions,
            pid=(session.pid if session is not None else
                 process.pid if process is not None else None),
            resumed=resumed, parameters={t: dict(p) for t, p in parameters.items()},
            last_disconnect_reason=self.last_end_reason)
