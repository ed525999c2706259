"""Swarm benchmark: pattern-match tasks through the coordinator vs the kernel in-process.

Run from the repository root::

    python benchmarks/swarm.py             # about 30 s
    python benchmarks/swarm.py --quick     # smoke run, everything shrunk
    python benchmarks/swarm.py --block 1   # the ways take turns every query
    python benchmarks/swarm.py --matchers 1  # one matcher: no scatter, no merge

One library of random-walk patterns, one set of query windows, the same
search (banded DTW k-NN, z-normalised, k=10, band 8) three ways:

``kernel, in-process``
    :meth:`midswarm.kernels.PatternLibrary.knn` on the whole library, one
    query after another, in this process, with numba's default thread count
    (the reference) and with one thread.
``swarm, 2 agent processes (QUIC)``
    ``open_swarm({"pattern_matcher": 2}, spawn="process")``: a coordinator in
    this process, two ``midswarm agent`` processes on loopback QUIC with
    mutual TLS, the library sharded between them; each query is scattered to
    both and their top-k merged (``--matchers N`` shards it over N agents
    instead: with 1, each query is one round trip to one agent, which
    separates the cost of a QUIC hop from that of the scatter).
    ``--agent-cpus spread`` binds each agent process to its own core
    (``open_swarm(agent_cpus="spread")``); by default the kernel places them.
    Each matcher searches on one thread (its default ``threads``), in a
    worker thread of its agent; ``open_swarm``'s default ``agent_threads``
    caps each agent process at its share of the cores.
``swarm, 2 in-process agents (memory)``
    the same with ``spawn="task"``: agents as tasks of this process over the
    in-memory transport (no sockets), to separate coordination from QUIC.

The three take turns (interleaved, so load drifting on a shared machine hits
them alike), each running a block of ``--block N`` queries (default 20,
about 0.1 s) before the next takes over: each way is measured in its steady
state, as a swarm serving a stream of queries runs.  With ``--block 1`` each
way starts every query with caches filled by another way's search (the
in-process kernel streams the whole 20,000-pattern library through this
process, each agent its 10,000), which slows every row, the kernel's
included.
Per row: *sequential* end-to-end latency (one query at a time: p50, p99),
*coordination overhead* per task (end-to-end time minus the slowest shard's
own search time, ``PatternMatchResult.compute_time_ms``, which a matcher
takes around its worker-thread call: scatter, framing, QUIC, merge, all of
the coordinator's and agents' bookkeeping), and
*pipelined* throughput (``coord.map`` with 8 tasks in flight; the kernel's
is its sequential rate).  The two "no patterns" rows time the same queries
before the library is loaded: the matchers answer at once, so the whole
round trip is coordination (their tasks/s is sequential); for them the
script also prints the CPU time the coordinator and agents spent together
per task (Linux: every thread of this process and its child processes, from
``/proc/PID/task/*/schedstat``), which a busy host moves far less than
latency.  Ratios are against the in-process kernel.  Every loop is bounded
in count and time.
OpenMP workers are told to sleep when idle (``OMP_WAIT_POLICY=PASSIVE``, for
this process and the agents): spinning workers steal the cores the other
processes need.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from typing import Any, Literal

# Before numba loads: OpenMP workers that spin after each parallel region eat
# the cores of the other processes on these 2-core machines (this process's
# kernel runs and the agent processes alike).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402
import numpy as np  # noqa: E402
import trio  # noqa: E402
from _transport_common import cpu_seconds, positive_int  # noqa: E402

from midswarm.kernels import PatternLibrary  # noqa: E402
from midswarm.swarm import CoordinatorConfig, PatternMatchTask, open_swarm  # noqa: E402
from midswarm.transport import make_dev_certs  # noqa: E402

K = 10
BAND = 8
CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_swarm_client.py")


def workload(patterns: int, length: int, queries: int) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    rng = np.random.default_rng(42)
    lib = np.cumsum(rng.normal(size=(patterns, length)), axis=1)
    # The swarm's store keeps float32; give the kernel the same numbers.
    lib = lib.astype(np.float32).astype(np.float64)
    outcomes = rng.normal(size=patterns)
    qs = np.cumsum(rng.normal(size=(queries, length)), axis=1)
    return lib, outcomes, qs


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class ClientProcess:
    """``_swarm_client.py`` in its own process, driven one command line at a time."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._buf = b""

    async def line(self, timeout: float = 120.0) -> str:
        assert self.proc.stdout is not None
        with trio.fail_after(timeout):
            while b"\n" not in self._buf:
                data = await self.proc.stdout.receive_some()
                if not data:
                    raise RuntimeError("the client process exited")
                self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    async def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(command.encode() + b"\n")
        word, _, rest = (await self.line()).partition(" ")
        if word != "DONE":
            raise RuntimeError(f"the client process answered {word!r}")
        answer: dict[str, Any] = json.loads(rest)
        return answer


