"""The wire protocol between a coordinator and its *clients*: programs that
submit work to a coordinator running in another process (``midswarm
coordinator``) instead of embedding one.

Theory of operation
-------------------
A client holds one QUIC connection to the coordinator, on the same port the
agents use.

* The **control stream** is the first stream the client opens.  Its first
  message is :class:`ClientHello` (where an agent sends ``AgentHello``); the
  coordinator answers :class:`ClientWelcome` or ``Refused`` and closes the
  connection.  Then the stream stays open and quiet: the coordinator ends it
  when it shuts down, which tells the client that no more requests will be
  taken.  A client that closes it ends its session.
* Each request gets a **request stream** of its own, opened by the client, so
  requests run concurrently, and cancelling one (the client resets its
  stream) cancels only that one on the coordinator.  A request stream carries
  exactly four messages, in this order -- anything else is a protocol error
  that resets that stream (the connection and its other requests go on):

  ========== =========================== =====================================
  sender     message                     state after
  ========== =========================== =====================================
  client     :class:`ClientRequest`      ``AWAIT_BODY``
  client     the body (see below)        ``RUNNING``
  coordinator :class:`ClientReply`       ``AWAIT_RESULT`` if ``ok``, else done
  coordinator the result (see below)     done
  ========== =========================== =====================================

  The client keeps its side open until it has the reply: ending it earlier
  (FIN or reset) abandons the request, as a cancelled ``submit`` does.

The body's class says what is asked (:data:`REQUESTS`): a task message
(:data:`~midswarm.swarm.TASK_AGENT_TYPES`) is a ``submit`` and its result
message comes back; :class:`AddPatterns` answers :class:`PatternIds`;
:class:`ReportOutcome` answers the ReasoningBank's ``Verdicts``;
:class:`StatusQuery` answers :class:`StatusReport`.  A failure comes back as
a :class:`ClientReply` with ``ok`` false, the exception's type name, message
and plain arguments, from which the client raises the same exception class
where it knows it.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from ..transport import PROTOCOL_VERSION, message
from ._protocol import TASK_AGENT_TYPES, Verdicts
from ._records import AgentInfo, CoordinatorStats

__all__ = [
    "REQUESTS",
    "AddPatterns",
    "ClientHello",
    "ClientReply",
    "ClientRequest",
    "ClientWelcome",
    "PatternIds",
    "ReportOutcome",
    "StatusQuery",
    "StatusReport",
]


@message("swarm.client_hello")
@attrs.frozen
class ClientHello:
    """First message of a client.  ``version`` must equal the coordinator's
    protocol version; ``client_id`` must equal the identity in the client's
    TLS certificate when the coordinator requires client certificates."""

    client_id: str
    version: int = PROTOCOL_VERSION


@message("swarm.client_welcome")
@attrs.frozen
class ClientWelcome:
    """The coordinator's answer to a valid :class:`ClientHello`."""

    coordinator_id: str


@message("swarm.client_request")
@attrs.frozen
class ClientRequest:
    """Opens a request stream; the body follows.  ``timeout`` bounds a
    ``submit`` on the coordinator (seconds, ``None``: no bound); ``agent``
    pins it to that agent (see :meth:`Coordinator.submit`)."""

    timeout: float | None = None
    agent: str | None = None


@message("swarm.client_reply")
@attrs.frozen
class ClientReply:
    """First message of the answer.  ``ok``: the result follows.  Else the
    request failed with an exception of type ``error_type`` (its name),
    ``message`` (its text) and ``args`` (its arguments, those that are plain
    data).  ``task_id``: the id under which a pattern-match answer waits for
    its outcome (:class:`ReportOutcome`), else 0."""

    ok: bool
    task_id: int = 0
    error_type: str = ""
    message: str = ""
    args: list[Any] = attrs.Factory(list)


@message("swarm.add_patterns")
@attrs.frozen
class AddPatterns:
    """Body: add these patterns (one per row) and their known outcomes."""

    vectors: np.ndarray = attrs.field(eq=False)
    outcomes: np.ndarray = attrs.field(eq=False)


@message("swarm.pattern_ids")
@attrs.frozen
class PatternIds:
    """Result of :class:`AddPatterns`: the new patterns' ids."""

    ids: list[int]


@message("swarm.report_outcome")
@attrs.frozen
class ReportOutcome:
    """Body: the outcome ``actual`` of the pattern-match answer ``task_id``."""

    task_id: int
    actual: float


@message("swarm.status_query")
@attrs.frozen
class StatusQuery:
    """Body: ask for the coordinator's agents and counters."""


@message("swarm.status_report")
@attrs.frozen
class StatusReport:
    """Result of :class:`StatusQuery`."""

    coordinator_id: str
    agents: dict[str, AgentInfo]
    stats: CoordinatorStats


#: Body class -> the result class that answers it.  Every task message is a
#: ``submit`` and is answered by whatever result its agent type gives.
REQUESTS: dict[type, type | None] = {
    **{task: None for task in TASK_AGENT_TYPES},
    AddPatterns: PatternIds,
    ReportOutcome: Verdicts,
    StatusQuery: StatusReport,
}
