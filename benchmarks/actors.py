"""Actor runtime benchmark: midswarm.actors beside bare Trio and a raw QUIC stream.

Run from the repository root::

    python benchmarks/actors.py           # about half a minute
    python benchmarks/actors.py --quick   # smoke run, everything shrunk

Rows (medians over interleaved repetitions; these machines are shared and noisy,
so read the ratios):

``tell throughput``
    one producer tells N integers to an actor whose ``handle`` adds them up,
    beside a bare Trio memory channel of the same size whose consumer task
    awaits the *same* ``handle`` coroutine for each item.  Target >= 0.5x.
``ask round trip (local)``
    sequential asks to an echo actor, beside a bare request/reply pair of
    memory channels served by one task.
``ask round trip (in-process stream)``
    the same as the QUIC row, but both ends in this process on the in-memory
    transport (``memory_connection_pair``): what the stream binding itself
    costs, without the network stack and without a second process's noise.
``ask round trip (QUIC)``
    sequential asks to an echo actor in another process over one QUIC stream
    (``remote_ref`` -> ``serve_actor``), beside a raw echo of frames of the
    same size on another stream of the same kind.  Target p50 <= 300 us.
``restart latency``
    a crash by ``tell`` followed at once by an ``ask``: time until the reply
    from the restarted instance (no backoff), beside a plain ask.

The QUIC peer is this file run with ``--serve CERTDIR`` in a child process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from midswarm.actors import (
    Actor,
    ActorFailed,
    ActorRef,
    ActorRequest,
    Backoff,
    ChildSpec,
    open_supervisor,
    remote_ref,
    serve_actor,
)
from midswarm.transport import (
    ClientTLS,
    MessageStream,
    QuicConnection,
    ServerTLS,
    connect_quic,
    encode,
    make_dev_certs,
    memory_connection_pair,
    pack,
    serve_quic,
    serve_streams,
)

MAILBOX = 64


class Summer(Actor):
    """The work in the throughput row, for the actor and the bare channel alike."""

    def __init__(self, target: int, done: trio.Event) -> None:
        self.total = 0
        self.count = 0
        self.target = target
        self.done = done

    async def handle(self, msg: Any) -> Any:
        self.total += msg
        self.count += 1
        if self.count == self.target:
            self.done.set()
        return None


class Echo(Actor):
    async def handle(self, msg: Any) -> Any:
        if msg == "crash":
            raise RuntimeError("crash requested")
        return msg


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s)) - 1))]


# ------------------------------------------------------------------ local rows

async def bare_throughput(n: int) -> float:
    done = trio.Event()
    worker = Summer(n, done)
    send, recv = trio.open_memory_channel[int](MAILBOX)

    async def consumer() -> None:
        async for x in recv:
            await worker.handle(x)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.sleep(0)
        t0 = time.perf_counter()
        for i in range(n):
            await send.send(i)
        await done.wait()
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return n / elapsed


async def actor_throughput(n: int) -> float:
    done = trio.Event()
    async with open_supervisor() as sup:
        ref = await sup.start_child(ChildSpec(lambda: Summer(n, done), name="summer",
                                              mailbox_size=MAILBOX))
        t0 = time.perf_counter()
        for i in range(n):
            await ref.tell(i)
        await done.wait()
        elapsed = time.perf_counter() - t0
    return n / elapsed


async def bare_ask_rtts(n: int) -> list[float]:
    req_send, req_recv = trio.open_memory_channel[Any](MAILBOX)
    rep_send, rep_recv = trio.open_memory_channel[Any](MAILBOX)
    echo = Echo()

    async def server() -> None:
        async for x in req_recv:
            await rep_send.send(await echo.handle(x))

    samples = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        for i in range(n):
            t0 = time.perf_counter()
            await req_send.send(i)
            await rep_recv.receive()
            samples.append(time.perf_counter() - t0)
        nursery.cancel_scope.cancel()
    return samples


async def actor_ask_rtts(n: int) -> list[float]:
    samples = []
    async with open_supervisor() as sup:
        ref = await sup.start_child(ChildSpec(Echo, name="echo", mailbox_size=MAILBOX))
        for i in range(n):
            t0 = time.perf_counter()
            await ref.ask(i)
            samples.append(time.perf_counter() - t0)
    return samples


async def restart_latencies(n: int) -> list[float]:
    samples = []
    async with open_supervisor(max_restarts=n + 1, within=1e9,
                               backoff=Backoff(initial=0)) as sup:
        ref = await sup.start_child(ChildSpec(Echo, name="echo"))
        for i in range(n):
            t0 = time.perf_counter()
            await ref.tell("crash")
            await ref.ask(i)
            samples.append(time.perf_counter() - t0)
        assert sup.children()[0].restarts == n
    return samples


async def alternate_asks_and_echoes(ref: ActorRef, echo: MessageStream, msg: Any,
                                    frame: bytes, n: int, reps: int
                                    ) -> tuple[list[float], list[float]]:
    """After a warm-up (congestion window, caches), time asks to ``ref`` and raw
    echoes of ``frame`` (as long as an ask request) in alternating blocks of 50,
    so both see the same shared, noisy machine."""
    actor_samples: list[float] = []
    echo_samples: list[float] = []
    for _ in range(200):
        await ref.ask(msg)
        await echo.send_message(frame)
        await echo.receive_message()
    block = 50
    for _ in range(reps * max(1, n // block)):
        for _ in range(block):
            t0 = time.perf_counter()
            await echo.send_message(frame)
            await echo.receive_message()
            echo_samples.append(time.perf_counter() - t0)
        for _ in range(block):
            t0 = time.perf_counter()
            await ref.ask(msg)
            actor_samples.append(time.perf_counter() - t0)
    return actor_samples, echo_samples


async def memory_rtts(n: int, reps: int) -> tuple[list[float], list[float]]:
    """The QUIC row's workload with both ends here, over in-memory streams."""
    msg = {"query": "w" * 32, "k": 5, "window": list(range(8))}
    frame = encode(ActorRequest(1, "ask", "data", pack(msg)))
    client_conn, server_conn = memory_connection_pair()
    async with open_supervisor() as sup, trio.open_nursery() as nursery:
        ref = await sup.start_child(ChildSpec(Echo, name="echo", mailbox_size=MAILBOX))

        async def echo_one(stream: MessageStream) -> None:
            async for f in stream:
                await stream.send_message(f)

        actor_client = MessageStream(await client_conn.open_stream())
        nursery.start_soon(serve_actor, ref, MessageStream(await server_conn.accept_stream()))
        echo = MessageStream(await client_conn.open_stream())
        nursery.start_soon(echo_one, MessageStream(await server_conn.accept_stream()))
        async with remote_ref(actor_client, name="echo") as remote:
            actor_samples, echo_samples = await alternate_asks_and_echoes(
                remote, echo, msg, frame, n, reps)
        nursery.cancel_scope.cancel()
    return actor_samples, echo_samples


