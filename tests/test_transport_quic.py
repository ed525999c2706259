"""QUIC driver on loopback: echo, many streams, 0-RTT, keep-alive.

Real UDP sockets and real time (``autojump_clock`` would jump the clock while
tasks wait on the network); every test is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _helpers import (
    client_tls,
    echo_handler,
    echo_roundtrip,
    payload,
    quic_pair,
    quic_server,
    read_to_eof,
    resume_with_early_data,
)

from midswarm.transport import (
    MessageStream,
    QuicConfig,
    QuicConnection,
    QuicStream,
    SessionTicketStore,
    connect_quic,
    serve_streams,
)

# --- echo -----------------------------------------------------------------------


async def test_echo_one_stream(certs: Path) -> None:
    sizes = [0, 1, 100, 1500, 70_000, 3 << 20]
    with trio.fail_after(30):
        async with quic_pair(echo_handler, certs) as (_, conn):
            assert conn.handshake_complete
            assert conn.peer_identity == "coordinator"
            ms = MessageStream(await conn.open_stream())

            async def sender() -> None:
                for i, n in enumerate(sizes):
                    await ms.send_message(payload(f"one-{i}", n))
                await ms.send_eof()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                received = [m async for m in ms]
            assert received == [payload(f"one-{i}", n) for i, n in enumerate(sizes)]


async def test_echo_1000_concurrent_streams(certs: Path) -> None:
    n_streams, per_stream = 1000, 3
    results: dict[int, list[bytes]] = {}
    with trio.fail_after(60):
        async with quic_pair(echo_handler, certs) as (_, conn):
            ready = trio.Event()
            opened = 0

            async def one(i: int) -> None:
                nonlocal opened
                ms = MessageStream(await conn.open_stream())
                # Hold every stream open at once before any finishes.
                opened += 1
                if opened == n_streams:
                    ready.set()
                await ready.wait()
                for j in range(per_stream):
                    await ms.send_message(payload(f"s{i}-m{j}", 10 + (i * 37 + j) % 3000))
                await ms.send_eof()
                results[i] = [m async for m in ms]

            async with trio.open_nursery() as nursery:
                for i in range(n_streams):
                    nursery.start_soon(one, i)
    assert len(results) == n_streams
    for i in range(n_streams):
        assert results[i] == [payload(f"s{i}-m{j}", 10 + (i * 37 + j) % 3000)
                              for j in range(per_stream)], f"stream {i}"


async def test_streams_opened_by_server(certs: Path) -> None:
    """Server-initiated streams reach the client's accept_stream."""
    async def handler(conn: QuicConnection) -> None:
        for i in range(3):
            stream = await conn.open_stream()
            await stream.send_all(payload(f"srv{i}", 5000))
            await stream.send_eof()
            assert await read_to_eof(stream) == b"thanks"
        await conn.accept_stream()  # until the client closes

    with trio.fail_after(20):
        async with quic_pair(handler, certs) as (_, conn):
            for i in range(3):
                stream = await conn.accept_stream()
                assert await read_to_eof(stream) == payload(f"srv{i}", 5000)
                await stream.send_all(b"thanks")
                await stream.send_eof()


async def test_large_datagrams_on_loopback(certs: Path) -> None:
    config = QuicConfig(max_datagram_size=9000)
    with trio.fail_after(20):
        async with quic_pair(echo_handler, certs, config) as (_, conn):
            data = payload("jumbo", 1 << 20)
            assert await echo_roundtrip(conn, data) == data


# --- 0-RTT resumption --------------------------------------------------------------


async def _earn_ticket(port: int, certs: Path, store: SessionTicketStore) -> None:
    async with connect_quic("127.0.0.1", port, tls=client_tls(certs),
                            session_tickets=store) as conn:
        assert not conn.session_resumed
        assert await echo_roundtrip(conn, b"first") == b"first"
    # The server sends its ticket right after the handshake; one round trip
    # on a stream guarantees it has been processed.
    assert len(store) == 1


