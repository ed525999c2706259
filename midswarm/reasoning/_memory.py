"""Distillation and consolidation over the bank's tables.

Distilling assigns every experience recorded since the last distillation
(ids above the ``distilled_through`` mark) to a pattern region of its
situation, in id order: the region whose centroid is most similar
(cosine) if that similarity reaches ``region_similarity``, else a new region.
Experiences without a vector share their situation's one vector-less region.
Then every touched region's items are recomputed from all of its
experiences, so re-running is idempotent and the result depends only on the
data and the order it arrived in.

Consolidating first plans, then writes (nothing is deleted while the plan is
being made): within each situation, regions are visited from best to least
supported (most experiences, then lowest id); each one not yet absorbed keeps
itself and absorbs every later one whose centroid is at least
``merge_similarity`` similar to its own.  Absorbed regions' experiences move to
the keeper, their items' usage is added to the keeper's items of the same
outcome, and they are removed.  Success and failure items are never compared
with each other: both lessons about one region stay.  Then items that are
stale (no new evidence and no use for ``stale_days``), unused and of low
confidence are pruned; a region's items come back if new evidence arrives.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from ._distill import Evidence, draft_items
from ._sqlite import Database

__all__ = ["consolidate_memory", "distill_pending", "write_region_items"]

_CHUNK = 500
_DAY = 86400.0


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


class _Regions:
    """The vector regions of one situation: ids, float64 sums and unit centroids."""

    def __init__(self, dim: int) -> None:
        self.ids: list[int] = []
        self._sums = np.zeros((4, dim), np.float64)
        self._units = np.zeros((4, dim), np.float32)

    @property
    def sums(self) -> np.ndarray:
        return self._sums[: len(self.ids)]

    def add(self, region: int, vector_sum: np.ndarray) -> None:
        n = len(self.ids)
        if n == len(self._sums):
            # Doubling keeps a long run of new regions linear overall.
            self._sums = np.vstack([self._sums, np.zeros_like(self._sums)])
            self._units = np.vstack([self._units, np.zeros_like(self._units)])
        self.ids.append(region)
        self._sums[n] = vector_sum
        self._units[n] = _unit(vector_sum)

    def nearest(self, unit: np.ndarray) -> tuple[int, float]:
        sims = self._units[: len(self.ids)] @ unit
        i = int(np.argmax(sims))
        return i, float(sims[i])

    def join(self, i: int, unit: np.ndarray) -> None:
        self._sums[i] += unit
        self._units[i] = _unit(self._sums[i])


def distill_pending(db: Database, *, dim: int, region_similarity: float, min_support: int,
                    now: float) -> list[int]:
    """Group undistilled experiences into regions and rewrite their items.

    Must run inside a write transaction; returns the touched region ids.
    """
    conn = db.conn
    through = int(db.meta().get("distilled_through", 0))
    pending = conn.execute(
        "SELECT id, situation, vector FROM experiences WHERE id > ? ORDER BY id", (through,)
    ).fetchall()
    if not pending:
        return []
    db.set_meta(distilled_through=pending[-1][0])
    by_situation: dict[str, _Regions] = {}
    vectorless: dict[str, int] = {}
    changed: set[int] = set()
    assignments: list[tuple[int, int]] = []
    for situation in sorted({s for _, s, _ in pending}):
        regions = by_situation[situation] = _Regions(dim)
        for region, centroid in conn.execute(
                "SELECT id, centroid FROM regions WHERE situation = ? ORDER BY id",
                (situation,)):
            if centroid is None:
                vectorless[situation] = region
            else:
                regions.add(region, np.frombuffer(centroid, np.float64).copy())
    for exp_id, situation, blob in pending:
        if blob is None:
            region = vectorless.get(situation)
            if region is None:
                region = vectorless[situation] = _new_region(db, situation, None)
        else:
            unit = _unit(np.frombuffer(blob, "<f4").astype(np.float64))
            regions = by_situation[situation]
            best = regions.nearest(unit.astype(np.float32)) if regions.ids else (-1, -2.0)
            if best[1] >= region_similarity:
                regions.join(best[0], unit)
                region = regions.ids[best[0]]
            else:
                region = _new_region(db, situation, unit)
                regions.add(region, unit)
            changed.add(region)
        assignments.append((region, exp_id))
    conn.executemany("UPDATE experiences SET region = ? WHERE id = ?", assignments)
    sums = {rid: s for r in by_situation.values() for rid, s in zip(r.ids, r.sums, strict=True)}
    conn.executemany("UPDATE regions SET centroid = ? WHERE id = ?",
                     [(sums[rid].tobytes(), rid) for rid in sorted(changed)])
    touched = sorted({region for region, _ in assignments})
    write_region_items(db, touched, min_support=min_support, now=now)
    return touched


def _new_region(db: Database, situation: str, unit: np.ndarray | None) -> int:
    cur = db.conn.execute(
        "INSERT INTO regions (situation, centroid) VALUES (?, ?)",
        (situation, None if unit is None else unit.astype(np.float64).tobytes()))
    assert cur.lastrowid is not None
    return cur.lastrowid


def _chunks(items: Sequence[int], size: int = _CHUNK) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def write_region_items(db: Database, regions: Sequence[int], *, min_support: int,
                       now: float) -> None:
    """Recompute the items of ``regions`` from their experiences (inside a transaction).

    Existing items keep their id, usage count, creation and last-use times.
    """
    conn = db.conn
    upsert = (
        "INSERT INTO memory_items (region, source_outcome, situation, title, description, "
        "content, confidence, support, evidence, usage_count, created, updated, last_used, "
        "vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?) "
        "ON CONFLICT (region, source_outcome) DO UPDATE SET situation = excluded.situation, "
        "title = excluded.title, description = excluded.description, "
        "content = excluded.content, confidence = excluded.confidence, "
        "support = excluded.support, evidence = excluded.evidence, "
        "updated = excluded.updated, vector = excluded.vector")
    for chunk in _chunks(list(regions)):
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT e.region, r.situation, e.hit, e.similarity, e.confidence, e.score, "
            f"e.expected, e.actual, e.vector, e.timestamp FROM experiences e "
            f"JOIN regions r ON r.id = e.region WHERE e.region IN ({marks}) "
            f"ORDER BY e.region, e.id", tuple(chunk)).fetchall()
        grouped: dict[int, list[Evidence]] = defaultdict(list)
        situations: dict[int, str] = {}
        for region, situation, hit, sim, conf, score, expected, actual, blob, ts in rows:
            situations[region] = situation
            grouped[region].append(Evidence(
                hit=bool(hit), similarity=sim, confidence=conf, score=score,
                error=abs(expected - actual),
                vector=None if blob is None else np.frombuffer(blob, "<f4"), timestamp=ts))
        params = []
        for region, evidence in grouped.items():
            for draft in draft_items(region, situations[region], evidence, min_support):
                params.append((
                    region, draft.source_outcome, situations[region], draft.title,
                    draft.description, draft.content, draft.confidence, draft.support,
                    draft.evidence, now, draft.updated, now,
                    None if draft.vector is None else draft.vector.astype("<f4").tobytes()))
        conn.executemany(upsert, params)


def _plan_merges(centroids: list[tuple[int, np.ndarray]], counts: dict[int, int],
                 merge_similarity: float) -> list[tuple[int, list[int]]]:
    """Keeper and absorbed regions, for the regions of one situation."""
    order = sorted(centroids, key=lambda rc: (-counts.get(rc[0], 0), rc[0]))
    ids = [rid for rid, _ in order]
    units = np.stack([_unit(c) for _, c in order]).astype(np.float32)
    absorbed = np.zeros(len(ids), bool)
    plan = []
    for i in range(len(ids)):
        if absorbed[i]:
            continue
        sims = units[i + 1:] @ units[i]
        close = np.flatnonzero((sims >= merge_similarity) & ~absorbed[i + 1:]) + i + 1
        if len(close):
            absorbed[close] = True
            plan.append((ids[i], [ids[j] for j in close.tolist()]))
    return plan


def consolidate_memory(db: Database, *, merge_similarity: float, stale_days: float,
                       min_confidence: float, max_usage: int, min_support: int,
                       now: float) -> tuple[int, int, int]:
    """Merge near-duplicate regions, then prune; inside a write transaction.

    Returns (regions merged away, items removed with them, items pruned).
    """
    conn = db.conn
    counts = dict(conn.execute(
        "SELECT region, count(*) FROM experiences WHERE region IS NOT NULL GROUP BY region"))
    per_situation: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for region, situation, blob in conn.execute(
            "SELECT id, situation, centroid FROM regions WHERE centroid IS NOT NULL ORDER BY id"):
        per_situation[situation].append((region, np.frombuffer(blob, np.float64).copy()))
    plan: list[tuple[int, list[int]]] = []
    for situation in sorted(per_situation):
        if len(per_situation[situation]) > 1:
            plan.extend(_plan_merges(per_situation[situation], counts, merge_similarity))

    # The plan is complete; only now does anything change.
    merged = removed = 0
    carries: list[tuple[int, float, float, int, str]] = []
    sums = {rid: c for regions in per_situation.values() for rid, c in regions}
    for keeper, absorbed in plan:
        marks = ",".join("?" * len(absorbed))
        carries.extend((usage, created, last_used, keeper, outcome) for outcome, usage, created,
                       last_used in conn.execute(
            f"SELECT source_outcome, SUM(usage_count), MIN(created), MAX(last_used) "
            f"FROM memory_items WHERE region IN ({marks}) GROUP BY source_outcome",
            tuple(absorbed)))
        conn.execute(f"UPDATE experiences SET region = ? WHERE region IN ({marks})",
                     (keeper, *absorbed))
        total = sums[keeper] + sum((sums[r] for r in absorbed), np.zeros_like(sums[keeper]))
        conn.execute("UPDATE regions SET centroid = ? WHERE id = ?", (total.tobytes(), keeper))
        removed += conn.execute(f"DELETE FROM memory_items WHERE region IN ({marks})",
                                tuple(absorbed)).rowcount
        conn.execute(f"DELETE FROM regions WHERE id IN ({marks})", tuple(absorbed))
        merged += len(absorbed)
    if plan:
        write_region_items(db, sorted(k for k, _ in plan), min_support=min_support, now=now)
        conn.executemany(
            "UPDATE memory_items SET usage_count = usage_count + ?, "
            "created = MIN(created, ?), last_used = MAX(last_used, ?) "
            "WHERE region = ? AND source_outcome = ?", carries)
    pruned = conn.execute(
        "DELETE FROM memory_items WHERE confidence < ? AND usage_count <= ? "
        "AND MAX(updated, last_used) < ?",
        (min_confidence, max_usage, now - stale_days * _DAY)).rowcount
    return merged, removed, pruned
