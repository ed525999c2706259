"""Benchmark midswarm.reasoning: PatternStore search and inserts, ReasoningBank loops.

One run measures, side by side on this machine:

* exact top-10 cosine search over 100,000 x 64 (Gaussian vectors, and
  z-normalised windows of a random walk, the shape of real pattern vectors)
  and 1,000,000 x 64: PatternStore.search against plain numpy (normalised
  matrix, one BLAS matvec, then a full argsort or argpartition; and einsum +
  argpartition, which runs on one thread: on a busy machine a threaded BLAS
  call can wait milliseconds for its worker threads);
* filtered search at about 1 %, 10 % and 50 % selectivity against numpy with a
  boolean mask evaluated per query;
* batched inserts (durable: one committed transaction per batch) against bare
  sqlite3 executemany of the same blobs into a one-table database;
* judge + record per experience against one bare sqlite3 INSERT + COMMIT;
* retrieve (k=1 and k=5) over 10,000 memory items against a numpy ranking of
  the same relevance formula (no MMR, no usage update);
* with hnswlib installed: the approximate index's build time, query time and
  recall@10 over 100,000 x 64 against our exact search.

Every result is checked against its baseline's answer before it is timed.
Usage: python benchmarks/reasoning.py [--quick]  (--quick: small sizes, a smoke test)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from midswarm.reasoning import (  # noqa: E402
    Experience,
    PatternStore,
    ReasoningBank,
    RetrievalWeights,
)

DIM = 64
ROWS: list[tuple[str, str, str, str]] = []


def timed_over(fn: Callable[..., object], inputs: Sequence[Any] | np.ndarray, repeat: int,
               warmup: int = 5) -> list[float]:
    """Seconds per call of ``fn`` cycling through ``inputs``, after a warm-up."""
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    out = []
    for i in range(repeat):
        x = inputs[i % len(inputs)]
        t0 = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t0)
    return out


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:.3f} ms"


def row(what: str, ours: str, base: str, ratio: str) -> None:
    ROWS.append((what, ours, base, ratio))
    print(f"  {what}: midswarm {ours} | baseline {base} | {ratio}", flush=True)


def faster(ours: list[float], base: list[float]) -> str:
    ratio = statistics.median(base) / statistics.median(ours)
    return f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"


def numpy_fullsort(unit: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    scores = unit @ (q / np.linalg.norm(q))
    return np.argsort(-scores)[:k]


def numpy_argpartition(unit: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    scores = unit @ (q / np.linalg.norm(q))
    top = np.argpartition(scores, len(scores) - k)[len(scores) - k:]
    return top[np.argsort(-scores[top])]


def numpy_single_thread(unit: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    # einsum does not call BLAS, so no worker threads to wait for on a busy machine.
    scores = np.einsum("ij,j->i", unit, q / np.linalg.norm(q))
    top = np.argpartition(scores, len(scores) - k)[len(scores) - k:]
    return top[np.argsort(-scores[top])]


def walk_windows(n: int, rng: np.random.Generator) -> np.ndarray:
    """z-normalised sliding windows of one random walk: realistic pattern vectors."""
    walk = np.cumsum(rng.standard_normal(n + DIM))
    windows = np.lib.stride_tricks.sliding_window_view(walk, DIM)[:n]
    windows = (windows - windows.mean(axis=1, keepdims=True)) / windows.std(axis=1,
                                                                            keepdims=True)
    return windows.astype(np.float32)


def build_store(path: Path, vecs: np.ndarray,
                metadata: list[dict[str, Any]] | None) -> tuple[PatternStore, float, float]:
    store = PatternStore(path, DIM)
    t0 = time.perf_counter()
    for start in range(0, len(vecs), 50_000):
        store.add(vecs[start:start + 50_000],
                  None if metadata is None else metadata[start:start + 50_000])
    build = time.perf_counter() - t0
    store.close()
    t0 = time.perf_counter()
    store = PatternStore(path, DIM)
    return store, build, time.perf_counter() - t0


def bench_exact(store: PatternStore, vecs: np.ndarray, queries: np.ndarray, label: str,
                repeat: int) -> None:
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    for q in queries[:20]:  # the same answers, or the comparison means nothing
        assert [h.id for h in store.search(q, 10)] == numpy_fullsort(unit, q, 10).tolist()
    ours = timed_over(lambda q: store.search(q, 10), queries, repeat)
    full = timed_over(lambda q: numpy_fullsort(unit, q, 10), queries, repeat)
    part = timed_over(lambda q: numpy_argpartition(unit, q, 10), queries, repeat)
    single = timed_over(lambda q: numpy_single_thread(unit, q, 10), queries, repeat)
    p90 = float(np.percentile(ours, 90)) * 1e3
    row(f"exact top-10, {label}, p50 (ours p90 {p90:.3f} ms)", ms(ours),
        f"{ms(full)} numpy matvec + full sort; {ms(part)} numpy matvec + argpartition; "
        f"{ms(single)} numpy einsum + argpartition (no BLAS threads)",
        f"{faster(ours, full)}; {faster(ours, part)}; {faster(ours, single)}")


def bench_search(tmp: Path, n: int, repeat: int, rng: np.random.Generator,
                 with_filters: bool) -> None:
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    syms = np.array([f"S{i % 100}" for i in range(n)], dtype=object)
    metadata = [{"sym": s, "t": i} for i, s in enumerate(syms.tolist())]
    store, build, reopen = build_store(tmp / f"search{n}.db", vecs, metadata)
    print(f"{n:,} x {DIM}: built in {build:.1f} s ({n / build:,.0f} vectors/s with "
          f"metadata), reopened in {reopen:.2f} s", flush=True)
    row(f"reopen {n:,} x {DIM} with metadata (load into memory)", f"{reopen:.2f} s", "-", "-")
    queries = rng.standard_normal((200, DIM)).astype(np.float32)
    bench_exact(store, vecs, queries, f"{n:,} x {DIM} Gaussian", repeat)
    if not with_filters:
        store.close()
        return
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    ten = [f"S{i}" for i in range(10)]
    cases: list[tuple[str, dict[str, Any], Callable[[], np.ndarray]]] = [
        ("1 %", {"sym": "S7"}, lambda: syms == "S7"),
        ("10 %", {"sym": {"$in": ten}}, lambda: np.isin(syms, ten)),
        ("50 %", {"t": {"$lt": n // 2}}, lambda: np.arange(n) < n // 2),
    ]
    for label, where, make_mask in cases:
        def baseline(q: np.ndarray, make_mask: Callable[[], np.ndarray] = make_mask
                     ) -> np.ndarray:
            idx = np.flatnonzero(make_mask())  # a baseline evaluates its filter too
            return idx[numpy_fullsort(unit[idx], q, 10)]

        for q in queries[:5]:
            assert [h.id for h in store.search(q, 10, where=where)] == baseline(q).tolist()
        ours = timed_over(lambda q, w=where: store.search(q, 10, where=w), queries,
                          repeat // 2)
        base = timed_over(baseline, queries, repeat // 2)
        row(f"filtered top-10, {label} of {n:,}, p50", ms(ours),
            ms(base) + " numpy mask + full sort", faster(ours, base))
    store.close()

    walks = walk_windows(n, rng)
    store, _, _ = build_store(tmp / f"walk{n}.db", walks, None)
    walk_queries = walk_windows(4000, np.random.default_rng(7))[::20]
    bench_exact(store, walks, walk_queries, f"{n:,} x {DIM} random-walk windows", repeat)
    store.close()


def bench_insert(tmp: Path, n: int, batch: int, rng: np.random.Generator) -> None:
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    metadata = [{"sym": f"S{i % 100}", "t": i} for i in range(n)]
    texts = [f'{{"sym":"S{i % 100}","t":{i}}}' for i in range(n)]

    def fresh(name: str) -> Path:
        for p in tmp.glob(name + "*"):
            p.unlink()
        return tmp / name

    def ours(_: object) -> None:
        store = PatternStore(fresh(f"ins{batch}.db"), DIM)
        for start in range(0, n, batch):
            store.add(vecs[start:start + batch], metadata[start:start + batch])
        store.close()

    def bare(_: object) -> None:
        conn = sqlite3.connect(fresh(f"raw{batch}.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("CREATE TABLE v (id INTEGER PRIMARY KEY, vector BLOB, metadata TEXT)")
        for start in range(0, n, batch):
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO v VALUES (?, ?, ?)",
                             ((i, vecs[i].tobytes(), texts[i])
                              for i in range(start, min(start + batch, n))))
            conn.execute("COMMIT")
        conn.close()

    ours_t = timed_over(ours, [None], 3, warmup=1)
    bare_t = timed_over(bare, [None], 3, warmup=1)
    rate, bare_rate = n / statistics.median(ours_t), n / statistics.median(bare_t)
    row(f"batched insert with metadata, batches of {batch:,}, {n:,} x {DIM}",
        f"{rate:,.0f} vectors/s", f"{bare_rate:,.0f} vectors/s bare sqlite3 executemany",
        f"{rate / bare_rate:.2f}x of bare")


def bench_bank(tmp: Path, n_records: int, n_items: int, rng: np.random.Generator) -> None:
    bank = ReasoningBank(tmp / "bank.db")
    exps = [Experience(f"pm-{i % 4}", "predict", float(rng.normal(0, 0.01)),
                       float(rng.normal(0, 0.01)), float(rng.random()), float(rng.random()),
                       {"symbol": f"S{i % 10}", "window": 32, "k": 10},
                       rng.standard_normal(DIM).astype(np.float32), 1.7e9 + i)
               for i in range(n_records)]
    t0 = time.perf_counter()
    for e in exps:
        bank.judge(e)
        bank.record(e)
    ours = time.perf_counter() - t0
    bank.close()

    conn = sqlite3.connect(tmp / "rawbank.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE e (id INTEGER PRIMARY KEY, agent TEXT, expected REAL, "
                 "actual REAL, context TEXT, vector BLOB)")
    t0 = time.perf_counter()
    for e in exps:
        assert e.vector is not None
        conn.execute("BEGIN")
        conn.execute("INSERT INTO e (agent, expected, actual, context, vector) "
                     "VALUES (?, ?, ?, ?, ?)",
                     (e.agent_id, e.expected, e.actual, '{"symbol":"S0"}', e.vector.tobytes()))
        conn.execute("COMMIT")
    bare = time.perf_counter() - t0
    conn.close()
    row(f"judge + record, {n_records:,} experiences, one commit each",
        f"{n_records / ours:,.0f} /s", f"{n_records / bare:,.0f} /s bare INSERT + COMMIT",
        f"{bare / ours:.2f}x of bare")

    # Every random 64-d vector is its own pattern region, so n_items
    # experiences distill into n_items items.
    mem = ReasoningBank(tmp / "memory.db")
    for i in range(n_items):
        mem.record(Experience("pm", "predict", 0.01, 0.02 if i % 3 else -0.02, 0.9, 0.8,
                              {"symbol": f"S{i % 20}"},
                              rng.standard_normal(DIM).astype(np.float32), 1.7e9 + i))
    t0 = time.perf_counter()
    items = mem.distill()
    distill_s = time.perf_counter() - t0
    row(f"distill {n_items:,} experiences into {len(items):,} items", f"{distill_s:.2f} s",
        "-", "-")
    cache = mem._items_cache()  # the very arrays the baseline ranks
    w = RetrievalWeights()
    now = 1.7e9 + n_items
    queries = rng.standard_normal((200, DIM)).astype(np.float32)

    def numpy_rank(q: np.ndarray, k: int) -> np.ndarray:
        cos = cache.units @ (q / np.linalg.norm(q))
        ages = np.maximum(now - cache.updated, 0) / 86400
        rel = (w.similarity * np.maximum(cos, 0) + w.recency * np.exp(-ages / w.recency_days)
               + w.reliability * cache.confidence)
        return np.argsort(-rel)[:k]

    for q in queries[:5]:  # with k=1, MMR is plain relevance: the same item
        assert mem.retrieve(q, k=1, now=now)[0].id == cache.items[numpy_rank(q, 1)[0]].id
    for k in (1, 5):
        ours_t = timed_over(lambda q, k=k: mem.retrieve(q, k=k, now=now), queries, 300)
        base_t = timed_over(lambda q, k=k: numpy_rank(q, k), queries, 300)
        row(f"retrieve k={k} over {len(cache.items):,} items (MMR; usage committed), p50",
            ms(ours_t), ms(base_t) + " numpy relevance + sort (no MMR, no commit)",
            f"{statistics.median(ours_t) / statistics.median(base_t):.2f}x the baseline's time")
    mem.close()


def bench_hnsw(tmp: Path, n: int, rng: np.random.Generator) -> None:
    if importlib.util.find_spec("hnswlib") is None:
        row("approximate (hnswlib) index", "not measured: hnswlib is not installed", "-", "-")
        return
    for label, vecs, queries in (
            ("Gaussian", rng.standard_normal((n, DIM)).astype(np.float32),
             rng.standard_normal((200, DIM)).astype(np.float32)),
            ("random-walk windows", walk_windows(n, rng),
             walk_windows(4000, np.random.default_rng(9))[::20])):
        path = tmp / "ann.db"
        for p in tmp.glob("ann.db*"):
            p.unlink()
        store = PatternStore(path, DIM)
        store.add(vecs)
        store.close()
        t0 = time.perf_counter()
        store = PatternStore(path, DIM, approximate=True)
        build = time.perf_counter() - t0
        exact_t = timed_over(lambda q, s=store: s.search(q, 10, exact=True), queries, 400)
        for ef in (64, 512):
            store._ann._ef = ef  # type: ignore[union-attr]  # a benchmark may reach in
            recall = store.ann_recall(queries, 10)
            ann_t = timed_over(lambda q, s=store: s.search(q, 10), queries, 400)
            row(f"hnsw top-10, {n:,} x {DIM} {label}, M=16 ef={ef}: recall@10 {recall:.3f} "
                f"(open + build {build:.0f} s), p50", ms(ann_t),
                ms(exact_t) + " our exact search", faster(ann_t, exact_t))
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    args = parser.parse_args()
    rng = np.random.default_rng(2025)
    big, huge = (10_000, 50_000) if args.quick else (100_000, 1_000_000)
    print(f"midswarm.reasoning benchmark: numpy {np.__version__}, SQLite "
          f"{sqlite3.sqlite_version}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="midswarm-bench-") as d:
        tmp = Path(d)
        bench_search(tmp, big, 500, rng, with_filters=True)
        bench_search(tmp, huge, 200, rng, with_filters=False)
        for p in list(tmp.glob("search*")) + list(tmp.glob("walk*")):
            p.unlink()
        bench_insert(tmp, big, 1_000, rng)
        bench_insert(tmp, big, 10_000, rng)
        bench_bank(tmp, 2_000 if args.quick else 10_000, 1_000 if args.quick else 10_000, rng)
        bench_hnsw(tmp, big, rng)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs)")
    print("\n| measurement | midswarm | baseline | ratio |")
    print("|---|---|---|---|")
    for what, ours, base, ratio in ROWS:
        print(f"| {what} | {ours} | {base} | {ratio} |")


if __name__ == "__main__":
    main()
