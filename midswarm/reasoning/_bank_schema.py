"""The ReasoningBank's SQLite schema, current and previous, and the migration between.

Version 2 (current):

* ``experiences``: one row per recorded experience, with its judged ``score``,
  ``hit`` (direction right), ``situation`` key and, once distilled, ``region``.
  Experiences are never deleted, so ids are never reused; distillation
  handles them in id order and keeps its progress in the ``distilled_through``
  meta value.  Recording touches the table and one index only.
* ``regions``: groups of similar experience vectors within a situation; the
  ``centroid`` blob is the float64 sum of the members' unit vectors (NULL for
  the one vector-less region a situation may have).
* ``memory_items``: distilled lessons, at most one success and one failure
  item per region.  ``region`` is NULL only for items carried over from
  version 1, which had no regions.
* ``adaptations``: every command :meth:`ReasoningBank.suggest` issued, with
  the last experience id it considered and the full parameter set it leaves
  the agent with.

Version 1 (the first layout) kept experiences with their score but no
direction flag, situation or grouping, and memory items as a flat list with no
evidence counts or vectors.  Migrating adds the new columns (recomputing
``hit`` and ``situation`` from each row), the new tables, and carries the old
items over as vector-less items; re-distilling then builds regions and items
from every experience.
"""

from __future__ import annotations

import json

from ._distill import situation_key
from ._judge import direction_hit
from ._sqlite import Database

__all__ = ["KIND", "SCHEMA_VERSION", "MIGRATIONS", "create_v1", "create_v2"]

KIND = "midswarm.reasoningbank"
SCHEMA_VERSION = 2

_V1_TABLES = """
CREATE TABLE experiences (
    id INTEGER PRIMARY KEY,
    agent_id TEXT NOT NULL,
    action TEXT NOT NULL,
    expected REAL NOT NULL,
    actual REAL NOT NULL,
    similarity REAL NOT NULL,
    confidence REAL NOT NULL,
    context TEXT NOT NULL,
    vector BLOB,
    timestamp REAL NOT NULL,
    score REAL NOT NULL
);
CREATE INDEX experiences_by_agent ON experiences (agent_id, id);
CREATE TABLE memory (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    content TEXT NOT NULL,
    confidence REAL NOT NULL,
    usage_count INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    last_used REAL NOT NULL,
    source_outcome TEXT NOT NULL
);
"""

_V2_NEW_TABLES = """
CREATE INDEX experiences_by_region ON experiences (region) WHERE region IS NOT NULL;
CREATE TABLE regions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    situation TEXT NOT NULL,
    centroid BLOB
);
CREATE INDEX regions_by_situation ON regions (situation);
CREATE TABLE memory_items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    region INTEGER REFERENCES regions (id),
    source_outcome TEXT NOT NULL CHECK (source_outcome IN ('success', 'failure')),
    situation TEXT NOT NULL,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    content TEXT NOT NULL,
    confidence REAL NOT NULL,
    support INTEGER NOT NULL,
    evidence INTEGER NOT NULL,
    usage_count INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    last_used REAL NOT NULL,
    vector BLOB,
    UNIQUE (region, source_outcome)
);
CREATE TABLE adaptations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id TEXT NOT NULL,
    issued_at REAL NOT NULL,
    last_experience INTEGER NOT NULL,
    changes TEXT NOT NULL,
    parameters TEXT NOT NULL,
    reason TEXT NOT NULL,
    success_rate REAL NOT NULL,
    outcomes INTEGER NOT NULL
);
CREATE INDEX adaptations_by_agent ON adaptations (agent_id, id);
"""

_V2_EXPERIENCE_COLUMNS = """
ALTER TABLE experiences ADD COLUMN hit INTEGER NOT NULL DEFAULT 0;
ALTER TABLE experiences ADD COLUMN situation TEXT NOT NULL DEFAULT '';
ALTER TABLE experiences ADD COLUMN region INTEGER REFERENCES regions (id);
"""


def _script(db: Database, script: str) -> None:
    # executescript() would COMMIT the open transaction; run statements one by one.
    for statement in script.split(";"):
        if statement.strip():
            db.conn.execute(statement)


def create_v1(db: Database) -> None:
    """The version-1 layout (kept to test the migration from it)."""
    _script(db, _V1_TABLES)
    db.set_meta(dim=0)


def create_v2(db: Database) -> None:
    _script(db, _V1_TABLES)
    _script(db, "DROP TABLE memory")
    _script(db, _V2_EXPERIENCE_COLUMNS)
    _script(db, _V2_NEW_TABLES)
    db.set_meta(dim=0, distilled_through=0)


def _migrate_1_to_2(db: Database) -> None:
    conn = db.conn
    _script(db, _V2_EXPERIENCE_COLUMNS)
    _script(db, _V2_NEW_TABLES)
    rows = conn.execute("SELECT id, action, expected, actual, context FROM experiences")
    conn.executemany(
        "UPDATE experiences SET hit = ?, situation = ? WHERE id = ?",
        [(int(direction_hit(expected, actual)), situation_key(action, json.loads(context)), i)
         for i, action, expected, actual, context in rows.fetchall()])
    conn.execute(
        "INSERT INTO memory_items (region, source_outcome, situation, title, description, "
        "content, confidence, support, evidence, usage_count, created, updated, last_used, "
        "vector) SELECT NULL, CASE WHEN source_outcome = 'failure' THEN 'failure' "
        "ELSE 'success' END, '', title, description, content, confidence, 0, 0, usage_count, "
        "created, created, last_used, NULL FROM memory")
    conn.execute("DROP TABLE memory")
    db.set_meta(distilled_through=0)
    if "dim" not in db.meta():
        db.set_meta(dim=0)


MIGRATIONS = {1: _migrate_1_to_2}
