"""ReasoningBank files: recording round trips, schema versions, migration, wrong files."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from _helpers import set_meta

from midswarm.reasoning import (
    Experience,
    PatternStore,
    ReasoningBank,
    SchemaError,
    WriterLockedError,
)
from midswarm.reasoning._bank_schema import KIND, create_v1
from midswarm.reasoning._sqlite import Database


def test_record_round_trips_and_survives_reopen(tmp_path):
    path = tmp_path / "bank.db"
    bank = ReasoningBank(path, clock=lambda: 123.0)
    e = Experience("pm-1", "predict", 0.5, -0.25, 0.91, 0.7,
                   {"symbol": "AAPL", "window": 20, "live": True, "vol": 0.2},
                   np.array([1, 2, 3], np.int64), None)
    ident = bank.record(e)
    assert bank.record(Experience("pm-2", "predict", 1.0, 1.0, 0.5, 0.5)) == ident + 1
    assert len(bank) == 2 and bank.dim == 3
    bank.close()
    bank = ReasoningBank(path)
    got = bank.get_experience(ident)
    assert (got.agent_id, got.action, got.expected, got.actual, got.similarity,
            got.confidence, got.context, got.timestamp) == (
        "pm-1", "predict", 0.5, -0.25, 0.91, 0.7,
        {"symbol": "AAPL", "window": 20, "live": True, "vol": 0.2}, 123.0)
    assert got.vector.dtype == np.float32 and got.vector.tolist() == [1.0, 2.0, 3.0]
    assert bank.get_experience(ident + 1).vector is None
    with pytest.raises(KeyError, match="unknown experience id 99"):
        bank.get_experience(99)
    with pytest.raises(ValueError, match="has 2 values; this bank stores vectors of "
                                         "dimension 3"):
        bank.record(Experience("pm-1", "predict", 1.0, 1.0, 0.5, 0.5, {}, np.ones(2)))
    assert len(bank) == 2
    assert bank.integrity_check() == ["ok"]
    bank.close()


def test_one_writer_readers_beside_and_closing(tmp_path):
    path = tmp_path / "bank.db"
    writer = ReasoningBank(path)
    with pytest.raises(WriterLockedError):
        ReasoningBank(path)
    reader = ReasoningBank(path, readonly=True)
    with pytest.raises(PermissionError, match="read-only"):
        reader.record(Experience("a", "b", 1.0, 1.0, 1.0, 1.0))
    with pytest.raises(PermissionError):
        reader.distill()
    writer.record(Experience("a", "b", 1.0, 1.0, 1.0, 1.0, {}, np.ones(4)))
    assert len(reader) == 1 and reader.dim == 4  # follows the writer
    writer.close()
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.record(Experience("a", "b", 1.0, 1.0, 1.0, 1.0))
    reader.close()


def test_constructor_arguments(tmp_path):
    with pytest.raises(ValueError, match="region_similarity"):
        ReasoningBank(tmp_path / "a.db", region_similarity=1.5)
    with pytest.raises(ValueError, match="min_support"):
        ReasoningBank(tmp_path / "a.db", min_support=0)
    with pytest.raises(ValueError, match="synchronous"):
        ReasoningBank(tmp_path / "a.db", synchronous="off")
    ReasoningBank(tmp_path / "a.db", synchronous="FULL").close()


def _v1_file(path) -> None:
    """A bank as the version-1 layout wrote it: two experiences and one memory row."""
    db = Database(path, kind=KIND, version=1, create=create_v1)
    with db.transaction() as conn:
        conn.executemany(
            "INSERT INTO experiences (agent_id, action, expected, actual, similarity, "
            "confidence, context, vector, timestamp, score) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [("pm-1", "predict", 0.01, 0.02, 0.9, 0.8,
              json.dumps({"symbol": "AAPL", "window": 20, "k": 5}),
              np.array([1, 0], "<f4").tobytes(), 100.0, 0.75),
             ("pm-1", "predict", 0.01, -0.02, 0.8, 0.6, json.dumps({"symbol": "AAPL"}),
              None, 101.0, 0.0)])
        conn.execute(
            "INSERT INTO memory (title, description, content, confidence, usage_count, "
            "created, last_used, source_outcome) VALUES (?,?,?,?,?,?,?,?)",
            ("old lesson", "kept from v1", "text", 0.9, 4, 50.0, 60.0, "success"))
        db.set_meta(dim=2)
    db.close()


def _layout(path) -> dict:
    conn = sqlite3.connect(path)
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name")]
    layout = {t: [r[1:] for r in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
    layout["indexes"] = sorted(r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'"))
    conn.close()
    return layout


def test_migration_from_version_1(tmp_path):
    old = tmp_path / "v1.db"
    _v1_file(old)
    bank = ReasoningBank(old)
    assert bank._db.meta()["schema_version"] == "2"
    assert len(bank) == 2 and bank.dim == 2
    [legacy] = bank.memory_items()
    assert (legacy.title, legacy.usage_count, legacy.created, legacy.source_outcome) == (
        "old lesson", 4, 50.0, "success")
    hits = [r[0] for r in bank._db.conn.execute("SELECT hit FROM experiences ORDER BY id")]
    assert hits == [1, 0]
    items = bank.distill()  # every migrated experience gets distilled
    assert sorted(i.source_outcome for i in items) == ["failure", "success"]
    assert any("window 20 with k 5" in i.description for i in items)
    bank.close()
    fresh = tmp_path / "v2.db"
    ReasoningBank(fresh).close()
    assert _layout(old) == _layout(fresh)  # migrated and fresh files are the same shape


def test_failed_migration_changes_nothing(tmp_path):
    old = tmp_path / "v1.db"
    _v1_file(old)
    conn = sqlite3.connect(old)
    conn.execute("UPDATE experiences SET context = 'not json' WHERE id = 2")
    conn.commit()
    conn.close()
    before = _layout(old)
    with pytest.raises(SchemaError, match="migrating from schema version 1 to 2 failed, "
                                          "nothing was changed"):
        ReasoningBank(old)
    assert _layout(old) == before
    conn = sqlite3.connect(old)
    assert conn.execute(
        "SELECT value FROM midswarm_meta WHERE key = 'schema_version'").fetchone() == ("1",)
    conn.close()


def test_readonly_open_does_not_migrate(tmp_path):
    old = tmp_path / "v1.db"
    _v1_file(old)
    with pytest.raises(SchemaError, match="needs migrating to 2: open it once for writing"):
        ReasoningBank(old, readonly=True)


def test_wrong_files_are_refused(tmp_path):
    store = tmp_path / "store.db"
    PatternStore(store, 4).close()
    with pytest.raises(SchemaError, match="holds a 'midswarm.patternstore', not a "
                                          "'midswarm.reasoningbank'"):
        ReasoningBank(store)
    PatternStore(store, 4).close()  # untouched and usable
    newer = tmp_path / "newer.db"
    ReasoningBank(newer).close()
    set_meta(newer, schema_version=3)
    with pytest.raises(SchemaError, match="schema version 3; this midswarm reads up to "
                                          "version 2"):
        ReasoningBank(newer)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x00\x01garbage" * 500)
    with pytest.raises(SchemaError, match="not an SQLite database"):
        ReasoningBank(junk)
