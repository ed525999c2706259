"""``midswarm certs`` and ``midswarm echo``: the transport's commands."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import trio

from ..cli import command
from ._connect import connect_quic, serve_quic
from ._framing import MessageStream
from ._quic import QuicConnection
from ._serve import serve_streams
from ._stream import QuicStream
from ._tls import ClientTLS, ServerTLS, make_dev_certs


def _certs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="where to write the PEM files (created if missing)")
    p.add_argument("--agents", default="",
                   help="comma-separated ids of agents and clients, e.g. a1,a2,trader1")
    p.add_argument("--host", action="append", default=None,
                   help="extra DNS name or IP for the coordinator certificate (repeatable)")


@command("certs", "Write a development CA, a coordinator certificate and agent certificates.",
         _certs_args)
def certs(args: argparse.Namespace) -> int:
    agents = [a.strip() for a in args.agents.split(",") if a.strip()]
    names, ips = ["localhost"], ["127.0.0.1", "::1"]
    for h in args.host or []:
        (ips if h.replace(".", "").isdigit() or ":" in h else names).append(h)
    out = make_dev_certs(args.directory, agents, tuple(names), tuple(ips))
    print(f"wrote ca.pem, coordinator.pem{''.join(f', {a}.pem' for a in agents)} to {out}")
    return 0


async def _echo_stream(stream: QuicStream) -> None:
    ms = MessageStream(stream)
    try:
        async for msg in ms:
            await ms.send_message(msg)
    except trio.BrokenResourceError:
        pass  # the client went away without closing the stream
    await stream.aclose()


async def _echo_handler(conn: QuicConnection) -> None:
    await serve_streams(conn, _echo_stream)


async def _serve(certdir: str, port: int) -> None:
    tls = ServerTLS(os.path.join(certdir, "coordinator.pem"),
                    os.path.join(certdir, "coordinator.key"))
    async with trio.open_nursery() as nursery:
        listener = await nursery.start(serve_quic, _echo_handler, port, "127.0.0.1", tls)
        print(listener.port, flush=True)


async def _client(certdir: str, port: int, count: int, size: int) -> None:
    tls = ClientTLS(os.path.join(certdir, "ca.pem"))
    t0 = time.perf_counter()
    async with connect_quic("127.0.0.1", port, tls=tls) as conn:
        handshake = time.perf_counter() - t0
        ms = MessageStream(await conn.open_stream())
        payload = os.urandom(size)
        rtts = []
        for _ in range(count):
            t = time.perf_counter()
            await ms.send_message(payload)
            if await ms.receive_message() != payload:
                raise RuntimeError("echo mismatch")
            rtts.append(time.perf_counter() - t)
    rtts.sort()
    print(f"connected to echo server in {handshake * 1e3:.1f} ms "
          f"(server identity {conn.peer_identity!r})")
    p50, p99 = rtts[len(rtts) // 2], rtts[int(len(rtts) * 0.99)]
    print(f"{count} round trips of {size} bytes over QUIC between two processes: "
          f"p50 {p50 * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us")


def _echo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, default=2000, help="round trips (default 2000)")
    p.add_argument("--size", type=int, default=400, help="message size in bytes (default 400)")
    p.add_argument("--serve", metavar="CERTDIR", help=argparse.SUPPRESS)


@command("echo", "QUIC echo between two processes on loopback (a transport smoke test).",
         _echo_args)
def echo(args: argparse.Namespace) -> int:
    if args.serve:
        trio.run(_serve, args.serve, 0)
        return 0
    with tempfile.TemporaryDirectory() as certdir:
        make_dev_certs(certdir)
        server = subprocess.Popen([sys.executable, "-m", "midswarm", "echo", "--serve", certdir],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            trio.run(_client, certdir, port, args.count, args.size)
        finally:
            server.terminate()
            server.wait(10)
    return 0
