"""PatternStore: durable vectors with metadata and exact top-k search.

Theory of operation
-------------------
SQLite holds the truth: one row per vector (id, float32 blob, metadata as
JSON, the revision that last wrote it), a ``deletions`` table (id, revision)
and the store's ``dim``, ``metric``, ``next_id`` and ``revision`` in
``midswarm_meta``.  Every write is a single transaction; memory is updated
only after it commits, so a failed write leaves both untouched.

Memory holds what search needs: a :class:`VectorMatrix` (dense float32 rows
with no tombstones, plus an int8 copy that bounds scores so a large search
scores only a few rows exactly) and :class:`MetadataColumns` for filters.
Opening loads every row.  Searching runs single-threaded numba kernels,
compiled on the first search of a process (seconds; cached on disk after).
A read-only opener notices other connections' commits with ``PRAGMA
data_version`` and catches up incrementally from its last revision: first the
ids deleted since then, then the rows written since then.

Ids are non-negative integers.  :meth:`PatternStore.add` hands out increasing
ids from ``next_id``, which is stored, so a deleted id is never handed out
again, even after a restart.
"""

from __future__ import annotations

import json
import operator
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from ._ann import HnswIndex
from ._errors import SchemaError
from ._metadata import MetadataColumns, check_metadata, check_where, dumps
from ._sqlite import Database, StoreFile
from ._types import Hit
from ._vectors import VectorMatrix, as_vector, as_vectors

__all__ = ["PatternStore", "StoredVector"]

KIND = "midswarm.patternstore"
SCHEMA_VERSION = 1


@attrs.frozen
class StoredVector:
    """What :meth:`PatternStore.get` returns: the vector exactly as stored."""

    id: int
    vector: np.ndarray = attrs.field(eq=False)
    metadata: dict[str, Any]


def _create_schema(db: Database) -> None:
    conn = db.conn
    conn.execute("CREATE TABLE vectors (id INTEGER PRIMARY KEY, vector BLOB NOT NULL, "
                 "metadata TEXT NOT NULL, rev INTEGER NOT NULL)")
    conn.execute("CREATE INDEX vectors_rev ON vectors (rev)")
    conn.execute("CREATE TABLE deletions (id INTEGER PRIMARY KEY, rev INTEGER NOT NULL)")
    conn.execute("CREATE INDEX deletions_rev ON deletions (rev)")


def _as_id(value: Any, name: str = "id") -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got a bool")
    try:
        ident = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if not 0 <= ident < 2**63:
        raise ValueError(f"{name} must be in [0, 2**63), got {ident}")
    return ident


