"""The value types of :mod:`midswarm.reasoning`.

They are plain frozen attrs classes with wire-friendly field types (``float``,
``int``, ``str``, ``dict[str, Any]`` of scalars, lists, numpy arrays), so the
swarm layer can register them as messages without this package knowing about
the transport.  Vector fields compare by identity (``eq=False``): numpy arrays
have no single truth value.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

__all__ = [
    "AdaptationCommand",
    "ConsolidationReport",
    "Experience",
    "Hit",
    "MemoryItem",
    "ParameterChange",
    "RetrievalWeights",
    "Verdict",
]


@attrs.frozen
class Hit:
    """One search result of :meth:`PatternStore.search`.

    ``score`` is the cosine similarity (higher is closer) for a ``"cosine"``
    store and the Euclidean distance (lower is closer) for an ``"l2"`` store.
    ``metadata`` is a fresh copy; changing it changes nothing stored.
    """

    id: int
    score: float
    metadata: dict[str, Any]


@attrs.frozen
class Experience:
    """A pattern-match result whose actual outcome is known.

    ``expected`` is the predicted outcome and ``actual`` the realised one (for
    instance the return over the prediction horizon); the predicted direction
    was right when their signs agree.  ``similarity`` and ``confidence`` are
    the matcher's own figures for the match.  ``context`` holds flat scalar
    facts about the situation (``str``, ``int``, ``float`` or ``bool`` values):
    its string and bool entries name the situation for distillation, and the
    keys ``window``, ``k``, ``similarity_threshold`` and
    ``confidence_threshold`` report the matcher's parameters.  ``vector`` is the
    query pattern (any 1-d array of finite numbers; it is stored as float32) or
    ``None``.  ``timestamp`` is in seconds since the epoch; ``None`` means "when
    recorded".

    Construction checks nothing: :meth:`ReasoningBank.judge` and
    :meth:`ReasoningBank.record` validate, so a malformed experience that
    arrives over the wire is refused with a message naming the bad field.
    """

    agent_id: str
    action: str
    expected: float
    actual: float
    similarity: float
    confidence: float
    context: dict[str, Any] = attrs.Factory(dict)
    vector: np.ndarray | None = attrs.field(default=None, eq=False)
    timestamp: float | None = None


@attrs.frozen
class ParameterChange:
    """One suggested change of a pattern-matcher parameter.

    ``parameter`` is one of ``similarity_threshold``, ``confidence_threshold``,
    ``window`` or ``k``; ``window`` and ``k`` are whole numbers carried as
    floats (``int(value)`` is exact).
    """

    parameter: str
    current: float
    suggested: float
    reason: str


@attrs.frozen
class Verdict:
    """The ReasoningBank's judgement of one experience.

    ``score`` in [0, 1] (a direction hit scores at least 0.5, a miss at most 0.5);
    ``learn`` when score > 0.7, ``should_adapt`` when score < 0.3, ``distill``
    when score > 0.8.  ``confidence`` is how decisive the score is,
    ``|2 * score - 1|``.  ``suggested_changes`` is filled only when
    ``should_adapt``: what :meth:`ReasoningBank.suggest` would propose for the
    agent from its recorded outcomes (empty while it has too few).
    """

    score: float
    should_adapt: bool
    learn: bool
    distill: bool
    suggested_changes: list[ParameterChange]
    confidence: float


@attrs.frozen
class AdaptationCommand:
    """Parameter changes for one agent, issued by :meth:`ReasoningBank.suggest`.

    ``id`` increases with every command the bank issues, so a receiver can
    ignore a stale or repeated one.  ``success_rate`` is the share of direction
    hits over the ``outcomes`` judged outcomes the decision looked at.
    """

    id: int
    agent_id: str
    changes: list[ParameterChange]
    reason: str
    success_rate: float
    outcomes: int
    issued_at: float


@attrs.frozen
class MemoryItem:
    """A distilled lesson: what happened, in words, in one pattern region.

    ``source_outcome`` is ``"success"`` (the lesson is about direction hits)
    or ``"failure"`` (about misses); ``support`` is the number of judged
    experiences of the region and ``evidence`` how many of them had this
    item's outcome.  ``confidence`` is the Laplace-smoothed share
    ``(evidence + 1) / (support + 2)``.  Times are seconds since the epoch:
    ``updated`` is the newest experience behind the item.
    """

    id: int
    title: str
    description: str
    content: str
    confidence: float
    usage_count: int
    created: float
    last_used: float
    updated: float
    source_outcome: str
    situation: str
    support: int
    evidence: int


@attrs.frozen
class RetrievalWeights:
    """How :meth:`ReasoningBank.retrieve` ranks memory items before MMR.

    relevance = similarity * max(cosine, 0) + recency * exp(-age_days /
    recency_days) + reliability * confidence, where the age is measured from
    the item's newest evidence.  The defaults (0.65, 0.15, 0.20, 45 days) sum
    to one, so relevance stays in [0, 1] like the cosine MMR compares it with.
    """

    similarity: float = 0.65
    recency: float = 0.15
    reliability: float = 0.20
    recency_days: float = 45.0


@attrs.frozen
class ConsolidationReport:
    """What :meth:`ReasoningBank.consolidate` did."""

    merged_regions: int
    removed_items: int
    pruned_items: int
    remaining_items: int