# ------------------------------------------------------------------ QUIC rows

async def serve_process(certs: Path) -> None:
    """Child process: an echo actor on one port, a raw frame echo on another."""
    async with open_supervisor() as sup:
        ref = await sup.start_child(ChildSpec(Echo, name="echo", mailbox_size=MAILBOX))

        async def serve_one(stream: MessageStream) -> None:
            try:
                await serve_actor(ref, stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async def echo_one(stream: MessageStream) -> None:
            try:
                async for frame in stream:
                    await stream.send_message(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        def handler_for(fn: Any) -> Any:
            async def serve_one_stream(stream: Any) -> None:
                await fn(MessageStream(stream))

            async def handler(conn: QuicConnection) -> None:
                await serve_streams(conn, serve_one_stream)
            return handler

        tls = ServerTLS(certs / "coordinator.pem", certs / "coordinator.key")
        async with trio.open_nursery() as nursery:
            actor_l = await nursery.start(serve_quic, handler_for(serve_one), 0, "127.0.0.1",
                                          tls)
            echo_l = await nursery.start(serve_quic, handler_for(echo_one), 0, "127.0.0.1", tls)
            print(f"PORTS {actor_l.port} {echo_l.port}", flush=True)


async def quic_rtts(certs: Path, actor_port: int, echo_port: int, n: int, reps: int
                    ) -> tuple[list[float], list[float], int]:
    tls = ClientTLS(certs / "ca.pem")
    msg = {"query": "w" * 32, "k": 5, "window": list(range(8))}
    async with connect_quic("127.0.0.1", actor_port, tls=tls) as aconn, \
            connect_quic("127.0.0.1", echo_port, tls=tls) as econn:
        async with remote_ref(MessageStream(await aconn.open_stream()), name="echo") as ref:
            echo = MessageStream(await econn.open_stream())
            # Frames on the raw echo are exactly as long as our ask requests.
            frame = encode(ActorRequest(1, "ask", "data", pack(msg)))
            actor_samples, echo_samples = await alternate_asks_and_echoes(
                ref, echo, msg, frame, n, reps)
            await echo.aclose()
    return actor_samples, echo_samples, len(frame)


async def crash_check(certs: Path, actor_port: int) -> str:
    """One crash over QUIC, to show the boxed error works in this setting too."""
    async with connect_quic("127.0.0.1", actor_port, tls=ClientTLS(certs / "ca.pem")) as c:
        async with remote_ref(MessageStream(await c.open_stream()), name="echo") as ref:
            try:
                await ref.ask("crash")
            except ActorFailed as exc:
                return f"{exc.exc_type}: {exc.message}"
    return "no failure?"


# ------------------------------------------------------------------ driver

def run_local(args: argparse.Namespace) -> dict[str, Any]:
    bare_tp, actor_tp = [], []
    for _ in range(args.reps):
        bare_tp.append(trio.run(bare_throughput, args.tells))
        actor_tp.append(trio.run(actor_throughput, args.tells))
    bare_rtt: list[float] = []
    actor_rtt: list[float] = []
    for _ in range(args.reps):
        bare_rtt += trio.run(bare_ask_rtts, args.asks)
        actor_rtt += trio.run(actor_ask_rtts, args.asks)
    restart = trio.run(restart_latencies, args.restarts)
    mem_actor, mem_echo = trio.run(memory_rtts, args.quic_asks, args.reps)
    return {"bare_tp": statistics.median(bare_tp), "actor_tp": statistics.median(actor_tp),
            "bare_rtt": bare_rtt, "actor_rtt": actor_rtt, "restart": restart,
            "mem_actor": mem_actor, "mem_echo": mem_echo}


def run_quic(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(make_dev_certs(tmp, agents=[]))
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve",
                                 str(certs)], stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            if not line.startswith("PORTS "):
                raise RuntimeError(f"serving process said {line!r}")
            actor_port, echo_port = map(int, line.split()[1:])
            actor, echo, size = trio.run(quic_rtts, certs, actor_port, echo_port,
                                         args.quic_asks, args.reps)
            crash = trio.run(crash_check, certs, actor_port)
        finally:
            proc.terminate()
            proc.wait(10)
    return {"actor": actor, "echo": echo, "size": size, "crash": crash}


def us(x: float) -> str:
    return f"{x * 1e6:,.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="shrink every workload")
    p.add_argument("--serve", metavar="CERTDIR", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        trio.run(serve_process, Path(args.serve))
        return
    scale = 10 if args.quick else 1
    args.reps = 3 if args.quick else 5
    args.tells = 200_000 // scale
    args.asks = 20_000 // scale
    args.restarts = 5_000 // scale
    args.quic_asks = 2_000 // scale

    print(f"midswarm actor benchmark  python {sys.version.split()[0]}  trio {trio.__version__}"
          f"  cpus {os.cpu_count()}  load average {os.getloadavg()[0]:.2f} (start)")
    local = run_local(args)
    quic = run_quic(args)

    tp_ratio = local["actor_tp"] / local["bare_tp"]
    a50, b50 = pct(local["actor_rtt"], 50), pct(local["bare_rtt"], 50)
    m50, me50 = pct(local["mem_actor"], 50), pct(local["mem_echo"], 50)
    q50, e50 = pct(quic["actor"], 50), pct(quic["echo"], 50)
    r50 = pct(local["restart"], 50)
    rows = [
        ("tell throughput, local (msg/s)", f"{local['actor_tp']:,.0f}",
         f"{local['bare_tp']:,.0f} (memory channel)", f"{tp_ratio:.2f}x of bare",
         ">= 0.5x", "met" if tp_ratio >= 0.5 else "MISSED"),
        ("ask round trip, local p50 / p99 (us)",
         f"{us(a50)} / {us(pct(local['actor_rtt'], 99))}",
         f"{us(b50)} / {us(pct(local['bare_rtt'], 99))} (channel pair)",
         f"{a50 / b50:.2f}x the time", "-", ""),
        (f"ask round trip, in-process stream p50 / p99 (us, {quic['size']} B request)",
         f"{us(m50)} / {us(pct(local['mem_actor'], 99))}",
         f"{us(me50)} / {us(pct(local['mem_echo'], 99))} (raw stream echo)",
         f"+{us(m50 - me50)} us", "-", ""),
        (f"ask round trip, QUIC other process p50 / p99 (us, {quic['size']} B request)",
         f"{us(q50)} / {us(pct(quic['actor'], 99))}",
         f"{us(e50)} / {us(pct(quic['echo'], 99))} (raw stream echo)",
         f"{q50 / e50:.2f}x the time, +{us(q50 - e50)} us", "p50 <= 300 us",
         "met" if q50 <= 300e-6 else "MISSED"),
        ("restart latency, crash -> next reply p50 / p99 (us)",
         f"{us(r50)} / {us(pct(local['restart'], 99))}",
         f"{us(a50)} (plain local ask p50)", f"+{us(r50 - a50)} us for the restart", "-", ""),
    ]
    header = ("measurement", "midswarm.actors", "reference", "ratio", "target", "")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r: tuple[str, ...]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    print(f"samples: {args.tells} tells x {args.reps}; {args.asks} local asks x {args.reps}; "
          f"{args.quic_asks} stream asks x {args.reps} (in-process and QUIC, each beside as many "
          f"raw echoes, in alternating blocks of 50); {args.restarts} restarts")
    print(f"a crash over QUIC came back as: {quic['crash']}")
    print(f"load average {os.getloadavg()[0]:.2f} (end)")


if __name__ == "__main__":
    main()
