"""PatternStore: read-only openers follow the writer; concurrent threads and processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import numpy as np

from midswarm.reasoning import PatternStore


def test_reader_follows_adds_deletes_and_upserts(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "p.db"
    writer = PatternStore(path, 5, "l2")
    first = writer.add(rng.standard_normal((50, 5)), [{"g": i % 2} for i in range(50)])
    reader = PatternStore(path, 5, "l2", readonly=True)
    assert len(reader) == 50

    writer.delete(first[:10])
    writer.upsert(20, np.full(5, 9.0), {"g": 7})
    writer.add(rng.standard_normal((30, 5)), [{"g": 1}] * 30)
    writer.delete([first[10]])
    writer.upsert(first[10], np.full(5, -9.0), {"g": 8})  # deleted, then back

    q = rng.standard_normal(5)
    assert len(reader) == len(writer) == 70
    assert sorted(reader.ids()) == sorted(writer.ids())
    assert reader.search(q, 15) == writer.search(q, 15)
    assert reader.search(q, 15, where={"g": 1}) == writer.search(q, 15, where={"g": 1})
    assert reader.search(np.full(5, 9.0), 1)[0].metadata == {"g": 7}
    assert reader.search(np.full(5, -9.0), 1)[0].id == first[10]
    reader.close()
    writer.close()


def test_reader_in_another_process_sees_committed_writes(tmp_path):
    path = tmp_path / "p.db"
    writer = PatternStore(path, 3)
    writer.add(np.eye(3), [{"n": i} for i in range(3)])
    script = textwrap.dedent(f"""
        from midswarm.reasoning import PatternStore
        r = PatternStore({str(path)!r}, 3, readonly=True)
        print(len(r), [h.id for h in r.search([0, 0, 1], 3)])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split(maxsplit=1)
    assert out == ["3", "[2, 0, 1]\n"]
    writer.close()


def test_threads_share_a_store_safely(tmp_path):
    """Searches from many threads while another thread writes: no error, no torn state."""
    rng = np.random.default_rng(9)
    store = PatternStore(tmp_path / "p.db", 8)
    store.add(rng.standard_normal((200, 8)))
    errors: list[BaseException] = []
    done = threading.Event()

    def search_loop(seed: int) -> None:
        local = np.random.default_rng(seed)
        try:
            for _ in range(200):
                hits = store.search(local.standard_normal(8), 10)
                assert len(hits) == 10
                assert all(h.score >= hits[-1].score for h in hits)
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    def write_loop() -> None:
        try:
            for _ in range(40):
                ids = store.add(rng.standard_normal((5, 8)))
                store.delete(ids[:3])
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    threads = [threading.Thread(target=search_loop, args=(s,)) for s in range(3)]
    threads.append(threading.Thread(target=write_loop))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert done.is_set() and not errors
    assert len(store) == 200 + 40 * 2
    store.close()
