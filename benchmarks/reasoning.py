"""Benchmark midswarm.reasoning: PatternStore search and inserts, ReasoningBank loops.

One run measures, side by side on this machine:

* exact top-10 cosine search over 100,000 x 64 and 1,000,000 x 64 vectors:
  PatternStore.search against a plain numpy baseline (normalised matrix,
  one matvec, full argsort);
* filtered search at about 1 %, 10 % and 50 % selectivity against numpy with a
  boolean mask over a metadata array;
* batched inserts (durable, one transaction per batch) against bare sqlite3
  executemany of the same blobs into a one-table database;
* judge + record per experience against one bare sqlite3 INSERT + COMMIT;
* retrieve (k=1 and k=5) over 10,000 memory items against a numpy ranking of
  the same relevance formula (no MMR, no usage update);
* with hnswlib installed: the approximate index's build time, query time and
  recall@10 over 100,000 x 64.

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
from collections.abc import Callable
from pathlib import Path

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


def timed(fn: Callable[[], object], repeat: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:.3f} ms"


def row(what: str, ours: str, base: str, ratio: str) -> None:
    ROWS.append((what, ours, base, ratio))
    print(f"  {what}: midswarm {ours} | baseline {base} | {ratio}", flush=True)


def speedup(ours: list[float], base: list[float]) -> str:
    return f"{statistics.median(base) / statistics.median(ours):.1f}x faster"


def numpy_topk_fullsort(unit_matrix: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    qn = q / np.linalg.norm(q)
    scores = unit_matrix @ qn
    return np.argsort(-scores)[:k]


def bench_search(tmp: Path, n: int, queries: int, rng: np.random.Generator,
                 with_filters: bool) -> None:
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    syms = np.array([f"S{i % 100}" for i in range(n)], dtype=object)
    metadata = [{"sym": s, "t": i} for i, s in enumerate(syms.tolist())]
    path = tmp / f"search{n}.db"
    store = PatternStore(path, DIM)
    t0 = time.perf_counter()
    for start in range(0, n, 50_000):
        store.add(vecs[start:start + 50_000], metadata[start:start + 50_000])
    build = time.perf_counter() - t0
    store.close()
    t0 = time.perf_counter()
    store = PatternStore(path, DIM)
    reopen = time.perf_counter() - t0
    print(f"{n:,} x {DIM}: built in {build:.1f} s ({n / build:,.0f} vectors/s incl. "
          f"metadata), reopened in {reopen:.2f} s", flush=True)
    row(f"reopen {n:,} x {DIM} (load into memory)", f"{reopen:.2f} s", "-", "-")

    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    qs = rng.standard_normal((queries, DIM)).astype(np.float32)
    for q in qs[:20]:  # the same answers, or the comparison means nothing
        ours = [h.id for h in store.search(q, 10)]
        assert ours == numpy_topk_fullsort(unit, q, 10).tolist(), "result mismatch"
    it = iter(range(10**9))
    ours_t = timed(lambda: store.search(qs[next(it) % queries], 10), queries)
    it = iter(range(10**9))
    base_t = timed(lambda: numpy_topk_fullsort(unit, qs[next(it) % queries], 10), queries)
    p90 = float(np.percentile(ours_t, 90)) * 1e3
    row(f"exact top-10, {n:,} x {DIM}, p50 (p90 {p90:.3f} ms)", ms(ours_t),
        ms(base_t) + " (numpy full sort)", speedup(ours_t, base_t))

    if with_filters:
        cases = [
            ("1 %", {"sym": "S7"}, syms == "S7"),
            ("10 %", {"sym": {"$in": [f"S{i}" for i in range(10)]}},
             np.isin(syms, [f"S{i}" for i in range(10)])),
            ("50 %", {"t": {"$lt": n // 2}}, np.arange(n) < n // 2),
        ]
        for label, where, mask in cases:
            for q in qs[:5]:
                ours_ids = [h.id for h in store.search(q, 10, where=where)]
                idx = np.flatnonzero(mask)
                base_ids = idx[numpy_topk_fullsort(unit[idx], q, 10)].tolist()
                assert ours_ids == base_ids, "filtered result mismatch"

            def base_filtered(q: np.ndarray, where_mask: np.ndarray = mask,
                              key: str = label) -> np.ndarray:
                idx = np.flatnonzero(where_mask)
                return idx[numpy_topk_fullsort(unit[idx], q, 10)]

            def base_filtered_fresh(q: np.ndarray, where: dict = where) -> np.ndarray:
                # The baseline also has to evaluate the filter per query.
                if "sym" in where and isinstance(where["sym"], str):
                    m = syms == where["sym"]
                elif "sym" in where:
                    m = np.isin(syms, where["sym"]["$in"])
                else:
                    m = np.arange(n) < where["t"]["$lt"]
                return base_filtered(q, m)

            it = iter(range(10**9))
            ours_t = timed(lambda w=where: store.search(qs[next(it) % queries], 10, where=w),
                           queries // 2)
            it = iter(range(10**9))
            base_t = timed(lambda: base_filtered_fresh(qs[next(it) % queries]), queries // 2)
            row(f"filtered top-10, {label} of {n:,}, p50", ms(ours_t),
                ms(base_t) + " (numpy mask + full sort)", speedup(ours_t, base_t))
    store.close()


def bench_insert(tmp: Path, n: int, batch: int, rng: np.random.Generator) -> None:
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    metadata = [{"sym": f"S{i % 100}", "t": i} for i in range(n)]

    def ours() -> None:
        path = tmp / f"ins{batch}.db"
        for p in tmp.glob(f"ins{batch}.db*"):
            p.unlink()
        store = PatternStore(path, DIM)
        for start in range(0, n, batch):
            store.add(vecs[start:start + batch], metadata[start:start + batch])
        store.close()

    def baseline() -> None:
        path = tmp / f"raw{batch}.db"
        for p in tmp.glob(f"raw{batch}.db*"):
            p.unlink()
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("CREATE TABLE v (id INTEGER PRIMARY KEY, vector BLOB, metadata TEXT)")
        for start in range(0, n, batch):
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO v VALUES (?, ?, ?)",
                             ((start + i, vecs[start + i].tobytes(), '{"sym":"S0","t":0}')
                              for i in range(min(batch, n - start))))
            conn.execute("COMMIT")
        conn.close()

    ours_t = timed(ours, 3, warmup=1)
    base_t = timed(baseline, 3, warmup=1)
    rate = n / statistics.median(ours_t)
    base_rate = n / statistics.median(base_t)
    row(f"batched insert, batches of {batch:,}, {n:,} x {DIM}", f"{rate:,.0f} vectors/s",
        f"{base_rate:,.0f} vectors/s (bare sqlite3 executemany)",
        f"{rate / base_rate:.2f}x of bare")


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

    conn = sqlite3.connect(tmp / "rawbank.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE e (id INTEGER PRIMARY KEY, agent TEXT, expected REAL, "
                 "actual REAL, context TEXT, vector BLOB)")
    t0 = time.perf_counter()
    for e in exps:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO e (agent, expected, actual, context, vector) "
                     "VALUES (?, ?, ?, ?, ?)",
                     (e.agent_id, e.expected, e.actual, '{"symbol":"S0"}',
                      e.vector.tobytes()))  # type: ignore[union-attr]
        conn.execute("COMMIT")
    base = time.perf_counter() - t0
    conn.close()
    row(f"judge + record, {n_records:,} experiences (one commit each)",
        f"{n_records / ours:,.0f} /s", f"{n_records / base:,.0f} /s (bare INSERT + COMMIT)",
        f"{base / ours:.2f}x of bare")
    bank.close()

    # Memory: every random 64-d vector is its own pattern region, so n_items
    # experiences distill into n_items items.
    mem = ReasoningBank(tmp / "memory.db")
    for i in range(n_items):
        mem.record(Experience("pm", "predict", 0.01, 0.02 if i % 3 else -0.02, 0.9, 0.8,
                              {"symbol": f"S{i % 20}"},
                              rng.standard_normal(DIM).astype(np.float32), 1.7e9 + i))
    t0 = time.perf_counter()
    items = mem.distill()
    distill_s = time.perf_counter() - t0
    row(f"distill {n_items:,} experiences -> {len(items):,} items", f"{distill_s:.2f} s", "-",
        "-")
    cache = mem._items_cache()  # the same arrays the baseline ranks
    w = RetrievalWeights()
    now = 1.7e9 + n_items
    qs = rng.standard_normal((200, DIM)).astype(np.float32)

    def numpy_rank(q: np.ndarray, k: int) -> np.ndarray:
        cos = cache.units @ (q / np.linalg.norm(q))
        rel = (w.similarity * np.maximum(cos, 0)
               + w.recency * np.exp(-np.maximum(now - cache.updated, 0) / 86400 / w.recency_days)
               + w.reliability * cache.confidence)
        return np.argsort(-rel)[:k]

    for k in (1, 5):
        it = iter(range(10**9))
        ours_t = timed(lambda k=k: mem.retrieve(qs[next(it) % 200], k=k, now=now), 300)
        it = iter(range(10**9))
        base_t = timed(lambda k=k: numpy_rank(qs[next(it) % 200], k), 300)
        row(f"retrieve k={k} over {len(cache.items):,} items (MMR, usage committed), p50",
            ms(ours_t), ms(base_t) + " (numpy relevance + sort, no MMR/commit)",
            f"{statistics.median(ours_t) / statistics.median(base_t):.1f}x the baseline's time")
    mem.close()


def bench_hnsw(tmp: Path, n: int, rng: np.random.Generator) -> None:
    if importlib.util.find_spec("hnswlib") is None:
        row("approximate (hnswlib) index", "not measured: hnswlib not installed", "-", "-")
        return
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    path = tmp / "ann.db"
    store = PatternStore(path, DIM)
    store.add(vecs)
    store.close()
    t0 = time.perf_counter()
    store = PatternStore(path, DIM, approximate=True)
    build = time.perf_counter() - t0
    qs = rng.standard_normal((200, DIM)).astype(np.float32)
    recall = store.ann_recall(qs, 10)
    it = iter(range(10**9))
    ann_t = timed(lambda: store.search(qs[next(it) % 200], 10), 400)
    it = iter(range(10**9))
    exact_t = timed(lambda: store.search(qs[next(it) % 200], 10, exact=True), 400)
    row(f"hnsw top-10, {n:,} x {DIM} (M=16, ef=64), p50; recall@10 {recall:.3f}; "
        f"open+build {build:.1f} s", ms(ann_t), ms(exact_t) + " (our exact search)",
        speedup(ann_t, exact_t))
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    args = parser.parse_args()
    rng = np.random.default_rng(2025)
    big, huge = (10_000, 50_000) if args.quick else (100_000, 1_000_000)
    print(f"midswarm.reasoning benchmark: numpy {np.__version__}, SQLite "
          f"{sqlite3.sqlite_version}, {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="midswarm-bench-") as d:
        tmp = Path(d)
        bench_search(tmp, big, 500, rng, with_filters=True)
        bench_search(tmp, huge, 200, rng, with_filters=False)
        for p in tmp.glob("search*"):
            p.unlink()
        bench_insert(tmp, big, 1_000, rng)
        bench_insert(tmp, big, 10_000, rng)
        bench_bank(tmp, 2_000 if args.quick else 10_000, 1_000 if args.quick else 10_000, rng)
        bench_hnsw(tmp, big, rng)
    print()
    print("| measurement | midswarm | baseline | ratio |")
    print("|---|---|---|---|")
    for what, ours, base, ratio in ROWS:
        print(f"| {what} | {ours} | {base} | {ratio} |")


if __name__ == "__main__":
    main()
