"""ReasoningBank: judged experiences, adaptation, and distilled memory on SQLite.

Theory of operation
-------------------
:meth:`~ReasoningBank.record` validates an experience, judges it with the
rule in :mod:`._judge`, and stores it with its score, direction-hit flag and
situation key in one committed transaction.  :meth:`~ReasoningBank.suggest`
reads an agent's recent outcomes and applies the policy in :mod:`._adapt`,
logging each command it issues.  :meth:`~ReasoningBank.distill` and
:meth:`~ReasoningBank.consolidate` turn experiences into memory items and
keep that memory tidy (:mod:`._memory`).  :meth:`~ReasoningBank.retrieve`
ranks items against a query vector (:mod:`._retrieve`) from an in-memory
copy of the items that have vectors; the copy is rebuilt after this bank
changes items, or when another connection has committed (``PRAGMA
data_version``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import numpy as np

from ._adapt import check_parameters
from ._bank_schema import KIND, MIGRATIONS, SCHEMA_VERSION, create_v2
from ._distill import situation_key
from ._history import AgentHistory, load_history
from ._judge import (
    ADAPT_BELOW,
    DISTILL_ABOVE,
    LEARN_ABOVE,
    CheckedExperience,
    check_experience,
    outcome_score,
)
from ._memory import consolidate_memory, distill_pending
from ._metadata import dumps
from ._retrieve import check_weights, mmr_select, relevance
from ._sqlite import Database, StoreFile
from ._types import (
    AdaptationCommand,
    ConsolidationReport,
    Experience,
    MemoryItem,
    ParameterChange,
    RetrievalWeights,
    Verdict,
)
from ._vectors import as_vector

__all__ = ["ReasoningBank"]

_ITEM_COLUMNS = ("id, title, description, content, confidence, usage_count, created, "
                 "last_used, updated, source_outcome, situation, support, evidence")


def _item(row: tuple[Any, ...]) -> MemoryItem:
    return MemoryItem(*row)


@attrs.define
class _ItemCache:
    """The retrievable items (those with vectors), in id order, as arrays."""

    items: list[MemoryItem]
    units: np.ndarray
    confidence: np.ndarray
    updated: np.ndarray
    success: np.ndarray
    row_of: dict[int, int]


class ReasoningBank(StoreFile):
    """Durable learning memory: record and judge experiences, adapt, distill, retrieve.

    ``ReasoningBank(path)`` creates the SQLite file or opens (and, from schema
    version 1, migrates) an existing one.  ``readonly=True`` opens beside the
    one writer: it can judge, suggest nothing new, and retrieve without
    counting usage.  ``synchronous`` as for :class:`PatternStore`.  ``clock``
    gives "now" in seconds since the epoch (for experiences without a
    timestamp, commands, item times and recency).

    ``region_similarity`` (cosine, default 0.9) decides when a new experience's
    vector joins an existing pattern region of its situation during
    :meth:`distill`; ``min_support`` (default 1) is how many experiences of an
    outcome a region needs before it gets an item for that outcome.

    Raises :class:`SchemaError` for a file that is not a ReasoningBank (or a
    newer one), :class:`WriterLockedError` if another writer has it open.
    Methods are thread-safe.
    """

    _noun = "ReasoningBank"

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False,
                 synchronous: str = "NORMAL", clock: Callable[[], float] = time.time,
                 region_similarity: float = 0.9, min_support: int = 1) -> None:
        if not -1.0 <= region_similarity <= 1.0:
            raise ValueError(f"region_similarity must be in [-1, 1], got {region_similarity}")
        if isinstance(min_support, bool) or not isinstance(min_support, int) or min_support < 1:
            raise ValueError(f"min_support must be an int >= 1, got {min_support!r}")
        self._lock = threading.RLock()
        self._clock = clock
        self._region_similarity = float(region_similarity)
        self._min_support = min_support
        self._closed = False
        self._cache: _ItemCache | None = None
        self._histories: dict[str, AgentHistory] = {}
        self._db = Database(path, kind=KIND, version=SCHEMA_VERSION, create=create_v2,
                            migrations=MIGRATIONS, readonly=readonly, synchronous=synchronous)
        self._dim = int(self._db.meta().get("dim", 0))
        self._data_version = self._db.data_version()

    # -- judging and recording --------------------------------------------------

    def judge(self, experience: Experience) -> Verdict:
        """Score one experience (see :mod:`midswarm.reasoning._judge` for the rule).

        Reads, never writes.  Raises :class:`ValueError` / :class:`TypeError`
        naming the field for a malformed experience, including a missing or
        non-finite ``expected`` or ``actual``: no judging without data.
        """
        checked = check_experience(experience)
        score = outcome_score(checked.expected, checked.actual)
        changes: list[ParameterChange] = []
        if score < ADAPT_BELOW:
            with self._lock:
                self._sync()
                proposal = self._history(checked.agent_id).proposal(None)
            if proposal is not None:
                changes = proposal.changes
        return Verdict(score=score, should_adapt=score < ADAPT_BELOW, learn=score > LEARN_ABOVE,
                       distill=score > DISTILL_ABOVE, suggested_changes=changes,
                       confidence=abs(2.0 * score - 1.0))

    def record(self, experience: Experience) -> int:
        """Judge and store ``experience``; returns its id once committed.

        Raises like :meth:`judge`, and :class:`ValueError` if the vector's
        length differs from earlier ones; nothing is written then.
        """
        checked = check_experience(experience)
        with self._lock:
            self._writable()
            self._sync()
            return self._insert(checked)

    def _insert(self, e: CheckedExperience) -> int:
        blob = None
        set_dim = False
        if e.vector is not None:
            if self._dim == 0:
                set_dim = True
            elif len(e.vector) != self._dim:
                raise ValueError(f"Experience.vector has {len(e.vector)} values; this bank "
                                 f"stores vectors of dimension {self._dim}")
            blob = e.vector.astype("<f4").tobytes()
        timestamp = self._clock() if e.timestamp is None else e.timestamp
        with self._db.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO experiences (agent_id, action, expected, actual, similarity, "
                "confidence, context, vector, timestamp, score, hit, situation) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (e.agent_id, e.action, e.expected, e.actual, e.similarity, e.confidence,
                 dumps(e.context), blob, timestamp, outcome_score(e.expected, e.actual),
                 int(e.hit), situation_key(e.action, e.context)))
            if set_dim:
                assert e.vector is not None
                self._db.set_meta(dim=len(e.vector))
        if set_dim:
            assert e.vector is not None
            self._dim = len(e.vector)
        assert cur.lastrowid is not None
        history = self._histories.get(e.agent_id)
        if history is not None:
            history.observe(cur.lastrowid, e.hit, e.context)
        return cur.lastrowid

    def get_experience(self, id: int) -> Experience:
        """The experience stored under ``id``; :class:`KeyError` if there is none."""
        with self._lock:
            self._check_open()
            row = self._db.conn.execute(
                "SELECT agent_id, action, expected, actual, similarity, confidence, context, "
                "vector, timestamp FROM experiences WHERE id = ?", (int(id),)).fetchone()
        if row is None:
            raise KeyError(f"unknown experience id {id}")
        vector = None if row[7] is None else np.frombuffer(row[7], "<f4").astype(np.float32)
        return Experience(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]),
                          vector, row[8])

    def __len__(self) -> int:
        """The number of recorded experiences."""
        with self._lock:
            self._check_open()
            return int(self._db.conn.execute("SELECT count(*) FROM experiences").fetchone()[0])

    # -- adaptation ---------------------------------------------------------------

    def suggest(self, agent_id: str, current: Mapping[str, float] | None = None
                ) -> AdaptationCommand | None:
        """An :class:`AdaptationCommand` for ``agent_id``, or ``None``.

        The decision (see :mod:`midswarm.reasoning._adapt`) looks at the
        agent's last 100 judged outcomes recorded after the last command issued
        to it, and needs at least 20.  The values it adapts from are
        ``current`` (parameter -> value) if given, else the newest values the
        agent reported in experience contexts, else the last command's, else
        the defaults.  An issued command is logged, so the next one waits for
        20 fresh outcomes.  Raises :class:`ValueError` for an unknown parameter
        or a bad value in ``current``.
        """
        explicit = check_parameters(current) if current is not None else None
        with self._lock:
            self._writable()
            self._sync()
            history = self._history(agent_id)
            proposal = history.proposal(explicit)
            if proposal is None:
                return None
            params = dict(proposal.parameters)
            params.update({c.parameter: c.suggested for c in proposal.changes})
            now = self._clock()
            with self._db.transaction() as conn:
                cur = conn.execute(
                    "INSERT INTO adaptations (agent_id, issued_at, last_experience, changes, "
                    "parameters, reason, success_rate, outcomes) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (agent_id, now, proposal.last_experience,
                     json.dumps([attrs.asdict(c) for c in proposal.changes]),
                     json.dumps(params), proposal.reason, proposal.success_rate,
                     proposal.outcomes))
            history.commanded(params)
            assert cur.lastrowid is not None
            return AdaptationCommand(id=cur.lastrowid, agent_id=agent_id,
                                     changes=proposal.changes, reason=proposal.reason,
                                     success_rate=proposal.success_rate,
                                     outcomes=proposal.outcomes, issued_at=now)

    def _history(self, agent_id: str) -> AgentHistory:
        if not isinstance(agent_id, str) or not agent_id:
            raise ValueError(f"agent_id must be a non-empty str, got {agent_id!r}")
        history = self._histories.get(agent_id)
        if history is None:
            history = self._histories[agent_id] = load_history(self._db.conn, agent_id)
        return history

    # -- memory ---------------------------------------------------------------------

    def distill(self) -> list[MemoryItem]:
        """Turn experiences recorded since the last distillation into memory items.

        Deterministic (see :mod:`midswarm.reasoning._distill`); returns the
        items created or updated, in id order.
        """
        with self._lock:
            self._writable()
            self._sync()
            now = self._clock()
            with self._db.transaction():
                regions = distill_pending(self._db, dim=max(self._dim, 1),
                                          region_similarity=self._region_similarity,
                                          min_support=self._min_support, now=now)
            self._cache = None
            return self._items_of_regions(regions)

    def consolidate(self, *, merge_similarity: float = 0.95, stale_days: float = 90.0,
                    min_confidence: float = 0.35, max_usage: int = 0,
                    now: float | None = None) -> ConsolidationReport:
        """Merge near-duplicate pattern regions and prune dead items, in one transaction.

        Regions of one situation whose centroids have cosine >= ``merge_similarity``
        merge into the best-supported one.  An item is pruned when its
        confidence is below ``min_confidence``, it was used at most
        ``max_usage`` times, and neither new evidence nor use touched it for
        ``stale_days``.  Success and failure items are never merged with each
        other.
        """
        if not -1.0 <= merge_similarity <= 1.0:
            raise ValueError(f"merge_similarity must be in [-1, 1], got {merge_similarity}")
        if not stale_days >= 0:
            raise ValueError(f"stale_days must be >= 0, got {stale_days}")
        with self._lock:
            self._writable()
            self._sync()
            when = self._clock() if now is None else float(now)
            with self._db.transaction() as conn:
                merged, removed, pruned = consolidate_memory(
                    self._db, merge_similarity=merge_similarity, stale_days=stale_days,
                    min_confidence=min_confidence, max_usage=max_usage,
                    min_support=self._min_support, now=when)
                remaining = conn.execute("SELECT count(*) FROM memory_items").fetchone()[0]
            self._cache = None
            return ConsolidationReport(merged_regions=merged, removed_items=removed,
                                       pruned_items=pruned, remaining_items=remaining)

    def memory_items(self, outcome: str | None = None) -> list[MemoryItem]:
        """Every memory item (or those of one ``source_outcome``), in id order."""
        _check_outcome(outcome)
        with self._lock:
            self._check_open()
            sql = f"SELECT {_ITEM_COLUMNS} FROM memory_items"
            args: tuple[Any, ...] = ()
            if outcome is not None:
                sql += " WHERE source_outcome = ?"
                args = (outcome,)
            return [_item(r) for r in self._db.conn.execute(sql + " ORDER BY id", args)]

    def retrieve(self, query_vector: Any, k: int = 1, weights: RetrievalWeights | None = None,
                 *, mmr_lambda: float = 0.7, outcome: str | None = None,
                 now: float | None = None) -> list[MemoryItem]:
        """Up to ``k`` memory items for ``query_vector``, most useful first.

        Ranking: see :mod:`midswarm.reasoning._retrieve` (default weights 0.65
        similarity, 0.15 recency with a 45-day scale, 0.20 reliability; then
        MMR with ``mmr_lambda``, 1 = pure relevance).  ``outcome`` restricts to
        ``"success"`` or ``"failure"`` items.  Each returned item's usage
        count and last-use time are bumped and committed (not on a read-only
        bank); the items returned show the bumped values.  Raises
        :class:`ValueError` for a vector of the wrong size or with NaN, bad
        weights, or ``k < 1``.
        """
        weights = RetrievalWeights() if weights is None else weights
        check_weights(weights, mmr_lambda)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        _check_outcome(outcome)
        with self._lock:
            self._sync()
            q = _query(query_vector, self._dim)
            norm = float(np.linalg.norm(q))
            if norm == 0:
                raise ValueError("query_vector is all zeros: it has no direction to compare")
            if self._dim == 0:
                return []  # no vector was ever recorded, so no item has one
            cache = self._items_cache()
            rows = np.arange(len(cache.items))
            if outcome is not None:
                rows = rows[cache.success == (outcome == "success")]
            if len(rows) == 0:
                return []
            units = cache.units if outcome is None else cache.units[rows]
            when = self._clock() if now is None else float(now)
            # einsum, not BLAS: a threaded gemv stalls when other processes hold the cores.
            cosines = np.einsum("ij,j->i", units, (q / norm).astype(np.float32))
            scores = relevance(cosines, when - cache.updated[rows], cache.confidence[rows],
                               weights)
            picked = [int(rows[i]) for i in mmr_select(units, scores, k, mmr_lambda)]
            items = [cache.items[i] for i in picked]
            if not self._db.readonly:
                items = self._bump(cache, picked, when)
            return items

    def _bump(self, cache: _ItemCache, picked: list[int], when: float) -> list[MemoryItem]:
        ids = [cache.items[i].id for i in picked]
        with self._db.transaction() as conn:
            conn.executemany(
                "UPDATE memory_items SET usage_count = usage_count + 1, "
                "last_used = MAX(last_used, ?) WHERE id = ?", [(when, i) for i in ids])
        for i in picked:
            item = cache.items[i]
            cache.items[i] = attrs.evolve(item, usage_count=item.usage_count + 1,
                                          last_used=max(item.last_used, when))
        return [cache.items[i] for i in picked]

    def _items_cache(self) -> _ItemCache:
        if self._cache is None:
            rows = self._db.conn.execute(
                f"SELECT {_ITEM_COLUMNS}, vector FROM memory_items WHERE vector IS NOT NULL "
                f"ORDER BY id").fetchall()
            items = [_item(r[:-1]) for r in rows]
            if rows:
                units = np.frombuffer(b"".join(r[-1] for r in rows), "<f4").reshape(
                    len(rows), self._dim).astype(np.float32)
            else:
                units = np.zeros((0, max(self._dim, 1)), np.float32)
            self._cache = _ItemCache(
                items=items, units=units,
                confidence=np.array([i.confidence for i in items], np.float64),
                updated=np.array([i.updated for i in items], np.float64),
                success=np.array([i.source_outcome == "success" for i in items], bool),
                row_of={item.id: n for n, item in enumerate(items)})
        return self._cache

    def _items_of_regions(self, regions: list[int]) -> list[MemoryItem]:
        out: list[MemoryItem] = []
        for start in range(0, len(regions), 500):
            chunk = regions[start:start + 500]
            marks = ",".join("?" * len(chunk))
            out.extend(_item(r) for r in self._db.conn.execute(
                f"SELECT {_ITEM_COLUMNS} FROM memory_items WHERE region IN ({marks})",
                tuple(chunk)))
        return sorted(out, key=lambda item: item.id)

    # -- housekeeping (path, readonly, integrity_check, close: StoreFile) -----------

    @property
    def dim(self) -> int:
        """The dimension of stored vectors; 0 until the first vector is recorded."""
        with self._lock:
            self._sync()
            return self._dim

    def _sync(self) -> None:
        self._check_open()
        version = self._db.data_version()
        if version != self._data_version:
            self._data_version = version
            self._cache = None
            self._histories.clear()
            self._dim = int(self._db.meta().get("dim", 0))


def _check_outcome(outcome: str | None) -> None:
    if outcome not in (None, "success", "failure"):
        raise ValueError(f"outcome must be None, 'success' or 'failure', got {outcome!r}")


def _query(query_vector: Any, dim: int) -> np.ndarray:
    """The checked query as float64; any length is accepted while ``dim`` is 0."""
    if dim == 0:
        shape = np.shape(query_vector)
        dim = shape[0] if len(shape) == 1 and shape[0] > 0 else 1
        if len(shape) != 1:
            raise ValueError(f"query_vector must be 1-d, got shape {shape}")
    return as_vector(query_vector, dim, "query_vector").astype(np.float64)
