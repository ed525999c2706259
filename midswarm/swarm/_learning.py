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

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..reasoning import PARAMETER_LIMITS, Experience
from ._protocol import PatternMatchResult

__all__ = ["Prediction", "Predictions"]

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
        if isinstance(which, PatternMatchResult):
            task_id = self.task_id_of(which)
            if task_id is None:
                raise KeyError("this PatternMatchResult is not a pending prediction of this "
                               "coordinator (already reported, forgotten, or not from submit)")
        elif isinstance(which, int) and not isinstance(which, bool):
            task_id = which
        else:
            raise TypeError(f"expected a PatternMatchResult or a task id, got "
                            f"{type(which).__name__}")
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