class PatternStore(StoreFile):
    """A durable vector store with exact top-k search and metadata filters.

    ``PatternStore(path, dim, metric="cosine")`` creates the SQLite file at
    ``path`` or opens it and loads every vector.  ``metric`` is ``"cosine"``
    (hit scores are cosine similarities, best is highest) or ``"l2"`` (scores
    are Euclidean distances, best is lowest); it and ``dim`` must match an
    existing file.

    ``readonly=True`` opens beside the one writer and follows its commits.
    ``synchronous`` is SQLite's: ``"NORMAL"`` (default) survives the process
    being killed, ``"FULL"`` also survives power loss.

    ``approximate=True`` also keeps an HNSW graph (the ``hnswlib`` package,
    extra ``midswarm[ann]``) for unfiltered searches of very large stores; it
    is rebuilt in memory on open.  Filtered searches, and any search the graph
    cannot fill, stay exact; ``search(..., exact=True)`` forces exact.

    Raises :class:`SchemaError` for a file that is not a PatternStore or has
    another ``dim``/``metric``, :class:`WriterLockedError` if another writer
    has it open, :class:`ImportError` for ``approximate=True`` without hnswlib.
    Methods are thread-safe; a store is closed by :meth:`close` or ``with``.
    """

    _noun = "PatternStore"

    def __init__(self, path: str | os.PathLike[str], dim: int, metric: str = "cosine", *,
                 readonly: bool = False, synchronous: str = "NORMAL",
                 approximate: bool = False, hnsw_m: int = 16,
                 hnsw_ef_construction: int = 200, hnsw_ef: int = 64) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if metric not in ("cosine", "l2"):
            raise ValueError(f"metric must be 'cosine' or 'l2', got {metric!r}")
        self._lock = threading.RLock()
        self._matrix = VectorMatrix(dim, metric)
        self._columns = MetadataColumns(self._matrix.capacity)
        self._ann = (HnswIndex(dim, metric, m=hnsw_m, ef_construction=hnsw_ef_construction,
                               ef=hnsw_ef) if approximate else None)

        def create(db: Database) -> None:
            _create_schema(db)
            db.set_meta(dim=dim, metric=metric, next_id=0, revision=0)

        self._closed = False
        self._db = Database(path, kind=KIND, version=SCHEMA_VERSION, create=create,
                            readonly=readonly, synchronous=synchronous)
        try:
            meta = self._db.meta()
            if int(meta["dim"]) != dim or meta["metric"] != metric:
                raise SchemaError(
                    f"{self._db.path!r} holds dim={meta['dim']} metric={meta['metric']!r}, "
                    f"opened with dim={dim} metric={metric!r}")
            self._next_id = int(meta["next_id"])
            self._revision = -1
            self._data_version = self._db.data_version()
            self._catch_up()
        except BaseException:
            self._db.close()
            raise

    # -- properties ------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._matrix.dim

    @property
    def metric(self) -> str:
        return self._matrix.metric

    def __len__(self) -> int:
        with self._lock:
            self._sync()
            return self._matrix.n

    def __contains__(self, ident: object) -> bool:
        with self._lock:
            self._sync()
            return ident in self._matrix.row_of

    def ids(self) -> list[int]:
        """Every live id, in storage order."""
        with self._lock:
            self._sync()
            return self._matrix.ids().tolist()

    # -- writes ------------------------------------------------------------------

    def add(self, vectors: Any, metadata: Sequence[Mapping[str, Any] | None] | None = None
            ) -> list[int]:
        """Store a batch of vectors (shape ``(n, dim)``) with new ids; returns the ids.

        ``metadata`` is ``None`` or one mapping (or ``None``) per vector.  The
        ids are durable when this returns.  Raises :class:`ValueError` or
        :class:`TypeError` for wrong shape, non-finite values, a zero vector
        under cosine, or bad metadata; nothing is written then.
        """
        with self._lock:
            self._writable()
            vecs = as_vectors(vectors, self.dim)
            n = len(vecs)
            mds = self._check_metadata_list(metadata, n)
            prepared = self._matrix.prepare(vecs)
            if n == 0:
                return []
            ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
            rev = self._revision + 1
            blobs = vecs.astype("<f4", copy=False)
            with self._db.transaction() as conn:
                conn.executemany(
                    "INSERT INTO vectors (id, vector, metadata, rev) VALUES (?, ?, ?, ?)",
                    zip(ids.tolist(), (row.tobytes() for row in blobs), map(dumps, mds),
                        [rev] * n, strict=True))
                self._db.set_meta(next_id=self._next_id + n, revision=rev)
            self._next_id += n
            self._revision = rev
            self._append(ids, prepared, mds)
            return ids.tolist()

    def upsert(self, id: int, vector: Any, metadata: Mapping[str, Any] | None = None) -> None:
        """Store ``vector`` under ``id``, replacing whatever was there; durable on return."""
        with self._lock:
            self._writable()
            ident = _as_id(id)
            vec = as_vector(vector, self.dim)
            md = check_metadata(metadata)
            prepared = self._matrix.prepare(vec[None, :], "vector")
            rev = self._revision + 1
            next_id = max(self._next_id, ident + 1)
            with self._db.transaction() as conn:
                conn.execute(
                    "INSERT INTO vectors (id, vector, metadata, rev) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET vector = excluded.vector, "
                    "metadata = excluded.metadata, rev = excluded.rev",
                    (ident, vec.astype("<f4").tobytes(), dumps(md), rev))
                self._db.set_meta(next_id=next_id, revision=rev)
            self._next_id = next_id
            self._revision = rev
            self._put(ident, prepared[0], md)

    def delete(self, ids: int | Iterable[int]) -> None:
        """Remove ids; durable on return.

        Raises :class:`KeyError` naming the unknown ids if any is not stored;
        nothing is deleted then.
        """
        with self._lock:
            self._writable()
            if isinstance(ids, Iterable) and not isinstance(ids, str | bytes):
                wanted = list(dict.fromkeys(_as_id(i, "ids[]") for i in ids))
            else:
                wanted = [_as_id(ids, "ids")]
            unknown = [i for i in wanted if i not in self._matrix.row_of]
            if unknown:
                raise KeyError(f"unknown ids: {unknown[:10]}"
                               + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""))
            if not wanted:
                return
            rev = self._revision + 1
            with self._db.transaction() as conn:
                conn.executemany("DELETE FROM vectors WHERE id = ?", [(i,) for i in wanted])
                conn.executemany(
                    "INSERT INTO deletions (id, rev) VALUES (?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET rev = excluded.rev",
                    [(i, rev) for i in wanted])
                self._db.set_meta(revision=rev)
            self._revision = rev
            for ident in wanted:
                self._remove(ident)

    # -- reads -------------------------------------------------------------------

    def get(self, id: int) -> StoredVector:
        """The vector and metadata stored under ``id``; :class:`KeyError` if none."""
        with self._lock:
            self._check_open()
            ident = _as_id(id)
            row = self._db.conn.execute(
                "SELECT vector, metadata FROM vectors WHERE id = ?", (ident,)).fetchone()
            if row is None:
                raise KeyError(f"unknown id {ident}")
            vec = np.frombuffer(row[0], dtype="<f4").astype(np.float32)
            return StoredVector(ident, vec, json.loads(row[1]))

    def search(self, vector: Any, k: int = 10, where: Mapping[str, Any] | None = None, *,
               exact: bool | None = None) -> list[Hit]:
        """The ``k`` stored vectors nearest ``vector``, best first.

        ``where`` filters on metadata inside the search, so ``min(k, matching)``
        hits come back.  Keys are ANDed; a value is an equality test, or a
        mapping of operators: ``$eq $ne $in $nin $gt $gte $lt $lte $exists``
        (``$ne``/``$nin`` also match items without the key; numbers compare by
        value, bools only with bools).  Ties in score go to the lower id.
        Raises :class:`ValueError` /
        :class:`TypeError` for a wrong-sized or non-finite vector, ``k < 1``, or
        a malformed filter.
        """
        with self._lock:
            self._check_open()
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(f"k must be a positive int, got {k!r}")
            q = self._matrix.prepare_query(as_vector(vector, self.dim))
            cond = check_where(where) if where else None
            self._sync()
            rows: np.ndarray | None = None
            if self._ann is not None and cond is None and exact is not True:
                rows = self._ann_rows(q, k)
            if rows is None:
                mask = self._columns.mask(cond, self._matrix.n) if cond else None
                rows, scores = self._matrix.top_k(q, k, mask)
            else:
                rows, scores = self._matrix.rank(q, rows)
            ids = self._matrix.ids()
            return [Hit(int(ids[r]), float(s), self._columns.row(int(r)))
                    for r, s in zip(rows.tolist(), scores.tolist(), strict=True)]

    def ann_recall(self, queries: Any, k: int = 10) -> float:
        """Mean recall@k of the approximate index against exact search over ``queries``.

        Raises :class:`ValueError` if the store was not opened with ``approximate=True``.
        """
        if self._ann is None:
            raise ValueError("this store has no approximate index (approximate=False)")
        qs = as_vectors(queries, self.dim, "queries")
        total = 0.0
        for q in qs:
            exact_ids = {h.id for h in self.search(q, k, exact=True)}
            approx_ids = {h.id for h in self.search(q, k)}
            total += len(exact_ids & approx_ids) / max(len(exact_ids), 1)
        return total / max(len(qs), 1)

    def refresh(self) -> None:
        """Catch up with commits made by other connections (done before each read anyway)."""
        with self._lock:
            self._check_open()
            self._catch_up()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._matrix.n} vectors"
        return f"<PatternStore {self.metric} dim={self.dim} {state}>"

    # -- internals -----------------------------------------------------------------

    def _check_metadata_list(self, metadata: Any, n: int) -> list[dict[str, Any]]:
        if metadata is None:
            return [{} for _ in range(n)]
        if isinstance(metadata, Mapping) or not isinstance(metadata, Sequence):
            raise TypeError("metadata must be a sequence with one mapping (or None) per vector")
        if len(metadata) != n:
            raise ValueError(f"metadata has {len(metadata)} entries for {n} vectors")
        return [check_metadata(m, f"metadata[{i}]") for i, m in enumerate(metadata)]

    def _append(self, ids: np.ndarray, prepared: np.ndarray,
                mds: Sequence[Mapping[str, Any]]) -> None:
        start = self._matrix.n
        cap = self._matrix.ensure_capacity(start + len(ids))
        if cap > self._columns.capacity:
            self._columns.grow(cap)
        self._matrix.append(ids, prepared)
        self._columns.set_rows(start, mds)
        if self._ann is not None:
            self._ann.add(ids, prepared)

    def _put(self, ident: int, prepared: np.ndarray, md: Mapping[str, Any]) -> None:
        row = self._matrix.row_of.get(ident)
        if row is None:
            self._append(np.array([ident], np.int64), prepared[None, :], [md])
            return
        self._matrix.replace(row, prepared)
        self._columns.replace_row(row, md)
        if self._ann is not None:
            self._ann.add(np.array([ident], np.int64), prepared[None, :])

    def _remove(self, ident: int) -> None:
        src, dst = self._matrix.remove(ident)
        if src != dst:
            self._columns.move_row(src, dst)
        else:
            self._columns.clear_row(src)
        if self._ann is not None:
            self._ann.remove(ident)

    def _sync(self) -> None:
        """For a reader: catch up if another connection committed since we last looked."""
        self._check_open()
        if self._db.readonly:
            version = self._db.data_version()
            if version != self._data_version:
                self._data_version = version
                self._catch_up()

    def _catch_up(self) -> None:
        with self._db.snapshot() as conn:
            revision = int(self._db.meta()["revision"])
            if revision == self._revision:
                return
            deleted = [] if self._revision < 0 else [r[0] for r in conn.execute(
                "SELECT id FROM deletions WHERE rev > ?", (self._revision,))]
            rows = conn.execute(
                "SELECT id, vector, metadata FROM vectors WHERE rev > ? ORDER BY id",
                (self._revision,)).fetchall()
        for ident in deleted:
            if ident in self._matrix.row_of:
                self._remove(ident)
        if rows:
            ids, blobs, md_texts = zip(*rows, strict=True)
            width = 4 * self.dim
            if any(len(b) != width for b in blobs):
                bad = next(i for i, b in zip(ids, blobs, strict=True) if len(b) != width)
                raise SchemaError(f"{self.path!r}: vector {bad} does not have {self.dim} "
                                  f"float32 values")
            vecs = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(-1, self.dim)
            prepared = self._matrix.prepare(vecs.astype(np.float32, copy=False))
            # One parse of one JSON array is much faster than a parse per row.
            mds = json.loads("[" + ",".join(md_texts) + "]")
            row_of = self._matrix.row_of
            if not row_of:  # opening: every row is new
                self._append(np.array(ids, np.int64), prepared, mds)
            else:
                fresh = [i for i, ident in enumerate(ids) if ident not in row_of]
                for i, ident in enumerate(ids):
                    if ident in row_of:
                        self._put(ident, prepared[i], mds[i])
                if fresh:
                    take = np.array(fresh, np.int64)
                    self._append(np.array(ids, np.int64)[take], prepared[take],
                                 [mds[i] for i in fresh])
        self._revision = revision

    def _ann_rows(self, q: np.ndarray, k: int) -> np.ndarray | None:
        assert self._ann is not None
        m = min(k, self._matrix.n)
        if m == 0:
            return None
        labels = self._ann.query(q, m)
        if labels is None:
            return None
        row_of = self._matrix.row_of
        rows = [row_of[i] for i in labels.tolist() if i in row_of]
        return np.array(rows, np.int64) if len(rows) == m else None

