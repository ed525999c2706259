"""Opening the SQLite files behind the stores: WAL, schema kind and version, one writer.

Durability: every write is one transaction that has committed before the call
returns.  In WAL mode a commit appends to the ``-wal`` file; with
``synchronous="NORMAL"`` (the default) the WAL is not fsynced on every commit,
so a killed process (``kill -9``, a crash, an exception) loses nothing that
committed, while a power cut or an OS crash can lose the last commits (never
corrupting the file).  ``synchronous="FULL"`` fsyncs every commit and survives
power loss too, at the cost of an fsync per write.

Each file carries a ``midswarm_meta`` table naming its ``kind`` and
``schema_version``; opening checks both before touching anything else, runs
the migrations from an older version in one transaction, and refuses a newer
version.  One writer at a time is enforced with an advisory ``flock`` on a
``<file>-writer.lock`` sidecar (POSIX only); readers open the database
read-only and never take that lock.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any, ClassVar, Self

from ._errors import SchemaError, WriterLockedError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["Database", "SYNCHRONOUS_MODES", "StoreFile"]

SYNCHRONOUS_MODES = ("NORMAL", "FULL", "EXTRA")

Migration = Callable[["Database"], None]


class Database:
    """An SQLite connection set up for one midswarm store.

    ``create(db)`` runs inside a transaction on a fresh file, after the meta
    table exists.  ``migrations[v](db)`` upgrades a file from version ``v`` to
    ``v + 1``; all pending migrations run in one transaction.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        kind: str,
        version: int,
        create: Callable[[Database], None],
        migrations: Mapping[int, Migration] | None = None,
        readonly: bool = False,
        synchronous: str = "NORMAL",
    ) -> None:
        if not isinstance(synchronous, str) or synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ValueError(
                f"synchronous must be one of {SYNCHRONOUS_MODES}, got {synchronous!r}")
        self.path = os.fspath(path)
        self.kind = kind
        self.readonly = readonly
        self._lock_file: IO[bytes] | None = None
        in_memory = self.path == ":memory:"
        if readonly and in_memory:
            raise ValueError("an in-memory store cannot be opened read-only")
        if readonly and not os.path.exists(self.path):
            raise FileNotFoundError(f"no store at {self.path!r} to open read-only")
        if not readonly and not in_memory:
            self._take_writer_lock()
        try:
            self.conn = self._connect(in_memory, synchronous.upper())
            self._check_schema(version, create, migrations or {})
        except BaseException:
            self.close()
            raise

    # -- opening -------------------------------------------------------------

    def _take_writer_lock(self) -> None:
        if fcntl is None:  # pragma: no cover - not POSIX
            return
        lock_path = self.path + "-writer.lock"
        f = open(lock_path, "ab")  # noqa: SIM115 - held for the store's lifetime
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise WriterLockedError(
                f"{self.path!r} is already open for writing (one writer at a time; "
                f"open with readonly=True to read beside it)") from None
        self._lock_file = f

    def _connect(self, in_memory: bool, synchronous: str) -> sqlite3.Connection:
        if self.readonly:
            uri = "file:" + urllib.parse.quote(self.path) + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None,
                                   check_same_thread=False)
        else:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            if not self.readonly:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal" and not in_memory:
                    raise SchemaError(f"{self.path!r}: could not switch to WAL mode ({mode})")
                conn.execute(f"PRAGMA synchronous = {synchronous}")
            # Reading sqlite_master is the first real read: it is where a
            # file that is not a database shows itself.
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise SchemaError(f"{self.path!r} is not an SQLite database: {exc}") from None
        return conn

    def _tables(self) -> set[str]:
        rows = self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {r[0] for r in rows}

    def _check_schema(self, version: int, create: Callable[[Database], None],
                      migrations: Mapping[int, Migration]) -> None:
        if not self.readonly:
            # IMMEDIATE: two processes creating the same new file serialise here.
            with self.transaction():
                tables = self._tables()
                if not tables:
                    self.conn.execute(
                        "CREATE TABLE midswarm_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                    self.set_meta(kind=self.kind, schema_version=version)
                    create(self)
                    return
                found = self._found_version(tables, version)
                for v in range(found, version):
                    try:
                        migrations[v](self)
                    except Exception as exc:
                        # The transaction rolls back: the file stays at version `found`.
                        raise SchemaError(
                            f"{self.path!r}: migrating from schema version {v} to {v + 1} "
                            f"failed, nothing was changed: {type(exc).__name__}: {exc}"
                        ) from exc
                    self.set_meta(schema_version=v + 1)
        else:
            found = self._found_version(self._tables(), version)
            if found != version:
                raise SchemaError(
                    f"{self.path!r} has schema version {found} and needs migrating to "
                    f"{version}: open it once for writing")

    def _found_version(self, tables: set[str], version: int) -> int:
        if "midswarm_meta" not in tables:
            raise SchemaError(
                f"{self.path!r} is an SQLite database but not a midswarm store "
                f"(tables: {', '.join(sorted(tables)) or 'none'})")
        meta = self.meta()
        kind = meta.get("kind")
        if kind != self.kind:
            raise SchemaError(f"{self.path!r} holds a {kind!r}, not a {self.kind!r}")
        try:
            found = int(meta["schema_version"])
        except (KeyError, ValueError):
            raise SchemaError(f"{self.path!r} has no readable schema_version") from None
        if found > version:
            raise SchemaError(
                f"{self.path!r} has schema version {found}; this midswarm reads up to "
                f"version {version}")
        if found < 1:
            raise SchemaError(f"{self.path!r} has invalid schema version {found}")
        return found

    # -- use -----------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed on normal exit, rolled back on any error."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same committed state."""
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        finally:
            self.conn.execute("COMMIT")

    def meta(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT key, value FROM midswarm_meta").fetchall())

    def set_meta(self, **values: Any) -> None:
        self.conn.executemany(
            "INSERT INTO midswarm_meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [(k, str(v)) for k, v in values.items()])

    def data_version(self) -> int:
        """Changes whenever another connection commits to the file."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def integrity_check(self) -> list[str]:
        """SQLite's own check: ``["ok"]`` for a sound file."""
        return [r[0] for r in self.conn.execute("PRAGMA integrity_check").fetchall()]

    def close(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
            self.conn = None  # type: ignore[assignment]
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None


class StoreFile:
    """The life cycle both stores share around their :class:`Database`.

    A subclass sets ``_lock`` (a ``threading.RLock``), ``_closed = False`` and
    ``_db`` in its constructor, and names itself in ``_noun`` for errors.
    """

    _noun: ClassVar[str]
    _db: Database
    _lock: threading.RLock
    _closed: bool

    @property
    def path(self) -> str:
        return self._db.path

    @property
    def readonly(self) -> bool:
        return self._db.readonly

    def integrity_check(self) -> list[str]:
        """SQLite's ``PRAGMA integrity_check``: ``["ok"]`` for a sound file."""
        with self._lock:
            self._check_open()
            return self._db.integrity_check()

    def close(self) -> None:
        """Close the file (idempotent).  Every returned write is already durable."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        """Raises :class:`ValueError` once closed."""
        if self._closed:
            raise ValueError(f"the {self._noun} is closed")

    def _writable(self) -> None:
        """Raises :class:`ValueError` once closed, :class:`PermissionError` if read-only."""
        self._check_open()
        if self._db.readonly:
            raise PermissionError(f"{self.path!r} is open read-only")
