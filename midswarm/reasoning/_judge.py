"""Checking an experience, and the judging rule.

The rule (from the reference design): with predicted ``p`` and actual ``a``,
``m = min(|p - a| / max(|a|, 0.001), 1)`` is the relative miss, capped; the
score is ``0.5 + 0.5 (1 - m)`` when ``p`` and ``a`` have the same sign (the
predicted direction was right) and ``0.5 (1 - m)`` otherwise, so a direction
hit scores at least 0.5 and a miss at most 0.5 (below it, unless the miss is
so small that ``1 - m`` rounds to 1).  The direction flag itself comes from
the signs, never from the score.  Zero is its own sign:
predicting 0.01 for an actual 0 is a miss.  The floor of 0.001 on ``|a|``
keeps the ratio finite; inputs must be finite, so it never divides by zero
or produces NaN.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import attrs
import numpy as np

from ._metadata import check_metadata
from ._types import Experience

__all__ = ["ADAPT_BELOW", "DISTILL_ABOVE", "LEARN_ABOVE", "CheckedExperience",
           "check_experience", "direction_hit", "outcome_score"]

#: Verdict thresholds on the score.
LEARN_ABOVE = 0.7
ADAPT_BELOW = 0.3
DISTILL_ABOVE = 0.8
#: The smallest |actual| the relative miss divides by.
ACTUAL_FLOOR = 0.001


def outcome_score(expected: float, actual: float) -> float:
    """The judging rule's score in [0, 1] for finite ``expected`` and ``actual``."""
    miss = min(abs(expected - actual) / max(abs(actual), ACTUAL_FLOOR), 1.0)
    if _sign(expected) == _sign(actual):
        return 0.5 + 0.5 * (1.0 - miss)
    return 0.5 * (1.0 - miss)


def direction_hit(expected: float, actual: float) -> bool:
    """Same sign, zero counting as its own sign."""
    return _sign(expected) == _sign(actual)


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


@attrs.frozen
class CheckedExperience:
    """An :class:`Experience` whose fields passed :func:`check_experience`."""

    agent_id: str
    action: str
    expected: float
    actual: float
    similarity: float
    confidence: float
    context: dict[str, Any]
    vector: np.ndarray | None = attrs.field(eq=False)
    timestamp: float | None

    @property
    def hit(self) -> bool:
        """Whether the predicted direction was right."""
        return direction_hit(self.expected, self.actual)


def _real(value: Any, name: str) -> float:
    if type(value) is float and math.isfinite(value):
        return value  # the common case, without the ABC check below
    if value is None:
        raise ValueError(f"Experience.{name} is None: cannot judge an experience without it")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Experience.{name} must be a real number, got {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"Experience.{name} is {out}: cannot judge without a finite value")
    return out


def _name(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"Experience.{name} must be a non-empty str, got {value!r}")
    return value


def check_experience(experience: Any) -> CheckedExperience:
    """Validate every field; raise :class:`TypeError`/:class:`ValueError` naming the bad one."""
    if not isinstance(experience, Experience):
        raise TypeError(f"expected an Experience, got {type(experience).__name__}")
    vector = experience.vector
    if vector is not None:
        try:
            arr = np.asarray(vector)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"Experience.vector must be an array of numbers: {exc}") from None
        if arr.dtype.kind not in "biuf" or arr.ndim != 1 or arr.size == 0:
            raise ValueError(
                f"Experience.vector must be a non-empty 1-d array of real numbers, got "
                f"dtype {arr.dtype} shape {arr.shape}")
        vector = arr.astype(np.float32)
        if not np.isfinite(vector).all():
            raise ValueError("Experience.vector contains NaN or infinity")
        if not vector.any():
            raise ValueError("Experience.vector is all zeros: it has no direction to compare")
    timestamp = experience.timestamp
    if timestamp is not None:
        timestamp = _real(timestamp, "timestamp")
    return CheckedExperience(
        agent_id=_name(experience.agent_id, "agent_id"),
        action=_name(experience.action, "action"),
        expected=_real(experience.expected, "expected"),
        actual=_real(experience.actual, "actual"),
        similarity=_real(experience.similarity, "similarity"),
        confidence=_real(experience.confidence, "confidence"),
        context=check_metadata(experience.context, "Experience.context"),
        vector=vector,
        timestamp=timestamp,
    )
