"""Interop with aioquic's own asyncio client and server, run inside the Trio test
through trio-asyncio."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio_asyncio
from _helpers import client_tls, echo_handler, echo_roundtrip, payload, quic_server, server_tls
from aioquic.asyncio import connect as aio_connect
from aioquic.asyncio import serve as aio_serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.tls import SessionTicket

from midswarm.transport import (
    QuicConfig,
    QuicConnection,
    QuicListener,
    ServerTLS,
    SessionTicketStore,
    connect_quic,
)

ALPN = QuicConfig().alpn


# --- our side -------------------------------------------------------------------------


class EchoServer:
    """Our server: echoes every stream; records what each connection negotiated."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def handle(self, conn: QuicConnection) -> None:
        self.seen.append({"identity": conn.peer_identity, "alpn": conn.alpn_protocol,
                          "resumed": conn.session_resumed,
                          "early": conn.early_data_accepted})
        await echo_handler(conn)


@asynccontextmanager
async def our_server(certs: Path, tls: ServerTLS
                     ) -> AsyncIterator[tuple[EchoServer, QuicListener]]:
    server = EchoServer()
    async with quic_server(server.handle, certs, tls=tls) as listener:
        yield server, listener


# --- aioquic's side (asyncio code, called through trio_asyncio.aio_as_trio) ---------------


def aio_client_config(certs: Path, *, agent: str | None = None,
                      ticket: SessionTicket | None = None) -> QuicConfiguration:
    cfg = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], server_name="localhost",
                            verify_mode=ssl.CERT_REQUIRED)
    cfg.load_verify_locations(cafile=str(certs / "ca.pem"))
    if agent is not None:
        cfg.load_cert_chain(certs / f"{agent}.pem", certs / f"{agent}.key")
    cfg.session_ticket = ticket
    return cfg


async def aio_client_echo(port: int, cfg: QuicConfiguration, messages: list[bytes], *,
                          wait_connected: bool = True,
                          tickets: list[SessionTicket] | None = None) -> dict[str, Any]:
    """asyncio: connect with aioquic, echo each message on its own stream; with
    ``tickets``, also wait for the server's session ticket and collect it."""
    got_ticket = asyncio.Event()

    def on_ticket(ticket: SessionTicket) -> None:
        assert tickets is not None
        tickets.append(ticket)
        got_ticket.set()

    async with aio_connect("127.0.0.1", port, configuration=cfg,
                           wait_connected=wait_connected,
                           session_ticket_handler=on_ticket if tickets is not None
                           else None) as client:
        # aioquic marks a protocol connected only if someone already waits when
        # the handshake completes, so register the wait before any data moves.
        connected = asyncio.ensure_future(client.wait_connected())

        async def one(data: bytes) -> bytes:
            reader, writer = await client.create_stream()
            writer.write(data)
            writer.write_eof()
            return await reader.read()

        echoed = await asyncio.gather(*(one(m) for m in messages))
        await connected
        tls = client._quic.tls  # aioquic exposes these only on its TLS context
        result = {"echoed": list(echoed), "resumed": tls.session_resumed,
                  "early": tls.early_data_accepted}
        if tickets is not None:
            await asyncio.wait_for(got_ticket.wait(), 10)
        return result


