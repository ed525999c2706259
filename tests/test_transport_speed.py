"""Behaviour that the transport's speed work changed: large and discovered
datagram sizes, UDP GSO and its fallback, many streams written in one round,
burst accepts, 0-RTT requests in the first flight."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
from pathlib import Path

import pytest
import trio
from _helpers import client_tls, quic_pair, quic_server, read_to_eof, server_tls

from midswarm.transport import (
    MAX_DATAGRAM_SIZE,
    ConnectionClosed,
    MessageStream,
    QuicConfig,
    QuicConnection,
    QuicStream,
    connect_quic,
)
from midswarm.transport._endpoint import _Endpoint


async def _digest_handler(conn: QuicConnection) -> None:
    """Reads one stream to its end, answers with the SHA-256 of what it read."""
    stream = await conn.accept_stream()
    h = hashlib.sha256()
    while data := await stream.receive_some():
        h.update(data)
    await stream.send_all(h.digest())
    await stream.send_eof()


async def _send_and_digest(certs: Path, config: QuicConfig, payload: bytes) -> tuple[bytes, int]:
    with trio.fail_after(60):
        async with quic_pair(_digest_handler, certs, config) as (_, conn):
            # The handshake runs with small datagrams (full-size Initials are
            # costly to pad and parse); the real size applies once confirmed.
            stream = await conn.open_stream()
            await stream.send_all(payload)
            await stream.send_eof()
            digest = await read_to_eof(stream)
            size = conn.max_datagram_size
    return digest, size


@pytest.mark.parametrize("config", [
    QuicConfig(max_datagram_size=MAX_DATAGRAM_SIZE),
    QuicConfig(max_datagram_size=1452, gso=True),
    QuicConfig(max_datagram_size=1452, gso=False),
    QuicConfig(),  # discovered from the path
], ids=["16383", "1452-gso", "1452-no-gso", "discovered"])
async def test_bulk_transfer_is_intact(certs: Path, config: QuicConfig) -> None:
    payload = os.urandom(3 << 20)
    digest, size = await _send_and_digest(certs, config, payload)
    assert digest == hashlib.sha256(payload).digest()
    if config.max_datagram_size is not None:
        assert size == config.max_datagram_size
    else:
        # Loopback's MTU is 65536: the discovered size is our ceiling.
        assert size == MAX_DATAGRAM_SIZE


def test_datagram_size_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="max_datagram_size"):
        QuicConfig(max_datagram_size=MAX_DATAGRAM_SIZE + 1)
    with pytest.raises(ValueError, match="max_datagram_size"):
        QuicConfig(max_datagram_size=1199)


def _udp_pair() -> tuple[socket.socket, socket.socket]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(receiver.getsockname())
    sender.setblocking(False)
    return sender, receiver


def _receive(receiver: socket.socket, count: int) -> list[bytes]:
    return [receiver.recv(65536) for _ in range(count)]


def test_gso_sends_a_run_as_separate_datagrams() -> None:
    sender, receiver = _udp_pair()
    with sender, receiver:
        endpoint = _Endpoint(sender, connected=True, gso=True)
        datagrams = [(bytes([i]) * 1400, None) for i in range(10)] + [(b"tail", None)]
        endpoint.send_datagrams(datagrams)
        assert endpoint.gso, "loopback on Linux supports UDP_SEGMENT"
        assert _receive(receiver, 11) == [d for d, _ in datagrams]


class _NoGsoSocket(socket.socket):
    """A socket whose kernel path refuses segmentation offload."""

    def sendmsg(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.EIO, "no GSO here")


def test_gso_falls_back_to_plain_sends() -> None:
    _, receiver = _udp_pair()
    sender = _NoGsoSocket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(receiver.getsockname())
    sender.setblocking(False)
    with sender, receiver:
        endpoint = _Endpoint(sender, connected=True, gso=True)
        datagrams = [(bytes([i]) * 1000, None) for i in range(5)]
        endpoint.send_datagrams(datagrams)
        assert not endpoint.gso
        assert _receive(receiver, 5) == [d for d, _ in datagrams]


async def test_many_streams_written_in_one_round_arrive_intact(certs: Path) -> None:
    """Writes from 500 tasks in the same scheduling round: each stream gets
    exactly its own bytes, in order."""

    async def echo(stream: QuicStream) -> None:
        ms = MessageStream(stream)
        async for msg in ms:
            await ms.send_message(msg)
        await stream.aclose()

    async def handler(conn: QuicConnection) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    stream = await conn.accept_stream()
                    while True:
                        nursery.start_soon(echo, stream)
                        stream = conn.accept_stream_nowait()
                except trio.WouldBlock:
                    continue
                except ConnectionClosed:
                    return

    config = QuicConfig(max_datagram_size=MAX_DATAGRAM_SIZE)
    results: dict[int, list[bytes]] = {}
    with trio.fail_after(60):
        async with quic_pair(handler, certs, config) as (_, conn):

            async def one(i: int) -> None:
                ms = MessageStream(await conn.open_stream())
                got = []
                for j in range(5):
                    await ms.send_message(f"{i}:{j}".encode() * 10)
                    got.append(await ms.receive_message())
                await ms.send_eof()
                results[i] = got

            async with trio.open_nursery() as streams:
                for i in range(500):
                    streams.start_soon(one, i)
    assert results == {i: [f"{i}:{j}".encode() * 10 for j in range(5)] for i in range(500)}


async def test_accept_stream_nowait(certs: Path) -> None:
    accepted: list[int] = []
    done = trio.Event()

    async def handler(conn: QuicConnection) -> None:
        first = await conn.accept_stream()
        accepted.append(first.stream_id)
        # The client wrote "go" on its first stream after writing on all the
        # others: once it is here, so are they (loopback keeps packet order).
        got = b""
        while not got.endswith(b"go"):
            got += await first.receive_some()
        while True:
            try:
                accepted.append(conn.accept_stream_nowait().stream_id)
            except trio.WouldBlock:
                break
        done.set()
        await trio.sleep_forever()

    with trio.fail_after(30):
        async with quic_pair(handler, certs) as (_, conn):
            streams = [await conn.open_stream() for _ in range(20)]
            for stream in streams:
                await stream.send_all(b"x")
            await streams[0].send_all(b"go")
            await done.wait()
    assert sorted(accepted) == [4 * i for i in range(20)]


async def test_send_interrupted_inside_a_frame_resets_the_stream(certs: Path) -> None:
    """A multi-write frame cancelled half way must not leave half a frame for the
    peer to misparse: the stream is reset and later sends fail clearly."""
    config = QuicConfig(stream_send_watermark=64 * 1024, stream_receive_window=64 * 1024)
    got: list[BaseException] = []
    reader_may_read = trio.Event()
    reader_done = trio.Event()

    async def handler(conn: QuicConnection) -> None:
        ms = MessageStream(await conn.accept_stream())
        await ms.receive_message()  # the small first message
        await reader_may_read.wait()
        try:
            await ms.receive_message()
        except (trio.BrokenResourceError, trio.EndOfChannel) as exc:
            got.append(exc)
        reader_done.set()

    with trio.fail_after(30):
        async with quic_pair(handler, certs, config) as (_, conn):
            ms = MessageStream(await conn.open_stream())
            await ms.send_message(b"hello")
            with trio.move_on_after(0.5) as scope:
                await ms.send_message(b"z" * (1 << 20))  # blocks: the peer is not reading
            assert scope.cancelled_caught
            with pytest.raises(trio.BrokenResourceError, match="interrupted"):
                await ms.send_message(b"after")
            reader_may_read.set()
            await reader_done.wait()
    assert len(got) == 1 and isinstance(got[0], trio.BrokenResourceError)


async def test_zero_rtt_requests_are_answered_before_the_handshake_completes(
        certs: Path) -> None:
    """A resumed client's early data starts the server's handler at once (the
    ticket carries the verified identity), and every later ticket keeps it."""
    from midswarm.transport import SessionTicketStore

    seen: list[tuple[str | None, bool, bool]] = []

    async def handler(conn: QuicConnection) -> None:
        seen.append((conn.peer_identity, conn.session_resumed, conn.handshake_complete))
        ms = MessageStream(await conn.accept_stream())
        async for msg in ms:
            await ms.send_message(msg)

    store = SessionTicketStore()
    with trio.fail_after(30):
        async with quic_server(handler, certs, tls=server_tls(certs, mutual=True)) as listener:
            for i in range(3):
                async with connect_quic("127.0.0.1", listener.port, tls=client_tls(certs, "a1"),
                                        session_tickets=store,
                                        wait_connected=(i == 0)) as conn:
                    ms = MessageStream(await conn.open_stream())
                    await ms.send_message(b"ping %d" % i)
                    assert await ms.receive_message() == b"ping %d" % i
                    await conn.wait_handshake()
                    assert conn.session_resumed == (i > 0)
                    assert conn.early_data_accepted == (i > 0)
                    # One more exchange after the handshake: the server's new
                    # ticket (sent on the client's Finished) arrives before it.
                    await ms.send_message(b"again")
                    assert await ms.receive_message() == b"again"
    assert seen[0] == ("a1", False, True)
    # Resumed: identity from the ticket, handler running before the client's
    # Finished.  (On a loaded machine the server may read the Finished in the
    # same batch as the early data, so one of the two may start after it.)
    assert seen[1][:2] == seen[2][:2] == ("a1", True)
    assert not (seen[1][2] and seen[2][2]), seen


async def test_quic_send_all_nowait_respects_the_watermark(certs: Path) -> None:
    config = QuicConfig(stream_send_watermark=64 * 1024, stream_receive_window=64 * 1024)
    got = bytearray()
    may_read, done = trio.Event(), trio.Event()

    async def handler(conn: QuicConnection) -> None:
        stream = await conn.accept_stream()
        await may_read.wait()
        while data := await stream.receive_some():
            got.extend(data)
        done.set()

    with trio.fail_after(30):
        async with quic_pair(handler, certs, config) as (_, conn):
            stream = await conn.open_stream()
            assert stream.send_all_nowait(b"a" * 1000)
            # More than the watermark allows unacknowledged: nothing is written.
            assert not stream.send_all_nowait(b"b" * (64 * 1024))
            may_read.set()
            await stream.send_all(b"c" * 10)
            await stream.send_eof()
            await done.wait()
    assert bytes(got) == b"a" * 1000 + b"c" * 10


def test_handshake_datagrams_are_small() -> None:
    """Initial datagrams are padded to the full datagram size and aioquic parses
    padding a byte at a time: a handshake uses at most 1452 bytes (less when the
    path is smaller), and never less than QUIC's 1200."""
    from midswarm.transport._connect import _handshake_size

    assert _handshake_size(MAX_DATAGRAM_SIZE) == 1452
    assert _handshake_size(1300) == 1300
    assert _handshake_size(1000) == 1200


