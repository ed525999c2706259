"""Helpers shared by the test modules: QUIC servers and clients on loopback with the
``certs`` fixture's development certificates, echo handlers, deterministic payloads;
a settable clock and raw edits of store files for the reasoning tests.

Import as ``from _helpers import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from midswarm.transport import (
    ClientTLS,
    QuicConfig,
    QuicConnection,
    QuicListener,
    QuicStream,
    ServerTLS,
    SessionTicketStore,
    connect_quic,
    serve_quic,
    serve_streams,
)

Handler = Callable[[QuicConnection], Awaitable[object]]


@asynccontextmanager
async def coordinator_process(certs: Path) -> AsyncIterator[tuple[trio.Process, int]]:
    """``midswarm coordinator`` in its own process on a free port (client
    certificates required): yields it and its port once it listens; killed
    afterwards if still running."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "midswarm", "coordinator", "--certs", str(certs), "--port", "0",
         "--status-interval", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = b""
        with trio.fail_after(60):
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(1)
                assert chunk, "the coordinator exited before printing its address"
                line += chunk
        assert b"listening on 127.0.0.1:" in line
        yield proc, int(line.split(b"127.0.0.1:")[1].split()[0])
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- TLS settings from the ``certs`` fixture ------------------------------------------


def server_tls(certs: Path, *, mutual: bool = False) -> ServerTLS:
    """The coordinator's certificate; with ``mutual``, clients must present a
    certificate from the same CA."""
    if mutual:
        return ServerTLS(certs / "coordinator.pem", certs / "coordinator.key",
                         ca=certs / "ca.pem", require_client_cert=True)
    return ServerTLS(certs / "coordinator.pem", certs / "coordinator.key")


def client_tls(certs: Path, agent: str | None = None) -> ClientTLS:
    """Trusts the dev CA; with ``agent``, presents that agent's certificate."""
    if agent is None:
        return ClientTLS(certs / "ca.pem")
    return ClientTLS(certs / "ca.pem", cert=certs / f"{agent}.pem", key=certs / f"{agent}.key")


# --- data ------------------------------------------------------------------------------


def payload(tag: str, size: int) -> bytes:
    """Deterministic bytes that differ for every tag (so misrouted data shows)."""
    seed = hashlib.sha256(tag.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


# --- streams and handlers --------------------------------------------------------------


async def read_to_eof(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything the peer sends until its FIN."""
    chunks = []
    while data := await stream.receive_some():
        chunks.append(data)
    return b"".join(chunks)


async def echo_stream(stream: QuicStream) -> None:
    """Echo bytes until the peer's FIN, then FIN back; a reset or close ends it quietly."""
    try:
        while data := await stream.receive_some():
            await stream.send_all(data)
        await stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def echo_handler(conn: QuicConnection) -> None:
    """A connection handler that echoes every stream the client opens."""
    await serve_streams(conn, echo_stream)


async def echo_roundtrip(conn: QuicConnection, data: bytes) -> bytes:
    """Send ``data`` and FIN on a new stream while reading the reply to its FIN
    (concurrently, so data larger than the flow-control windows cannot stall)."""
    stream = await conn.open_stream()
    async with trio.open_nursery() as nursery:
        async def send() -> None:
            await stream.send_all(data)
            await stream.send_eof()
        nursery.start_soon(send)
        return await read_to_eof(stream)


# --- servers and clients ---------------------------------------------------------------


@asynccontextmanager
async def quic_server(handler: Handler, certs: Path, config: QuicConfig | None = None, *,
                      host: str = "127.0.0.1", tls: ServerTLS | None = None
                      ) -> AsyncIterator[QuicListener]:
    """Serve ``handler`` on a free port of ``host`` (default TLS: :func:`server_tls`);
    leaving the block closes the listener and with it every connection."""
    tls = server_tls(certs) if tls is None else tls
    async with trio.open_nursery() as nursery:
        listener: QuicListener = await nursery.start(
            functools.partial(serve_quic, handler, 0, host, tls, config))
        try:
            yield listener
        finally:
            listener.close()


@asynccontextmanager
async def quic_pair(handler: Handler, certs: Path, config: QuicConfig | None = None, *,
                    host: str = "127.0.0.1", server: ServerTLS | None = None,
                    client: ClientTLS | None = None,
                    session_tickets: SessionTicketStore | None = None,
                    wait_connected: bool = True
                    ) -> AsyncIterator[tuple[QuicListener, QuicConnection]]:
    """:func:`quic_server` plus one client connected to it with the same ``config``
    (default client TLS: :func:`client_tls`); yields ``(listener, conn)``."""
    async with quic_server(handler, certs, config, host=host, tls=server) as listener:
        async with connect_quic(host, listener.port,
                                tls=client_tls(certs) if client is None else client,
                                config=config, session_tickets=session_tickets,
                                wait_connected=wait_connected) as conn:
            yield listener, conn


async def resume_with_early_data(port: int, certs: Path, store: SessionTicketStore,
                                 data: bytes = b"early bird") -> None:
    """A resumed connection's first request in 0-RTT, echoed back by the server
    (an echo handler); checks that it resumed and the server took the early data."""
    async with connect_quic("127.0.0.1", port, tls=client_tls(certs),
                            session_tickets=store, wait_connected=False) as conn:
        assert not conn.handshake_complete
        stream = await conn.open_stream()
        await stream.send_all(data)
        await stream.send_eof()
        assert await read_to_eof(stream) == data
        await conn.wait_handshake()
        assert conn.session_resumed
        assert conn.early_data_accepted


# --- reasoning stores ------------------------------------------------------------------

#: Where :class:`Clock` starts: a fixed "now" in seconds since the epoch.
T0 = 1_700_000_000.0


class Clock:
    """A clock for ``ReasoningBank(clock=...)`` that moves only when ``now`` is set."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def set_meta(path: str | os.PathLike[str], **values: object) -> None:
    """Overwrite entries of a store file's ``midswarm_meta`` table behind the store's
    back (a plain sqlite3 connection), as another program or version might."""
    conn = sqlite3.connect(path)
    conn.executemany("UPDATE midswarm_meta SET value = ? WHERE key = ?",
                     [(str(v), k) for k, v in values.items()])
    conn.commit()
    conn.close()
