"""PatternStore: bad input gets a clear error and writes nothing; wrong files are refused."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from _helpers import set_meta

from midswarm.reasoning import PatternStore, ReasoningBank, SchemaError, WriterLockedError


@pytest.fixture
def store(tmp_path):
    s = PatternStore(tmp_path / "p.db", 4)
    s.add(np.eye(4), [{"i": i} for i in range(4)])
    yield s
    s.close()


def state(store: PatternStore) -> tuple:
    """Everything observable, memory and disk, to prove a failed call changed nothing."""
    rows = store._db.conn.execute("SELECT id, vector, metadata FROM vectors ORDER BY id")
    return (len(store), store.ids(), rows.fetchall(), store._db.meta(),
            [(h.id, h.metadata) for h in store.search(np.ones(4), 10)])


@pytest.mark.parametrize("vectors, error, message", [
    (np.ones((2, 3)), ValueError, r"shape \(n, 4\)"),
    (np.ones(4), ValueError, r"shape \(n, 4\)"),
    (np.ones((1, 2, 4)), ValueError, r"shape \(n, 4\)"),
    (np.array([[1, 2, np.nan, 4]]), ValueError, r"vectors\[0\] contains NaN"),
    (np.array([[1, 1, 1, 1], [1, np.inf, 0, 0]]), ValueError, r"vectors\[1\] contains NaN"),
    (np.array([[1e39, 1, 1, 1]]), ValueError, "overflows float32"),
    (np.array([[0, 0, 0, 0]]), ValueError, r"vectors\[0\] is all zeros"),
    (np.array([["a", "b", "c", "d"]]), TypeError, "real numbers"),
    (np.array([[1j, 0, 0, 0]]), TypeError, "real numbers"),
    ([[1, 2], [3]], (TypeError, ValueError), "vectors"),
])
def test_bad_vectors_are_refused_and_nothing_is_written(store, vectors, error, message):
    before = state(store)
    with pytest.raises(error, match=message):
        store.add(vectors)
    assert state(store) == before


@pytest.mark.parametrize("metadata, error, message", [
    ([{"a": 1}], ValueError, "metadata has 1 entries for 2 vectors"),
    ({"a": 1}, TypeError, "one mapping"),
    ([{"a": 1}, {"b": [1, 2]}], TypeError, r"metadata\[1\]\['b'\]"),
    ([{"a": float("nan")}, {}], ValueError, "not a finite number"),
    ([{1: "x"}, {}], TypeError, "keys must be str"),
    ([{"a": 2**60}, {}], ValueError, "outside"),
    ([{"a": None}, {}], TypeError, "NoneType"),
])
def test_bad_metadata_is_refused_and_nothing_is_written(store, metadata, error, message):
    before = state(store)
    with pytest.raises(error, match=message):
        store.add(np.ones((2, 4)), metadata)
    assert state(store) == before


def test_bad_upsert_get_delete_search_arguments(store):
    before = state(store)
    with pytest.raises(ValueError, match="length 4"):
        store.upsert(1, np.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        store.upsert(1, [1, np.nan, 0, 0])
    with pytest.raises(TypeError, match="bool"):
        store.upsert(True, np.ones(4))
    with pytest.raises(ValueError, match=r"\[0, 2\*\*63\)"):
        store.upsert(-1, np.ones(4))
    with pytest.raises(TypeError, match="must be an int"):
        store.upsert("7", np.ones(4))
    with pytest.raises(KeyError, match="unknown id 99"):
        store.get(99)
    with pytest.raises(KeyError, match=r"unknown ids: \[99, 100\]"):
        store.delete([0, 99, 100])  # 0 exists, but nothing at all is deleted
    with pytest.raises(ValueError, match="k must be a positive int"):
        store.search(np.ones(4), 0)
    with pytest.raises(ValueError, match="length 4"):
        store.search(np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        store.search([np.nan, 1, 1, 1])
    with pytest.raises(ValueError, match="all zeros"):
        store.search(np.zeros(4))
    with pytest.raises(ValueError, match="unknown operator"):
        store.search(np.ones(4), where={"i": {"$regex": "x"}})
    with pytest.raises(TypeError, match="range operands must be numbers"):
        store.search(np.ones(4), where={"i": {"$gt": "a"}})
    with pytest.raises(TypeError, match="list of values"):
        store.search(np.ones(4), where={"i": {"$in": "abc"}})
    with pytest.raises(TypeError, match="True or False"):
        store.search(np.ones(4), where={"i": {"$exists": 1}})
    assert state(store) == before


def test_failed_transaction_leaves_memory_and_disk_untouched(store, monkeypatch):
    """If SQLite refuses the write (disk full, say), the in-memory index is not updated."""
    before = state(store)
    monkeypatch.setattr(store._db, "set_meta", lambda **kw: (_ for _ in ()).throw(
        sqlite3.OperationalError("database or disk is full")))
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        store.add(np.ones((3, 4)))
    with pytest.raises(sqlite3.OperationalError):
        store.delete([0])
    with pytest.raises(sqlite3.OperationalError):
        store.upsert(0, np.ones(4))
    monkeypatch.undo()
    assert state(store) == before
    assert store.add(np.ones((1, 4))) == [4]


def test_reopening_with_other_dim_or_metric_is_refused(tmp_path):
    path = tmp_path / "p.db"
    PatternStore(path, 4).close()
    with pytest.raises(SchemaError, match="dim=4 metric='cosine', opened with dim=5"):
        PatternStore(path, 5)
    with pytest.raises(SchemaError, match="opened with dim=4 metric='l2'"):
        PatternStore(path, 4, "l2")
    PatternStore(path, 4).close()  # the refusals left the file usable


def test_files_of_another_schema_are_refused_untouched(tmp_path):
    bank_path = tmp_path / "bank.db"
    ReasoningBank(bank_path).close()
    with pytest.raises(SchemaError, match="holds a 'midswarm.reasoningbank', not a "
                                          "'midswarm.patternstore'"):
        PatternStore(bank_path, 4)

    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError, match="not a midswarm store.*people"):
        PatternStore(foreign, 4)
    conn = sqlite3.connect(foreign)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    conn.close()
    assert tables == ["people"]

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(SchemaError, match="not an SQLite database"):
        PatternStore(junk, 4)
    assert junk.read_bytes() == b"this is not a database at all" * 100


def test_newer_schema_version_is_refused(tmp_path):
    path = tmp_path / "p.db"
    PatternStore(path, 4).close()
    set_meta(path, schema_version=99)
    with pytest.raises(SchemaError, match="schema version 99; this midswarm reads up to "
                                          "version 1"):
        PatternStore(path, 4)


def test_constructor_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="dim must be a positive int"):
        PatternStore(tmp_path / "a.db", 0)
    with pytest.raises(ValueError, match="metric must be"):
        PatternStore(tmp_path / "a.db", 3, "dot")
    with pytest.raises(ValueError, match="synchronous must be"):
        PatternStore(tmp_path / "a.db", 3, synchronous="OFF")
    with pytest.raises(FileNotFoundError, match="read-only"):
        PatternStore(tmp_path / "missing.db", 3, readonly=True)


def test_one_writer_at_a_time_readers_beside_it(tmp_path):
    path = tmp_path / "p.db"
    writer = PatternStore(path, 2)
    with pytest.raises(WriterLockedError, match="already open for writing"):
        PatternStore(path, 2)
    reader = PatternStore(path, 2, readonly=True)
    with pytest.raises(PermissionError, match="read-only"):
        reader.add([[1.0, 2.0]])
    writer.close()
    PatternStore(path, 2).close()  # closing released the lock
    reader.close()


def test_closed_store_says_so(tmp_path):
    store = PatternStore(tmp_path / "p.db", 2)
    store.close()
    store.close()
    with pytest.raises(ValueError, match="closed"):
        store.search([1.0, 0.0])
    with pytest.raises(ValueError, match="closed"):
        store.add([[1.0, 0.0]])
