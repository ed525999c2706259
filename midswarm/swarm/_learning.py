"""The learning loop's bookkeeping: predictions awaiting their outcome.

Every pattern-match answer the coordinator hands out is remembered (a
bounded table, oldest forgotten first) under its task id together with the
matchers credited with it.  When the caller learns the actual outcome --
the horizon has passed in the data -- :meth:`Predictions.experiences` turns
the prediction into one :class:`~midswarm.reasoning.Experience` per credited
matcher; the coordinator sends them to the ReasoningBank actor and routes
the adaptation commands in its verdicts to the agents.

Credit: a query is scattered to every matcher and their top-k lists are
merged, so the matchers credited with a prediction are those that
contributed at least one match to the merged top-k (each one's threshold and
k decided which of its matches were there).  A query with no matches at all
credits every matcher that was asked.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import trio

from ..actors import ActorError
from ..reasoning import PARAMETER_LIMITS, AdaptationCommand, Experience
from ._protocol import PatternMatchResult

if TYPE_CHECKING:
    from ._delivery import Dispatcher
    from ._records import AgentRecord

__all__ = ["LearningCounters", "Prediction", "Predictions", "route_adaptation"]

log = logging.getLogger("midswarm.swarm")

ACTION = "pattern_match"


class Prediction:
    __slots__ = ("task_id", "result", "contributors")

    def __init__(self, task_id: int, result: PatternMatchResult,
                 contributors: list[str]) -> None:
        self.task_id = task_id
        self.result = result
        self.contributors = contributors


def _flat_context(context: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in context.items():
        if isinstance(value, bool | str):
            out[str(key)] = value
        elif isinstance(value, int | float | np.integer | np.floating) and math.isfinite(value):
            out[str(key)] = value.item() if isinstance(value, np.generic) else value
    return out


def check_actual(actual: Any) -> float:
    """An outcome as given to ``report_outcome``: a finite int or float (not a
    bool); raises :class:`ValueError` otherwise."""
    if isinstance(actual, bool) or not isinstance(actual, int | float) \
            or not math.isfinite(actual):
        raise ValueError(f"actual must be a finite number, got {actual!r}")
    return float(actual)


def prediction_task_id(which: PatternMatchResult | int,
                       task_id_of: Callable[[PatternMatchResult], int | None],
                       whose: str) -> int:
    """The task id ``which`` stands for: itself, or the id ``task_id_of``
    knows for a result.  Raises :class:`KeyError` for a result it does not
    know (the message ends with ``whose``) and :class:`TypeError` for
    anything else."""
    if isinstance(which, PatternMatchResult):
        task_id = task_id_of(which)
        if task_id is None:
            raise KeyError(f"this PatternMatchResult is not a pending prediction of this "
                           f"{whose}")
        return task_id
    if isinstance(which, int) and not isinstance(which, bool):
        return which
    raise TypeError(f"expected a PatternMatchResult or a task id, got {type(which).__name__}")


class Predictions:
    """Pattern-match answers waiting for their outcome (at most ``capacity``)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._by_task: OrderedDict[int, Prediction] = OrderedDict()
        # id(result) -> task id; safe because the table holds the result alive.
        self._by_object: dict[int, int] = {}

    def remember(self, task_id: int, result: PatternMatchResult,
                 contributors: list[str]) -> None:
        self._by_task[task_id] = Prediction(task_id, result, contributors)
        self._by_object[id(result)] = task_id
        while len(self._by_task) > self.capacity:
            _old_id, old = self._by_task.popitem(last=False)
            self._by_object.pop(id(old.result), None)

    def task_id_of(self, result: PatternMatchResult) -> int | None:
        """The task id of a result this table still remembers."""
        task_id = self._by_object.get(id(result))
        if task_id is None:
            return None
        prediction = self._by_task.get(task_id)
        return task_id if prediction is not None and prediction.result is result else None

    def take(self, which: PatternMatchResult | int) -> Prediction:
        """Remove and return a prediction, by its result object or task id.

        Raises :class:`KeyError` if it is unknown, already reported, or forgotten.
        """
        task_id = prediction_task_id(which, self.task_id_of, "coordinator (already reported, "
                                     "forgotten, or not from submit)")
        prediction = self._by_task.pop(task_id, None)
        if prediction is None:
            raise KeyError(f"task {task_id} is not a pending prediction (unknown, already "
                           f"reported, or forgotten)")
        self._by_object.pop(id(prediction.result), None)
        return prediction

    def __len__(self) -> int:
        return len(self._by_task)

    @staticmethod
    def experiences(prediction: Prediction, actual: float,
                    parameters: Mapping[str, Mapping[str, Any]],
                    timestamp: float | None = None) -> list[Experience]:
        """One experience per credited matcher.  ``parameters`` maps agent id to
        that matcher's current parameters, reported in the context."""
        result = prediction.result
        vector = np.asarray(result.pattern_vector, dtype=np.float64)
        base = _flat_context(result.market_context)
        out = []
        for agent_id in prediction.contributors:
            context = dict(base)
            for key, value in parameters.get(agent_id, {}).items():
                if key in PARAMETER_LIMITS and isinstance(value, int | float) \
                        and not isinstance(value, bool):
                    context[key] = value
            out.append(Experience(
                agent_id=agent_id, action=ACTION, expected=float(result.expected_outcome),
                actual=float(actual), similarity=float(result.similarity),
                confidence=float(result.confidence), context=context,
                vector=vector if vector.ndim == 1 and vector.size else None,
                timestamp=timestamp))
        return out