async def aio_start_server(certs: Path, tickets: dict[bytes, SessionTicket]) -> Any:
    cfg = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    cfg.load_cert_chain(certs / "coordinator.pem", certs / "coordinator.key")

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            writer.write(chunk)
        writer.write_eof()

    tasks: set[asyncio.Task[None]] = set()

    def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(echo(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return await aio_serve("127.0.0.1", 0, configuration=cfg, stream_handler=on_stream,
                           session_ticket_fetcher=tickets.pop,
                           session_ticket_handler=lambda t: tickets.__setitem__(t.ticket, t))


async def aio_close_server(server: Any) -> None:
    server.close()


def aio_server_port(server: Any) -> int:
    return int(server._transport.get_extra_info("sockname")[1])


@asynccontextmanager
async def aioquic_server(certs: Path) -> AsyncIterator[int]:
    tickets: dict[bytes, SessionTicket] = {}
    server = await trio_asyncio.aio_as_trio(aio_start_server)(certs, tickets)
    try:
        yield aio_server_port(server)
    finally:
        await trio_asyncio.aio_as_trio(aio_close_server)(server)


# --- tests ----------------------------------------------------------------------------


async def test_aioquic_client_against_our_server(certs: Path) -> None:
    messages = [b"", b"hello", payload("mid", 50_000), payload("big", 1 << 20)]
    with trio.fail_after(30):
        async with trio_asyncio.open_loop(), \
                our_server(certs, server_tls(certs)) as (server, listener):
            result = await trio_asyncio.aio_as_trio(aio_client_echo)(
                listener.port, aio_client_config(certs), messages)
    assert result["echoed"] == messages
    assert server.seen == [{"identity": None, "alpn": ALPN, "resumed": False,
                            "early": False}]


async def test_our_client_against_aioquic_server(certs: Path) -> None:
    with trio.fail_after(30):
        async with trio_asyncio.open_loop(), aioquic_server(certs) as port:
            async with connect_quic("127.0.0.1", port,
                                    tls=client_tls(certs)) as conn:
                assert conn.alpn_protocol == ALPN
                assert conn.peer_identity == "coordinator"
                messages = [b"x", payload("m", 70_000), payload("l", 1 << 20)]
                results: dict[int, bytes] = {}

                async def one(i: int) -> None:
                    results[i] = await echo_roundtrip(conn, messages[i])

                async with trio.open_nursery() as nursery:
                    for i in range(len(messages)):
                        nursery.start_soon(one, i)
    assert [results[i] for i in range(len(messages))] == messages


async def test_aioquic_client_certificate_gives_identity_on_our_server(certs: Path) -> None:
    tls = server_tls(certs, mutual=True)
    with trio.fail_after(30):
        async with trio_asyncio.open_loop(), our_server(certs, tls) as (server, listener):
            result = await trio_asyncio.aio_as_trio(aio_client_echo)(
                listener.port, aio_client_config(certs, agent="a2"), [b"who am i"])
    assert result["echoed"] == [b"who am i"]
    assert [s["identity"] for s in server.seen] == ["a2"]


async def test_aioquic_client_resumes_with_0rtt_on_our_server(certs: Path) -> None:
    tickets: list[SessionTicket] = []
    with trio.fail_after(30):
        async with trio_asyncio.open_loop(), \
                our_server(certs, server_tls(certs)) as (server, listener):
            first = await trio_asyncio.aio_as_trio(aio_client_echo)(
                listener.port, aio_client_config(certs), [b"one"], tickets=tickets)
            assert tickets, "our server sent no session ticket"
            second = await trio_asyncio.aio_as_trio(aio_client_echo)(
                listener.port, aio_client_config(certs, ticket=tickets[-1]), [b"early"],
                wait_connected=False)
    assert first["echoed"] == [b"one"] and not first["resumed"]
    assert second["echoed"] == [b"early"]
    assert second["resumed"] and second["early"]
    assert [(s["resumed"], s["early"]) for s in server.seen] == [(False, False), (True, True)]


async def test_our_client_resumes_with_0rtt_on_aioquic_server(certs: Path) -> None:
    store = SessionTicketStore()
    tls = client_tls(certs)
    with trio.fail_after(30):
        async with trio_asyncio.open_loop(), aioquic_server(certs) as port:
            async with connect_quic("127.0.0.1", port, tls=tls, session_tickets=store) as conn:
                assert await echo_roundtrip(conn, b"one") == b"one"
                assert not conn.session_resumed
            assert len(store) == 1
            async with connect_quic("127.0.0.1", port, tls=tls, session_tickets=store,
                                    wait_connected=False) as conn:
                assert await echo_roundtrip(conn, b"early") == b"early"
                await conn.wait_handshake()
                assert conn.session_resumed
                assert conn.early_data_accepted
