"""Per-agent outcome history for the adaptation policy, kept in memory.

What :meth:`ReasoningBank.suggest` and :meth:`ReasoningBank.judge` need for
one agent is small: the direction hits of its last :data:`OUTCOME_WINDOW`
outcomes recorded after the last command, the newest parameter values it
reported among those, and the parameter set that last command left it with.
The bank loads this once per agent from SQLite and then keeps it current as it
records and issues commands, so judging does not re-read and re-parse a
hundred rows per experience.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections import deque
from collections.abc import Mapping
from typing import Any

import attrs

from ._adapt import (
    MIN_OUTCOMES,
    OUTCOME_WINDOW,
    PARAMETER_LIMITS,
    propose,
    resolve_parameters,
)
from ._types import ParameterChange

__all__ = ["AgentHistory", "Proposal", "load_history"]


@attrs.frozen
class Proposal:
    """What the policy asks for, with the figures behind it."""

    changes: list[ParameterChange]
    reason: str
    success_rate: float
    outcomes: int
    last_experience: int
    parameters: dict[str, float]


def _reported(context: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key in PARAMETER_LIMITS:
        value = context.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(
                value):
            out[key] = float(value)
    return out


@attrs.define
class AgentHistory:
    """One agent's recent outcomes and reports (see the module docstring)."""

    window: deque[tuple[int, bool]] = attrs.Factory(lambda: deque(maxlen=OUTCOME_WINDOW))
    hits: int = 0
    reports: dict[str, tuple[float, int]] = attrs.Factory(dict)
    command_parameters: dict[str, float] = attrs.Factory(dict)

    def observe(self, experience_id: int, hit: bool, context: Mapping[str, Any]) -> None:
        """Take in an outcome recorded after the last command (ids increase)."""
        if len(self.window) == self.window.maxlen:
            self.hits -= self.window[0][1]
        self.window.append((experience_id, hit))
        self.hits += hit
        for key, value in _reported(context).items():
            self.reports[key] = (value, experience_id)

    def commanded(self, parameters: Mapping[str, float]) -> None:
        """A command was issued covering every outcome seen so far."""
        self.window.clear()
        self.hits = 0
        self.reports.clear()
        self.command_parameters = dict(parameters)

    def proposal(self, explicit: Mapping[str, float] | None) -> Proposal | None:
        n = len(self.window)
        if n < MIN_OUTCOMES:
            return None
        rate = self.hits / n
        oldest = self.window[0][0]
        # Only reports from outcomes still in the window count, as after a reload.
        reported = {k: v for k, (v, i) in self.reports.items() if i >= oldest}
        params = resolve_parameters(explicit, [reported], self.command_parameters)
        decided = propose(rate, n, params)
        if decided is None:
            return None
        return Proposal(changes=decided[0], reason=decided[1], success_rate=rate, outcomes=n,
                        last_experience=self.window[-1][0], parameters=params)


def load_history(conn: sqlite3.Connection, agent_id: str) -> AgentHistory:
    """Rebuild one agent's history from the tables."""
    history = AgentHistory()
    last = conn.execute(
        "SELECT last_experience, parameters FROM adaptations WHERE agent_id = ? "
        "ORDER BY id DESC LIMIT 1", (agent_id,)).fetchone()
    if last is not None:
        history.command_parameters = json.loads(last[1])
    rows = conn.execute(
        "SELECT id, hit, context FROM experiences WHERE agent_id = ? AND id > ? "
        "ORDER BY id DESC LIMIT ?",
        (agent_id, last[0] if last else 0, OUTCOME_WINDOW)).fetchall()
    for ident, hit, context in reversed(rows):
        history.observe(ident, bool(hit), json.loads(context))
    return history
