"""Errors the swarm raises to its callers.

A task's own failure (the actor's handler raised on that input) is not one of
these: the caller gets the actor runtime's :class:`~midswarm.actors.ActorFailed`,
carrying the remote exception's type, message and traceback text.
"""

from __future__ import annotations

import trio

from ..transport import ConnectionClosed

__all__ = [
    "AgentRefused",
    "CONNECTION_ERRORS",
    "ClientRefused",
    "CoordinatorClosed",
    "NoAgentAvailable",
    "RemoteError",
    "SwarmError",
    "TaskTimeout",
    "TaskUndeliverable",
]


#: What a send or receive raises when its stream or connection is gone (the
#: peer closed, reset or dropped it): not an error of this side's making.
CONNECTION_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionClosed,
                     trio.EndOfChannel)


class SwarmError(Exception):
    """Base class of the swarm's errors."""


class AgentRefused(SwarmError):
    """The coordinator refused an agent's hello.

    ``retry_after`` is ``None`` when saying hello again cannot help (wrong
    protocol version, id not matching the certificate, unknown agent type).
    """

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason, retry_after)
        self.reason = reason
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"the coordinator refused the agent: {self.reason}"


class ClientRefused(SwarmError):
    """The coordinator refused a client's hello (wrong protocol version, id not
    matching the certificate, id not in its ``clients`` list, shutting down)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"the coordinator refused the client: {self.reason}"


class RemoteError(SwarmError):
    """A request to a remote coordinator failed with an exception the client
    does not rebuild (``error_type`` names it, ``message`` is its text)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(error_type, message)
        self.error_type = error_type
        self.message = message

    def __str__(self) -> str:
        return f"the coordinator failed the request: {self.error_type}: {self.message}"


class NoAgentAvailable(SwarmError):
    """No agent of the task's type connected within ``waited`` seconds."""

    def __init__(self, agent_type: str, waited: float) -> None:
        super().__init__(agent_type, waited)
        self.agent_type = agent_type
        self.waited = waited

    def __str__(self) -> str:
        return f"no {self.agent_type} agent is connected (waited {self.waited:g} s)"


class TaskUndeliverable(SwarmError):
    """A task was sent ``attempts`` times and no agent answered it.

    ``last_error`` is the last delivery failure (an
    :class:`~midswarm.actors.ActorUnreachable`, :class:`~midswarm.actors.ActorStopped`
    or :class:`~midswarm.actors.AskTimeout`).
    """

    def __init__(self, task_id: int, agent_type: str, attempts: int,
                 last_error: BaseException | None) -> None:
        super().__init__(task_id, agent_type, attempts, last_error)
        self.task_id = task_id
        self.agent_type = agent_type
        self.attempts = attempts
        self.last_error = last_error

    def __str__(self) -> str:
        return (f"task {self.task_id} for a {self.agent_type} was sent {self.attempts} time(s) "
                f"and never answered; last error: {self.last_error}")


class TaskTimeout(SwarmError, TimeoutError):
    """A ``submit(..., timeout=...)`` ran out of time."""

    def __init__(self, task_id: int, timeout: float) -> None:
        super().__init__(task_id, timeout)
        self.task_id = task_id
        self.timeout = timeout

    def __str__(self) -> str:
        return f"task {self.task_id} got no result within {self.timeout:g} s"


class CoordinatorClosed(SwarmError):
    """The coordinator is shutting down or has shut down."""
