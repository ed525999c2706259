"""The remote client of ``benchmarks/swarm.py``: a separate process that submits
through :func:`midswarm.swarm.connect_coordinator`, as a trading program would.

Run by ``swarm.py`` only::

    python _swarm_client.py PORT CERTS CLIENT_ID PATTERNS LENGTH QUERIES

It rebuilds the benchmark's query windows from the same seed, connects, prints
``READY`` and then answers one line per command read from stdin:

``RUN START COUNT``
    submit queries ``START .. START+COUNT-1`` one after another; answers
    ``DONE {"elapsed": [...], "compute": [...]}`` (seconds: each call's
    end-to-end time, and the slowest shard's search time the result reports).
``MAP COUNT CONCURRENCY SECONDS``
    ``map`` the first COUNT queries with CONCURRENCY in flight, for at most
    SECONDS; answers ``DONE {"done": N, "elapsed": S}``.

End of input closes the connection and exits.
"""

from __future__ import annotations

import json
import os
import sys
import time

import trio

from midswarm.swarm import PatternMatchTask, connect_coordinator
from midswarm.transport import ClientTLS

K = 10
BAND = 8


async def main(port: int, certs: str, client_id: str, patterns: int, length: int,
               queries: int) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from swarm import workload  # the benchmark's own generator: the same windows

    _, _, qs = workload(patterns, length, queries)
    params = {"k": K, "window": BAND}
    tasks = [PatternMatchTask(window=q, params=params) for q in qs]
    tls = ClientTLS(os.path.join(certs, "ca.pem"), os.path.join(certs, f"{client_id}.pem"),
                    os.path.join(certs, f"{client_id}.key"))
    stdin = trio.wrap_file(sys.stdin)
    async with connect_coordinator(("127.0.0.1", port), client_id, tls=tls) as coord:
        print("READY", flush=True)
        while line := (await stdin.readline()).split():
            if line[0] == "RUN":
                start, count = int(line[1]), int(line[2])
                elapsed, compute = [], []
                for task in tasks[start:start + count]:
                    t = time.perf_counter()
                    result = await coord.submit(task)
                    elapsed.append(time.perf_counter() - t)
                    compute.append(result.compute_time_ms / 1e3)
                print("DONE", json.dumps({"elapsed": elapsed, "compute": compute}), flush=True)
            elif line[0] == "MAP":
                count, concurrency, limit = int(line[1]), int(line[2]), float(line[3])
                done = 0
                t = time.perf_counter()
                with trio.move_on_after(limit):
                    async for _ in coord.map(tasks[:count], concurrency=concurrency):
                        done += 1
                print("DONE", json.dumps({"done": done, "elapsed": time.perf_counter() - t}),
                      flush=True)
            else:
                raise SystemExit(f"unknown command {line!r}")


if __name__ == "__main__":
    a = sys.argv[1:]
    trio.run(main, int(a[0]), a[1], a[2], int(a[3]), int(a[4]), int(a[5]))