@attrs.define
class LearningCounters:
    """The learning loop's counters (reported in :class:`CoordinatorStats`)."""

    experiences: int = 0
    verdicts: int = 0
    adaptations_issued: int = 0
    adaptations_sent: int = 0
    adaptations_acked: int = 0
    adaptations_deferred: int = 0


_WHOLE_PARAMETERS = ("window", "k")


async def route_adaptation(command: AdaptationCommand, record: AgentRecord | None,
                           dispatcher: Dispatcher, timeout: float,
                           counters: LearningCounters) -> bool:
    """Send ``command`` to its agent over the control stream and wait for the
    agent's ack (it acks once its matcher applied the command).

    The suggested values (clamped into the limits) are also kept in the
    agent's record, so the next welcome carries them if the agent is not
    connected now or reconnects later.  Returns whether the agent acked.
    """
    if record is None:
        counters.adaptations_deferred += 1
        log.warning("adaptation for unknown agent %r dropped", command.agent_id)
        return False
    params = record.parameters.setdefault("pattern_matcher", {})
    for change in command.changes:
        limits = PARAMETER_LIMITS.get(change.parameter)
        if limits is None:
            continue
        value = min(max(float(change.suggested), limits[0]), limits[1])
        params[change.parameter] = (int(round(value)) if change.parameter
                                    in _WHOLE_PARAMETERS else value)
    session = record.session
    link = session.links.get("pattern_matcher") if session is not None else None
    if session is None or link is None or session.draining:
        counters.adaptations_deferred += 1
        return False
    acked = session.expect_ack("adaptation", command.id)
    try:
        await session.send_control(command)
        counters.adaptations_sent += 1
        with trio.move_on_after(timeout):
            await acked.wait()
        if not acked.is_set():
            return False
        counters.adaptations_acked += 1
        try:
            current = await dispatcher.call(link, "parameters", timeout)
        except ActorError:
            return True
        if isinstance(current, dict):
            record.parameters["pattern_matcher"] = dict(current)
        return True
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.warning("adaptation %d for %s not sent: %r", command.id, command.agent_id, exc)
        counters.adaptations_deferred += 1
        return False
    finally:
        session.forget_ack("adaptation", command.id)
