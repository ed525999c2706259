"""The swarm's wire messages and the control-stream protocol.

Theory of operation
-------------------
An agent process holds one QUIC connection to the coordinator.

* The **control stream** is the first stream the agent opens.  Its first
  message is :class:`AgentHello`; the coordinator answers :class:`Welcome` or
  :class:`Refused` (and then closes the connection).  After the welcome, the
  coordinator sends :class:`AdaptationCommand`, :class:`Drain` and
  :class:`Heartbeat` on it; the agent sends :class:`Heartbeat` and
  :class:`Ack`.
* Each hosted actor gets an **actor stream**, opened by the agent after the
  welcome.  Its first message is :class:`StreamBind` naming the actor; from then
  on the stream carries the actor runtime's request/reply frames
  (:func:`midswarm.actors.serve_actor` on the agent,
  :func:`midswarm.actors.remote_ref` on the coordinator), whose payloads are the
  task and result messages below.

The control stream's states, in the style of h11's ``_state.py``: each row is
(state, event) -> next state; anything not in the table is a protocol error
that closes the connection with a reason.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from ..reasoning import AdaptationCommand, Experience, ParameterChange, Verdict
from ..transport import PROTOCOL_VERSION, ProtocolError, converter, message

__all__ = [
    "AGENT_TYPES",
    "CONTROL_TRANSITIONS",
    "TASK_AGENT_TYPES",
    "Ack",
    "ActorRestarted",
    "AdaptationCommand",
    "AgentHello",
    "CorrelationTask",
    "Drain",
    "ExperienceBatch",
    "FeatureBlock",
    "FeatureTask",
    "Gradients",
    "Heartbeat",
    "Match",
    "ParameterChange",
    "PatternLibraryAdd",
    "PatternMatchResult",
    "PatternMatchTask",
    "Refused",
    "StrategyCorrelation",
    "StreamBind",
    "TaskFailed",
    "TrainStep",
    "Verdicts",
    "Welcome",
    "check_peer",
    "next_control_state",
]

#: The five agent types an agent can host.
AGENT_TYPES = ("pattern_matcher", "correlator", "feature_engineer", "neural_trainer",
               "reasoning_bank")

# --- control stream ---------------------------------------------------------------


@message("swarm.hello")
@attrs.frozen
class AgentHello:
    """First message of an agent.  ``version`` must equal the coordinator's
    protocol version; ``agent_id`` must equal the identity in the agent's TLS
    certificate when the coordinator requires client certificates."""

    agent_id: str
    agent_types: list[str]
    capabilities: dict[str, Any] = attrs.Factory(dict)
    version: int = PROTOCOL_VERSION


@message("swarm.welcome")
@attrs.frozen
class Welcome:
    """The coordinator's answer to a valid hello.

    ``stream_assignments`` maps each accepted agent type to the actor name the
    agent binds on that type's stream; ``parameters`` maps agent type to the
    initial parameters of that actor (thresholds, shard, credit, ...).
    """

    coordinator_id: str
    stream_assignments: dict[str, str]
    parameters: dict[str, dict[str, Any]] = attrs.Factory(dict)
    #: Seconds between the heartbeats each side sends on the control stream;
    #: a side that hears nothing for several intervals drops the connection.
    heartbeat_interval: float = 1.0


@message("swarm.refused")
@attrs.frozen
class Refused:
    """The hello was refused; the connection closes after this.

    ``retry_after`` is ``None`` for a refusal that will not change (wrong
    version, identity mismatch, unknown agent type), else the seconds after
    which saying hello again may succeed (the agent id is still in use by a
    connection the coordinator has not yet seen die).
    """

    reason: str
    retry_after: float | None = None


@message("swarm.bind")
@attrs.frozen
class StreamBind:
    """First message on an actor stream: which actor this stream is the mailbox of."""

    agent_id: str
    agent_type: str
    actor_name: str


@message("swarm.heartbeat")
@attrs.frozen
class Heartbeat:
    seq: int
    sent_at: float
    in_flight: int = 0


@message("swarm.drain")
@attrs.frozen
class Drain:
    """Stop taking new tasks, finish the ones in flight, then disconnect."""

    reason: str = ""


@message("swarm.actor_restarted")
@attrs.frozen
class ActorRestarted:
    """Agent -> coordinator: the local supervisor restarted a hosted actor, so
    its in-memory state (a pattern matcher's shard) was rebuilt from scratch."""

    agent_type: str
    actor_name: str
    restarts: int


@message("swarm.ack")
@attrs.frozen
class Ack:
    """Acknowledges a control message (by its kind and id, e.g. an adaptation)."""

    kind: str
    id: int


# --- tasks and results ------------------------------------------------------------


@message("swarm.match")
@attrs.frozen
class Match:
    """One historical pattern close to the query."""

    pattern_id: int
    distance: float
    similarity: float
    outcome: float


@message("swarm.pattern_task")
@attrs.frozen
class PatternMatchTask:
    """Find the historical patterns nearest to ``window``.

    ``horizon`` is the number of bars ahead the outcome refers to; ``params``
    may override the matcher's own (``k``, ``window`` = DTW band,
    ``similarity_threshold``, ``confidence_threshold``) for this task only.
    """

    window: np.ndarray = attrs.field(eq=False)
    horizon: int = 1
    params: dict[str, Any] = attrs.Factory(dict)
    context: dict[str, Any] = attrs.Factory(dict)


@message("swarm.pattern_result")
@attrs.frozen
class PatternMatchResult:
    pattern_type: str
    pattern_vector: np.ndarray = attrs.field(eq=False)
    similarity: float
    confidence: float
    expected_outcome: float
    actual_outcome: float | None
    compute_time_ms: float
    market_context: dict[str, Any] = attrs.Factory(dict)
    matches: list[Match] = attrs.Factory(list)


# A result's matches travel as four columns -- [pattern ids, distances,
# similarities, outcomes] -- rather than as k maps that each repeat the field
# names: with k = 10 a reply is a third smaller and decodes in about half the
# time, on the coordinator's path once per shard.


def _matches_to_columns(matches: list[Match]) -> list[list[Any]]:
    return [[m.pattern_id for m in matches], [m.distance for m in matches],
            [m.similarity for m in matches], [m.outcome for m in matches]]


def _matches_from_columns(value: Any, _type: Any) -> list[Match]:
    if not (type(value) is list and len(value) == 4
            and all(type(column) is list for column in value)):
        raise ProtocolError("matches: expected four columns (ids, distances, similarities, "
                            "outcomes)")
    ids, distances, similarities, outcomes = value
    count = len(ids)
    if not len(distances) == len(similarities) == len(outcomes) == count:
        raise ProtocolError("matches: the four columns differ in length")
    if not set(map(type, ids)) <= _INT:
        raise ProtocolError("matches: pattern ids must be integers")
    if not set(map(type, distances + similarities + outcomes)) <= _NUMBER:
        raise ProtocolError("matches: distances, similarities and outcomes must be numbers")
    return list(map(Match, ids, map(float, distances), map(float, similarities),
                    map(float, outcomes)))


_INT = frozenset((int,))
_NUMBER = frozenset((int, float))


converter.register_unstructure_hook_func(lambda t: t == list[Match], _matches_to_columns)
converter.register_structure_hook_func(lambda t: t == list[Match], _matches_from_columns)


@message("swarm.library_add")
@attrs.frozen
class PatternLibraryAdd:
    """Add patterns (one per row) with their known outcomes to a matcher's shard."""

    vectors: np.ndarray = attrs.field(eq=False)
    outcomes: np.ndarray = attrs.field(eq=False)
    ids: np.ndarray = attrs.field(eq=False)


@message("swarm.correlation_task")
@attrs.frozen
class CorrelationTask:
    """Signal sequences of several strategies (one row per strategy)."""

    strategies: np.ndarray = attrs.field(eq=False)
    names: list[str] = attrs.Factory(list)
    epsilon: float = 0.5
    window: int | None = None


@message("swarm.correlation")
@attrs.frozen
class StrategyCorrelation:
    names: list[str]
    matrix: np.ndarray = attrs.field(eq=False)
    influence: np.ndarray = attrs.field(eq=False)
    rank_correlation: np.ndarray | None = attrs.field(default=None, eq=False)


@message("swarm.feature_task")
@attrs.frozen
class FeatureTask:
    """Raw OHLCV bars, shape (n, 5): open, high, low, close, volume."""

    ohlcv: np.ndarray = attrs.field(eq=False)
    params: dict[str, Any] = attrs.Factory(dict)


@message("swarm.features")
@attrs.frozen
class FeatureBlock:
    names: list[str]
    values: np.ndarray = attrs.field(eq=False)


@message("swarm.train_step")
@attrs.frozen
class TrainStep:
    """Compute gradients of the loss on ``(x, y)`` at parameters ``params``
    (version ``model_version``)."""

    model_version: int
    x: np.ndarray = attrs.field(eq=False)
    y: np.ndarray = attrs.field(eq=False)
    params: list[np.ndarray] = attrs.field(factory=list, eq=False)


@message("swarm.gradients")
@attrs.frozen
class Gradients:
    model_version: int
    grads: list[np.ndarray] = attrs.field(eq=False)
    batch_size: int
    loss: float


@message("swarm.experiences")
@attrs.frozen
class ExperienceBatch:
    experiences: list[Experience]


@message("swarm.verdicts")
@attrs.frozen
class Verdicts:
    verdicts: list[Verdict]
    ids: list[int] = attrs.Factory(list)
    adaptations: list[AdaptationCommand] = attrs.Factory(list)


@message("swarm.task_failed")
@attrs.frozen
class TaskFailed:
    """A task could not be done: the error, boxed."""

    task_id: int
    error_type: str
    message: str
    traceback: str = ""


#: Task message class -> the agent type that handles it.
TASK_AGENT_TYPES: dict[type, str] = {
    PatternMatchTask: "pattern_matcher",
    CorrelationTask: "correlator",
    FeatureTask: "feature_engineer",
    TrainStep: "neural_trainer",
    ExperienceBatch: "reasoning_bank",
}

# The reasoning package's value types travel as they are.
for _tag, _cls in (("reasoning.experience", Experience), ("reasoning.verdict", Verdict),
                   ("reasoning.change", ParameterChange),
                   ("reasoning.adaptation", AdaptationCommand)):
    message(_tag)(_cls)
del _tag, _cls


# --- the control stream's state machine -----------------------------------------------

#: (role, state, message class name) -> next state.  Roles: "agent" sends,
#: "coordinator" sends.  States: AWAIT_HELLO -> AWAIT_WELCOME -> ACTIVE ->
#: DRAINING -> CLOSED.
CONTROL_TRANSITIONS: dict[tuple[str, str, str], str] = {
    ("agent", "AWAIT_HELLO", "AgentHello"): "AWAIT_WELCOME",
    ("coordinator", "AWAIT_WELCOME", "Welcome"): "ACTIVE",
    ("coordinator", "AWAIT_WELCOME", "Refused"): "CLOSED",
    ("agent", "ACTIVE", "Heartbeat"): "ACTIVE",
    ("coordinator", "ACTIVE", "Heartbeat"): "ACTIVE",
    ("coordinator", "ACTIVE", "AdaptationCommand"): "ACTIVE",
    ("agent", "ACTIVE", "Ack"): "ACTIVE",
    ("coordinator", "ACTIVE", "Drain"): "DRAINING",
    ("agent", "DRAINING", "Heartbeat"): "DRAINING",
    ("agent", "DRAINING", "Ack"): "DRAINING",
    ("agent", "ACTIVE", "ActorRestarted"): "ACTIVE",
    ("agent", "DRAINING", "ActorRestarted"): "DRAINING",
    ("coordinator", "DRAINING", "Heartbeat"): "DRAINING",
}


def next_control_state(state: str, sender: str, msg: object) -> str:
    """The control stream's state after ``sender`` sends ``msg`` in ``state``.

    Raises :class:`~midswarm.transport.ProtocolError` for a message the table
    does not allow there.
    """
    from ..transport import ProtocolError

    key = (sender, state, type(msg).__name__)
    try:
        return CONTROL_TRANSITIONS[key]
    except KeyError:
        raise ProtocolError(
            f"{sender} may not send {type(msg).__name__} in control state {state}") from None


def check_peer(version: object, kind: str, peer_id: object, identity: str | None,
               trusted: bool) -> str | None:
    """The reason to refuse a hello (an agent's or a client's: ``kind``) for its
    protocol ``version``, its claimed ``peer_id``, or -- when the connection is
    ``trusted`` to carry one (mutual TLS) -- that id not being the certificate's
    ``identity``; ``None`` if none of these is wrong."""
    if version != PROTOCOL_VERSION:
        return (f"protocol version {version!r} is not supported; this coordinator "
                f"speaks version {PROTOCOL_VERSION}")
    if not isinstance(peer_id, str) or not peer_id.strip():
        return f"{kind}_id must be a non-empty string, got {peer_id!r}"
    if trusted:
        if identity is None:
            return "the connection carries no authenticated identity"
        if identity != peer_id:
            return (f"{kind} id {peer_id!r} does not match the identity "
                    f"{identity!r} of its certificate")
    return None