async def test_zero_rtt_request_leaves_with_the_client_hello(
        certs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed client's first request rides in the ClientHello's datagram
    (the first datagram leaves only after the request was written), and the
    server answers it from early data."""
    from midswarm.transport import SessionTicketStore

    async def handler(conn: QuicConnection) -> None:
        ms = MessageStream(await conn.accept_stream())
        async for msg in ms:
            await ms.send_message(msg)

    store = SessionTicketStore()
    with trio.fail_after(30):
        async with quic_server(handler, certs) as listener:
            async with connect_quic("127.0.0.1", listener.port, tls=client_tls(certs),
                                    session_tickets=store) as conn:
                ms = MessageStream(await conn.open_stream())
                await ms.send_message(b"first")
                assert await ms.receive_message() == b"first"
                await conn.wait_handshake()
            assert store.get("localhost") is not None

            # Whether the request was already written when each client
            # datagram left: the first one must carry the request too.
            sends: list[bool] = []
            written = False
            send_datagrams = _Endpoint.send_datagrams

            def noting_send(self: _Endpoint, datagrams: list[tuple[bytes, object]]) -> None:
                if self._connected:
                    sends.extend(written for _ in datagrams)
                send_datagrams(self, datagrams)

            monkeypatch.setattr(_Endpoint, "send_datagrams", noting_send)
            async with connect_quic("127.0.0.1", listener.port, tls=client_tls(certs),
                                    session_tickets=store, wait_connected=False) as conn:
                ms = MessageStream(await conn.open_stream())
                written = True  # send_message queues the request before it yields
                await ms.send_message(b"early")
                assert await ms.receive_message() == b"early"
                assert conn.early_data_accepted
            monkeypatch.undo()
    assert sends and sends[0], "the ClientHello left before the request was written"