async def test_zero_rtt_resumption(certs: Path) -> None:
    server_side: list[tuple[bool, bool]] = []

    async def handler(conn: QuicConnection) -> None:
        server_side.append((conn.session_resumed, conn.early_data_accepted))
        await echo_handler(conn)

    store = SessionTicketStore()
    with trio.fail_after(20):
        async with quic_server(handler, certs) as listener:
            await _earn_ticket(listener.port, certs, store)
            await resume_with_early_data(listener.port, certs, store)
    assert server_side == [(False, False), (True, True)]


async def test_session_tickets_file_store_across_instances(certs: Path, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "tickets.bin"
    with trio.fail_after(20):
        async with quic_server(echo_handler, certs) as listener:
            await _earn_ticket(listener.port, certs, SessionTicketStore(path))
            assert path.exists()
            assert path.stat().st_mode & 0o777 == 0o600
            second = SessionTicketStore(path)
            assert len(second) == 1
            await resume_with_early_data(listener.port, certs, second)


async def test_corrupt_ticket_file_means_full_handshake(certs: Path, tmp_path: Path) -> None:
    path = tmp_path / "tickets.bin"
    path.write_bytes(b"\xc1 not msgpack at all")
    store = SessionTicketStore(path)
    assert len(store) == 0
    with trio.fail_after(20):
        async with quic_server(echo_handler, certs) as listener:
            await _earn_ticket(listener.port, certs, store)
    assert len(SessionTicketStore(path)) == 1


async def test_session_ticket_is_single_use(certs: Path) -> None:
    """A server takes each ticket once (replayed early data is refused)."""
    with trio.fail_after(20):
        async with quic_server(echo_handler, certs) as listener:
            store = SessionTicketStore()
            await _earn_ticket(listener.port, certs, store)
            ticket = store.get("localhost")
            assert ticket is not None
            await resume_with_early_data(listener.port, certs, store)
            replay = SessionTicketStore()
            replay.add(ticket)
            async with connect_quic("127.0.0.1", listener.port, tls=client_tls(certs),
                                    session_tickets=replay) as conn:
                assert not conn.session_resumed
                assert await echo_roundtrip(conn, b"still works") == b"still works"


# --- keep-alive and idle timeout -------------------------------------------------------


async def test_keep_alive_keeps_idle_connection_up(certs: Path) -> None:
    config = QuicConfig(keep_alive_interval=0.05, idle_timeout=0.3)
    with trio.fail_after(20):
        async with quic_pair(echo_handler, certs, config) as (listener, conn):
            await trio.sleep(1.0)  # idle, over three idle timeouts
            assert not conn.closed, conn.close_reason
            assert len(listener.connections) == 1
            assert await echo_roundtrip(conn, b"alive") == b"alive"


async def test_idle_timeout_closes_connection_without_keep_alive(certs: Path) -> None:
    config = QuicConfig(keep_alive_interval=None, idle_timeout=0.3)
    server_done = trio.Event()

    async def handler(conn: QuicConnection) -> None:
        try:
            await echo_handler(conn)
        finally:
            server_done.set()

    with trio.fail_after(20):
        async with quic_pair(handler, certs, config) as (listener, conn):
            with trio.fail_after(5):
                await conn.terminated.wait()
            assert conn.closed
            with trio.fail_after(5):
                await server_done.wait()
            assert not listener.connections


async def test_rejected_early_data_is_resent(certs: Path) -> None:
    """A ticket the server does not know (another server instance issued it): the
    0-RTT data is refused, the client falls back to a full handshake and the data
    written before it still arrives, once, in order."""
    store = SessionTicketStore()
    with trio.fail_after(20):
        async with quic_server(echo_handler, certs) as first_server:
            await _earn_ticket(first_server.port, certs, store)
        async with quic_server(echo_handler, certs) as other_server:
            async with connect_quic("127.0.0.1", other_server.port, tls=client_tls(certs),
                                    session_tickets=store, wait_connected=False) as conn:
                stream = await conn.open_stream()
                await stream.send_all(b"early ")
                await stream.send_all(b"bird")
                await stream.send_eof()
                assert await read_to_eof(stream) == b"early bird"
                await conn.wait_handshake()
                assert not conn.session_resumed
                assert not conn.early_data_accepted


# --- a request and its reply, one packet each ---------------------------------------


async def test_messages_and_fin_share_one_datagram_each_way(certs: Path) -> None:
    """``send_messages(..., eof=True)``: a request of two messages and its FIN
    leave in one datagram, and so do the reply's two messages and FIN."""
    async def reply(raw: QuicStream) -> None:
        stream = MessageStream(raw)
        request = [m async for m in stream]  # to the client's FIN
        await stream.send_messages([b"ok", b"|".join(request)], eof=True)

    async def reply_handler(conn: QuicConnection) -> None:
        await serve_streams(conn, reply)

    async with quic_pair(reply_handler, certs) as (listener, conn):
        with trio.fail_after(10):
            # What the handshake leaves to send (its last ACKs, a path MTU
            # probe) goes with a first exchange, before counting starts.
            await echo_messages(conn)
            (server_conn,) = listener.connections
            by_client = count_datagrams(conn)
            by_server = count_datagrams(server_conn)
            stream = MessageStream(await conn.open_stream())
            await stream.send_messages([b"header", b"body" * 50], eof=True)
            assert len(by_client) == 1  # both messages and the FIN
            assert [m async for m in stream] == [b"ok", b"header|" + b"body" * 50]
            assert len(by_server) == 1  # the reply's messages, its FIN and our ACK


def count_datagrams(conn: QuicConnection) -> list[int]:
    """From now on, the sizes of the datagrams ``conn``'s endpoint sends."""
    endpoint = conn._endpoint
    sent: list[int] = []
    send_datagrams = endpoint.send_datagrams

    def counting(datagrams: list[tuple[bytes, object]]) -> None:
        sent.extend(len(d) for d, _ in datagrams)
        send_datagrams(datagrams)

    endpoint.send_datagrams = counting  # type: ignore[method-assign]
    return sent


async def echo_messages(conn: QuicConnection) -> None:
    stream = MessageStream(await conn.open_stream())
    await stream.send_messages([b"warm"], eof=True)
    assert [m async for m in stream] == [b"ok", b"warm"]


async def test_fin_of_a_finished_exchange_rides_on_the_next_request(certs: Path) -> None:
    """Closing a stream whose reply was read to the end queues its FIN: the
    next request carries it (one datagram for both), and a FIN with nothing
    to ride on still leaves, by itself, soon after."""
    ends: list[trio.Event] = []

    async def answer_then_wait_for_fin(raw: QuicStream) -> None:
        stream = MessageStream(raw)
        got = trio.Event()
        ends.append(got)
        request = await stream.receive_message()
        await stream.send_messages([request], eof=True)
        with pytest.raises(trio.EndOfChannel):
            await stream.receive_message()  # the client's FIN
        got.set()

    async def handler(conn: QuicConnection) -> None:
        await serve_streams(conn, answer_then_wait_for_fin)

    async def exchange(conn: QuicConnection, data: bytes) -> MessageStream:
        stream = MessageStream(await conn.open_stream())
        await stream.send_message(data)
        assert [m async for m in stream] == [data]
        return stream

    async with quic_pair(handler, certs) as (_, conn):
        with trio.fail_after(10):
            await (await exchange(conn, b"warm up")).aclose()
            await ends[0].wait()  # alone, within LAZY_FIN_DELAY
            first = await exchange(conn, b"first")
            sent = count_datagrams(conn)
            await first.aclose()
            second = MessageStream(await conn.open_stream())
            await second.send_message(b"second")
            assert len(sent) == 1  # the request, and the first stream's FIN in it
            await ends[1].wait()
            assert [m async for m in second] == [b"second"]
