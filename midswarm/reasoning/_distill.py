"""Deterministic distillation: situations, and memory-item text from a region's evidence.

A *situation* is what the lesson is about: the action, the matcher's
``window`` and ``k``, and the categorical facts of the context (its string and
bool entries, e.g. ``symbol=AAPL, regime=calm``).  Continuous context values
(volatility, thresholds) are not part of it: they would make every experience
its own situation.  Within a situation, experiences are grouped into pattern
*regions* by the cosine similarity of their vectors (the grouping itself lives
with the bank); every region yields a success item when it has direction hits
and a failure item when it has misses.

No language model: the same evidence always gives the same words.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np

__all__ = ["Evidence", "ItemDraft", "draft_items", "situation_key", "situation_words"]

# Context keys that report matcher parameters rather than facts of the situation.
_PARAMETER_KEYS = frozenset({"window", "k", "similarity_threshold", "confidence_threshold"})


def _whole(value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if float(value).is_integer() else float(value)


def situation_key(action: str, context: Mapping[str, Any]) -> str:
    """The canonical text key of the situation an experience belongs to."""
    facts = sorted([key, value] for key, value in context.items()
                   if isinstance(value, str | bool) and key not in _PARAMETER_KEYS)
    return json.dumps([action, _whole(context.get("window")), _whole(context.get("k")), facts],
                      separators=(",", ":"), ensure_ascii=False)


def situation_words(key: str) -> tuple[str, str, str]:
    """``(action, "context a=b, c=d", "window W with k K")`` for a situation key."""
    try:
        action, window, k, facts = json.loads(key)
        context = ", ".join(f"{name}={value}" for name, value in facts) or "any context"
    except (ValueError, TypeError):
        return ("unknown", "an unknown context", "unknown parameters")
    window_text = "an unknown window" if window is None else f"window {window}"
    k_text = "unknown k" if k is None else f"k {k}"
    return str(action), f"context {context}", f"{window_text} with {k_text}"


@attrs.frozen
class Evidence:
    """One judged experience as distillation sees it."""

    hit: bool
    similarity: float
    confidence: float
    score: float
    error: float
    vector: np.ndarray | None = attrs.field(eq=False)
    timestamp: float


@attrs.frozen
class ItemDraft:
    """A memory item's content before it gets its id, usage and times."""

    source_outcome: str
    title: str
    description: str
    content: str
    confidence: float
    support: int
    evidence: int
    updated: float
    vector: np.ndarray | None = attrs.field(eq=False)


def _when(ts: float) -> str:
    try:
        return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):
        return f"t={ts:.0f}s"


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _centroid(rows: Sequence[Evidence]) -> np.ndarray | None:
    vectors = [r.vector for r in rows if r.vector is not None]
    if not vectors:
        return None
    stacked = np.stack(vectors).astype(np.float64)
    stacked /= np.linalg.norm(stacked, axis=1, keepdims=True)
    mean = stacked.sum(axis=0)
    norm = float(np.linalg.norm(mean))
    # Opposed vectors can cancel; then the first one stands for the group.
    unit = stacked[0] if norm < 1e-9 else mean / norm
    return unit.astype(np.float32)


def _separation(figure: str, hits: Sequence[float], misses: Sequence[float]) -> str:
    mean_hit, mean_miss = _mean(hits), _mean(misses)
    if mean_miss >= mean_hit:
        return (f"Misses had {figure} as high as hits (mean {mean_miss:.3f} vs {mean_hit:.3f}): "
                f"a higher {figure} threshold would not have separated them.")
    cut = (mean_hit + mean_miss) / 2
    kept = sum(v >= cut for v in hits)
    dropped = sum(v < cut for v in misses)
    return (f"A {figure} threshold of {cut:.3f} would have kept {kept} of {len(hits)} hits "
            f"and dropped {dropped} of {len(misses)} misses.")


def _stats(label: str, rows: Sequence[Evidence]) -> str:
    return (f"{label}: mean similarity {_mean([r.similarity for r in rows]):.3f}, mean "
            f"confidence {_mean([r.confidence for r in rows]):.3f}, mean |error| "
            f"{_mean([r.error for r in rows]):.4g}.")


def draft_items(region: int, situation: str, rows: Sequence[Evidence],
                min_support: int) -> list[ItemDraft]:
    """The success and failure items a region's evidence supports (each needs
    at least ``min_support`` experiences of its outcome)."""
    hits = [r for r in rows if r.hit]
    misses = [r for r in rows if not r.hit]
    total = len(rows)
    if total == 0:
        return []
    action, context, params = situation_words(situation)
    where = f"{context}, {params}"
    summary = (f"Direction right {len(hits)} of {total} times ({100 * len(hits) / total:.0f}%), "
               f"mean score {_mean([r.score for r in rows]):.3f}; evidence from "
               f"{_when(min(r.timestamp for r in rows))} to "
               f"{_when(max(r.timestamp for r in rows))}.")
    detail = [summary]
    if hits:
        detail.append(_stats("Hits", hits))
    if misses:
        detail.append(_stats("Misses", misses))
    drafts = []
    for outcome, group in (("success", hits), ("failure", misses)):
        if len(group) < max(min_support, 1):
            continue
        lines = list(detail)
        if outcome == "success":
            title = f"{action}: direction right in {where} (region {region})"
            description = (f"In {context}, {params} predicted direction correctly "
                           f"{len(hits)} of {total} times.")
        else:
            title = f"{action}: direction wrong in {where} (region {region})"
            description = (f"In {context}, {params} predicted direction wrongly "
                           f"{len(misses)} of {total} times.")
            if hits:
                lines.append(_separation("similarity", [r.similarity for r in hits],
                                         [r.similarity for r in misses]))
                lines.append(_separation("confidence", [r.confidence for r in hits],
                                         [r.confidence for r in misses]))
            else:
                lines.append("No hit here to learn a threshold from: every match missed.")
        drafts.append(ItemDraft(
            source_outcome=outcome, title=title, description=description,
            content="\n".join(lines),
            confidence=(len(group) + 1) / (total + 2),
            support=total, evidence=len(group),
            updated=max(r.timestamp for r in group),
            vector=_centroid(group)))
    return drafts
