"""The adaptation policy: when and how far to move a pattern matcher's parameters.

Over an agent's most recent judged outcomes (at most :data:`OUTCOME_WINDOW`,
at least :data:`MIN_OUTCOMES`, and only those recorded after the last command
the bank issued to it, so the effect of one change is seen before the next):

* success rate (share of direction hits) below :data:`RAISE_BELOW` raises the
  similarity and confidence thresholds by :data:`THRESHOLD_STEP`: only closer,
  surer matches may predict;
* above :data:`LOWER_ABOVE` lowers them by the same step: let more matches in;
* in between, nothing changes (the gap is hysteresis against flip-flopping).

Every value stays inside :data:`PARAMETER_LIMITS`; a parameter already at its
limit is left out, and a command with no change is not issued.  ``window``
and ``k`` are part of the vocabulary (limits, defaults, validation of reported
values) but this policy does not move them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

from ._types import ParameterChange

__all__ = [
    "DEFAULT_PARAMETERS",
    "LOWER_ABOVE",
    "MIN_OUTCOMES",
    "OUTCOME_WINDOW",
    "PARAMETER_LIMITS",
    "RAISE_BELOW",
    "THRESHOLD_STEP",
    "check_parameters",
    "propose",
    "resolve_parameters",
]

#: Inclusive bounds for every parameter a pattern matcher understands.
PARAMETER_LIMITS: dict[str, tuple[float, float]] = {
    "similarity_threshold": (0.50, 0.99),
    "confidence_threshold": (0.30, 0.95),
    "window": (4.0, 1024.0),
    "k": (1.0, 100.0),
}
#: Assumed when neither the caller nor the agent's experiences report a value.
DEFAULT_PARAMETERS: dict[str, float] = {
    "similarity_threshold": 0.80,
    "confidence_threshold": 0.60,
    "window": 32.0,
    "k": 10.0,
}
THRESHOLD_STEP = 0.02
RAISE_BELOW = 0.55
LOWER_ABOVE = 0.75
OUTCOME_WINDOW = 100
MIN_OUTCOMES = 20
_THRESHOLDS = ("similarity_threshold", "confidence_threshold")
_WHOLE = ("window", "k")


def check_parameters(values: Mapping[str, Any], name: str = "current") -> dict[str, float]:
    """Validate reported parameter values (known names, finite numbers, whole window/k)."""
    if not isinstance(values, Mapping):
        raise TypeError(f"{name} must be a mapping of parameter -> value")
    out: dict[str, float] = {}
    for key, value in values.items():
        if key not in PARAMETER_LIMITS:
            raise ValueError(
                f"{name}: unknown parameter {key!r} (known: {', '.join(PARAMETER_LIMITS)})")
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(
                float(value)):
            raise ValueError(f"{name}[{key!r}] must be a finite number, got {value!r}")
        number = float(value)
        if key in _WHOLE and not number.is_integer():
            raise ValueError(f"{name}[{key!r}] must be a whole number, got {value!r}")
        out[key] = number
    return out


def resolve_parameters(explicit: Mapping[str, float] | None,
                       contexts: Iterable[Mapping[str, Any]],
                       last_issued: Mapping[str, float]) -> dict[str, float]:
    """The values to adapt from, per parameter: ``explicit``, else the newest
    experience context that reports it (``contexts`` newest first), else the
    parameter set the last command left the agent with, else
    :data:`DEFAULT_PARAMETERS`."""
    resolved = dict(DEFAULT_PARAMETERS)
    resolved.update(last_issued)
    found: dict[str, float] = {}
    for context in contexts:
        for key in PARAMETER_LIMITS:
            if key not in found and key in context:
                value = context[key]
                if isinstance(value, numbers.Real) and not isinstance(value, bool) and \
                        math.isfinite(float(value)):
                    found[key] = float(value)
        if len(found) == len(PARAMETER_LIMITS):
            break
    resolved.update(found)
    if explicit:
        resolved.update(explicit)
    return resolved


def propose(success_rate: float, outcomes: int,
            current: Mapping[str, float]) -> tuple[list[ParameterChange], str] | None:
    """The changes (and overall reason) the policy asks for, or ``None``."""
    if success_rate < RAISE_BELOW:
        direction = 1.0
        why = (f"success rate {success_rate:.2f} over the last {outcomes} outcomes is below "
               f"{RAISE_BELOW}: require closer, surer matches")
    elif success_rate > LOWER_ABOVE:
        direction = -1.0
        why = (f"success rate {success_rate:.2f} over the last {outcomes} outcomes is above "
               f"{LOWER_ABOVE}: admit more matches")
    else:
        return None
    changes = []
    for name in _THRESHOLDS:
        lo, hi = PARAMETER_LIMITS[name]
        value = current[name]
        target = min(max(value + direction * THRESHOLD_STEP, lo), hi)
        # Rounding keeps repeated steps from drifting by float error.
        target = round(target, 6)
        if target == value:
            continue
        if not lo <= value <= hi:
            reason = f"bring {name} back inside its limits [{lo}, {hi}]; {why}"
        else:
            verb = "raise" if target > value else "lower"
            reason = f"{verb} {name} by {THRESHOLD_STEP} (limits [{lo}, {hi}]): {why}"
        changes.append(ParameterChange(parameter=name, current=value, suggested=target,
                                       reason=reason))
    if not changes:
        return None
    return changes, why
