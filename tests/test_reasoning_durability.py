"""kill -9 a writer at random points: every acknowledged write is there afterwards.

A child process writes in a loop and prints each write only after the call
returned.  The test kills it (SIGKILL) after a random number of
acknowledgements plus a random delay, reads whatever it had printed, reopens
the file, and checks every acknowledged write and SQLite's integrity check.
Five kills per store, seeded.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from midswarm.reasoning import PatternStore, ReasoningBank

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from midswarm.reasoning import Experience, PatternStore, ReasoningBank

    kind, path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(seed)
    if kind == "store":
        store = PatternStore(path, 16)
        while True:
            n = int(rng.integers(1, 200))
            vecs = rng.standard_normal((n, 16))
            ids = store.add(vecs, [{"seed": seed, "j": j} for j in range(n)])
            print("add", " ".join(map(str, ids)), flush=True)
            if rng.random() < 0.3:
                store.delete(ids[: n // 2])
                print("del", " ".join(map(str, ids[: n // 2])), flush=True)
            if rng.random() < 0.2:
                store.upsert(ids[-1], np.full(16, float(seed)), {"up": seed})
                print("up", ids[-1], flush=True)
    else:
        bank = ReasoningBank(path)
        count = 0
        while True:
            count += 1
            expected = seed * 100000 + count
            vector = rng.standard_normal(8)
            ident = bank.record(Experience("pm-%d" % (count % 3), "predict", float(expected),
                                           float(rng.choice([-1, 1])), 0.9, 0.8,
                                           {"symbol": "S%d" % (count % 4)}, vector))
            print("rec", ident, expected, flush=True)
            if count % 25 == 0:
                bank.distill()
                bank.retrieve(vector, k=2)
                print("distilled", flush=True)
            if count % 40 == 0:
                bank.consolidate()
                bank.suggest("pm-1")
""")


def run_and_kill(kind: str, path, seed: int, rng: random.Random) -> list[list[str]]:
    """Start a writer, kill -9 it at a random point, return its acknowledged lines."""
    errors = path.with_suffix(".stderr")
    with open(errors, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", WRITER, kind, str(path), str(seed)],
                                stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None
    lines: list[list[str]] = []
    wanted = rng.randint(5, 80)
    try:
        while len(lines) < wanted:
            line = proc.stdout.readline()
            if not line.endswith("\n"):
                raise AssertionError(f"writer exited early: {errors.read_text()}")
            lines.append(line.split())
        time.sleep(rng.uniform(0, 0.02))  # land the kill somewhere inside a write
        proc.send_signal(signal.SIGKILL)
        # Read the rest through the same buffered file: readline() may hold some already.
        rest = proc.stdout.read()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    # Only whole lines count: the kill can cut the last one short.
    return lines + [line.split() for line in rest.split("\n")[:-1]]


def test_patternstore_keeps_every_acknowledged_write_through_kill_9(tmp_path):
    rng = random.Random(1234)
    path = tmp_path / "store.db"
    present: set[int] = set()
    deleted: set[int] = set()
    upserted: dict[int, int] = {}
    for round_ in range(5):
        seed = 100 + round_
        lines = run_and_kill("store", path, seed, rng)
        for op, *args in lines:
            ids = [int(a) for a in args]
            if op == "add":
                present.update(ids)
            elif op == "del":
                present.difference_update(ids)
                deleted.update(ids)
            elif op == "up":
                upserted[ids[0]] = seed
        # If the last acknowledged write was an add, the kill may have landed in the
        # delete that follows it: that one may or may not have committed.
        op, *args = lines[-1]
        in_flight_delete = {int(a) for a in args[: len(args) // 2]} if op == "add" else set()
        with PatternStore(path, 16) as store:
            assert store.integrity_check() == ["ok"]
            live = set(store.ids())
            lost = present - in_flight_delete - live
            assert not lost, f"lost acknowledged ids {sorted(lost)[:10]}"
            assert not (deleted & live), "an acknowledged delete came back"
            for ident, seed_ in upserted.items():
                if ident in live:
                    got = store.get(ident)
                    assert got.metadata == {"up": seed_}
                    assert got.vector.tolist() == [float(seed_)] * 16
            # Anything unacknowledged is one whole batch that committed just before
            # the kill, never a fragment of one.
            extra = sorted(live - present)
            if extra:
                assert extra == list(range(extra[0], extra[0] + len(extra)))
                assert extra[0] == max(present | deleted) + 1
            assert len(store.search(np.ones(16), 10)) == 10
            deleted |= present - live
            present = live
    assert len(present) > 100


def test_reasoningbank_keeps_every_acknowledged_record_through_kill_9(tmp_path):
    rng = random.Random(4321)
    path = tmp_path / "bank.db"
    acknowledged: dict[int, float] = {}
    for round_ in range(5):
        for op, *args in run_and_kill("bank", path, 200 + round_, rng):
            if op == "rec":
                acknowledged[int(args[0])] = float(args[1])
        with ReasoningBank(path) as bank:
            assert bank.integrity_check() == ["ok"]
            for ident, expected in acknowledged.items():
                assert bank.get_experience(ident).expected == expected
            assert len(bank) >= len(acknowledged)
            bank.distill()  # the memory tables are consistent enough to keep working
            assert bank.retrieve(np.ones(8), k=1)
    assert len(acknowledged) > 25