async def open_client(port: int, certs: str, sizes: tuple[int, int, int]) -> ClientProcess:
    """Start the remote client with a certificate of its own from the swarm's CA."""
    client_id = "bench-client"
    await trio.to_thread.run_sync(lambda: make_dev_certs(certs, agents=[client_id]))
    proc = await trio.lowlevel.open_process(
        [sys.executable, CLIENT, str(port), certs, client_id, *map(str, sizes)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    client = ClientProcess(proc)
    if await client.line() != "READY":
        raise RuntimeError("the client process did not connect")
    return client


async def measure(lib: np.ndarray, outcomes: np.ndarray, qs: np.ndarray, budget: float,
                  block: int, agent_cpus: Literal["any", "spread"] = "any", remote: bool = True,
                  matchers: int = 2) -> list[dict[str, Any]]:
    """Open both swarms (and the remote client), then time the ways query by
    query, interleaved (so load drifting on a shared machine hits them alike),
    then their pipelined throughput."""
    cfg = CoordinatorConfig(task_timeout=30.0, credit=4)
    params = {"k": K, "window": BAND}
    tasks = [PatternMatchTask(window=q, params=params) for q in qs]
    library = PatternLibrary(lib, BAND, True)
    async with open_swarm({"pattern_matcher": matchers}, spawn="process", config=cfg,
                          parameters={"pattern_matcher": params},
                          agent_cpus=agent_cpus) as quic, \
            open_swarm({"pattern_matcher": matchers}, spawn="task", config=cfg,
                       parameters={"pattern_matcher": params}) as memory:
        swarms = {"quic": quic, "memory": memory}
        ways: list[str] = list(swarms)
        client: ClientProcess | None = None
        if remote:
            assert quic.certs is not None and quic.coordinator.port is not None
            client = await open_client(quic.coordinator.port, quic.certs,
                                       (len(lib), lib.shape[1], len(qs)))
            ways.append("remote")

        async def run(key: str, start: int, count: int) -> tuple[list[float], list[float]]:
            """Queries ``start .. start+count-1`` one after another through
            ``key``: each one's end-to-end time and its slowest shard's search."""
            if key == "remote":
                assert client is not None
                answer = await client.ask(f"RUN {start} {count}")
                return answer["elapsed"], answer["compute"]
            elapsed, compute = [], []
            for task in tasks[start:start + count]:
                t = time.perf_counter()
                result = await swarms[key].submit(task)
                elapsed.append(time.perf_counter() - t)
                compute.append(result.compute_time_ms / 1e3)
            return elapsed, compute

        try:
            # Coordination alone: the matchers hold no patterns yet, so an answer
            # costs them nothing but the round trip.
            empty: dict[str, list[float]] = {key: [] for key in ways}
            empty_cpu = {key: 0.0 for key in ways}
            for key in ways:
                await run(key, 0, 5)
            first = min(len(tasks), 300)
            for start in range(0, first, block):
                for key in ways:
                    c = tree_cpu_seconds()
                    elapsed, _ = await run(key, start, min(block, first - start))
                    empty_cpu[key] += tree_cpu_seconds() - c
                    empty[key].extend(elapsed)
            for swarm in swarms.values():
                await swarm.add_patterns(lib, outcomes)
                for task in tasks[:5]:  # warm up: numba caches, library preparation
                    await swarm.submit(task)
            library.knn(qs[0], K)
            lat: dict[str, list[float]] = {key: [] for key in ["kernel", "kernel1", *ways]}
            threads = numba.get_num_threads()
            overhead: dict[str, list[float]] = {key: [] for key in ways}

            deadline = time.perf_counter() + budget
            for start in range(0, len(tasks), block):
                chunk = qs[start:start + block]
                for q in chunk:
                    t = time.perf_counter()
                    library.knn(q, K)
                    lat["kernel"].append(time.perf_counter() - t)
                numba.set_num_threads(1)  # this thread only
                for q in chunk:
                    t = time.perf_counter()
                    library.knn(q, K)
                    lat["kernel1"].append(time.perf_counter() - t)
                numba.set_num_threads(threads)
                for key in ways:
                    elapsed, compute = await run(key, start, len(chunk))
                    lat[key].extend(elapsed)
                    overhead[key].extend(e - c for e, c in zip(elapsed, compute, strict=True))
                if time.perf_counter() > deadline:
                    break
            tps = {key: len(lat[key]) / sum(lat[key]) for key in ("kernel", "kernel1")}
            for key in ways:
                if key == "remote":
                    assert client is not None
                    answer = await client.ask(f"MAP {len(tasks)} 8 {budget / 2}")
                    tps[key] = answer["done"] / answer["elapsed"]
                    continue
                t = time.perf_counter()
                done = 0
                with trio.move_on_after(budget / 2):
                    async for _ in swarms[key].map(tasks, concurrency=8):
                        done += 1
                tps[key] = done / (time.perf_counter() - t)
            for swarm in swarms.values():
                stats = swarm.stats
                assert stats.failed == 0 and stats.undeliverable == 0, stats
        finally:
            if client is not None:
                assert client.proc.stdin is not None
                await client.proc.stdin.aclose()
                with trio.move_on_after(10):
                    await client.proc.wait()
                client.proc.kill()
    names = {"kernel": f"kernel, in-process ({threads} threads)",
             "kernel1": "kernel, in-process (1 thread)",
             "quic": f"swarm, {matchers} agent process{'es' * (matchers > 1)} (QUIC)",
             "memory": f"swarm, {matchers} in-process agent{'s' * (matchers > 1)} (memory)",
             "remote": "  same via a client process (QUIC)"}
    labels = {"quic": "QUIC", "memory": "memory", "remote": "client process"}
    rows = [{"name": names[key], "n": len(lat[key]), "p50": pct(lat[key], 0.5),
             "p99": pct(lat[key], 0.99),
             "overhead50": pct(overhead[key], 0.5) if key in overhead else None,
             "overhead99": pct(overhead[key], 0.99) if key in overhead else None,
             "tps": tps[key]} for key in ["kernel", "kernel1", *ways]]
    for key in ways:
        rows.append({"name": f"  same, no patterns ({labels[key]})", "n": len(empty[key]),
                     "p50": pct(empty[key], 0.5), "p99": pct(empty[key], 0.99),
                     "overhead50": pct(empty[key], 0.5), "overhead99": pct(empty[key], 0.99),
                     "tps": len(empty[key]) / sum(empty[key]),
                     "cpu": empty_cpu[key] / len(empty[key]) if HAVE_SCHEDSTAT else None})
    return rows


HAVE_SCHEDSTAT = cpu_seconds(os.getpid()) is not None


def tree_cpu_seconds() -> float:
    """CPU time so far of this process and its children (the agent
    processes), all threads; 0 where Linux's schedstat cannot be read."""
    if not HAVE_SCHEDSTAT:
        return 0.0
    me = os.getpid()
    pids = [me]
    try:
        for thread in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{thread}/children") as f:
                pids.extend(int(pid) for pid in f.read().split())
    except OSError:
        pass
    return sum(cpu_seconds(pid) or 0.0 for pid in pids)


def table(rows: list[dict[str, Any]]) -> str:
    ref = rows[0]
    head = (f"{'':36} {'tasks':>6} {'p50 ms':>8} {'p99 ms':>8} {'overhead p50/p99 ms':>20} "
            f"{'tasks/s':>9} {'x kernel p50':>13} {'x kernel tasks/s':>17}")
    lines = [head, "-" * len(head)]
    for row in rows:
        over = ("-" if row["overhead50"] is None else
                f"{row['overhead50'] * 1e3:.3f} / {row['overhead99'] * 1e3:.3f}")
        lines.append(
            f"{row['name']:36} {row['n']:>6} {row['p50'] * 1e3:>8.3f} {row['p99'] * 1e3:>8.3f} "
            f"{over:>20} {row['tps']:>9.0f} {row['p50'] / ref['p50']:>12.2f}x "
            f"{row['tps'] / ref['tps']:>16.2f}x")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    lib, outcomes, qs = workload(args.patterns, args.length, args.queries)
    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} (start)")
    print(f"library: {args.patterns} patterns of length {args.length}; {args.queries} queries; "
          f"k={K}, band={BAND}; the ways take turns every {args.block} "
          f"quer{'y' if args.block == 1 else 'ies'}", flush=True)
    print(f"agent processes: {args.matchers} pattern matcher(s), agent_cpus={args.agent_cpus!r}",
          flush=True)
    rows = await measure(lib, outcomes, qs, args.budget, args.block, args.agent_cpus,
                         not args.no_client, args.matchers)
    print(table(rows))
    for row in rows:
        if row.get("cpu") is not None:
            print(f"{row['name'].strip()}: CPU per task, coordinator and agents together "
                  f"{row['cpu'] * 1e6:.0f} us")
    quic = rows[2]
    print(f"\ncoordination overhead per task over QUIC: p50 {quic['overhead50'] * 1e3:.3f} ms "
          f"(target <= 0.5 ms), p99 {quic['overhead99'] * 1e3:.3f} ms")
    print(f"load average {os.getloadavg()[0]:.2f} (end)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--patterns", type=int, default=20000)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds each timed loop may run at most")
    parser.add_argument("--block", type=int, default=20,
                        help="queries each way runs before the next way takes over (default 20)")
    parser.add_argument("--agent-cpus", choices=("any", "spread"), default="any",
                        help="let the kernel place the agent processes (default) or bind "
                             "each to its own core")
    parser.add_argument("--matchers", type=positive_int, default=2,
                        help="pattern matchers the library is sharded over, each its own "
                             "agent (default 2; 1: no scatter, every query goes to one agent)")
    parser.add_argument("--no-client", action="store_true",
                        help="leave out the remote client process (its rows)")
    ns = parser.parse_args()
    if ns.quick:
        ns.patterns, ns.queries, ns.budget = 2000, 60, 5.0
    logging.basicConfig(level=logging.WARNING)
    trio.run(main, ns)
