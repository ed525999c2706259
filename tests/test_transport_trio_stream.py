"""QuicStream against Trio's own conformance checks for ``HalfCloseableStream``
(``trio.testing.check_half_closeable_stream``), plus stream-limit behaviour."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing
from _helpers import (
    client_tls,
    echo_handler,
    quic_pair,
    quic_server,
    read_to_eof,
    serve_streams,
)

from midswarm.transport import (
    ConnectionClosed,
    QuicConfig,
    QuicConnection,
    QuicStream,
    connect_quic,
)

WINDOW = 64 * 1024
CONFIG = QuicConfig(stream_receive_window=WINDOW, stream_send_watermark=WINDOW)


@asynccontextmanager
async def connected_pair(certs: Path, config: QuicConfig
                         ) -> AsyncIterator[tuple[QuicConnection, trio.MemoryReceiveChannel[
                             QuicStream]]]:
    """A client connection, and a channel of the streams its server accepts."""
    send_accepted, accepted = trio.open_memory_channel[QuicStream](100)

    async def handler(conn: QuicConnection) -> None:
        while True:
            try:
                stream = await conn.accept_stream()
            except ConnectionClosed:
                return
            await send_accepted.send(stream)

    async with quic_pair(handler, certs, config) as (_, conn):
        yield conn, accepted


async def test_quic_stream_passes_trio_stream_conformance(certs: Path) -> None:
    with trio.fail_after(30):
        async with connected_pair(certs, CONFIG) as (conn, accepted):

            async def stream_maker() -> tuple[QuicStream, QuicStream]:
                client_side = await conn.open_stream()
                # The server sees a stream once bytes arrive: send one marker byte
                # and consume it on the other side.
                await client_side.send_all(b"!")
                server_side = await accepted.receive()
                assert await server_side.receive_some(1) == b"!"
                return client_side, server_side

            async def clogged_stream_maker() -> tuple[QuicStream, QuicStream]:
                a, b = await stream_maker()
                # A window of data the reader has not consumed, plus a watermark
                # of unacknowledged data queued behind it: send_all (and
                # wait_send_all_might_not_block) now block until the peer reads.
                fill = b"\0" * (WINDOW + WINDOW)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(a.send_all, fill)
                    nursery.start_soon(b.send_all, fill)
                return a, b

            await trio.testing.check_half_closeable_stream(stream_maker, clogged_stream_maker)


async def test_streams_beyond_the_peer_limit_wait_then_flow(certs: Path) -> None:
    """With the server allowing 8 concurrent streams, 40 concurrent streams and then
    300 sequential ones all complete: the limit bounds open streams, not lifetime."""
    config = QuicConfig(max_concurrent_streams=8)

    async def roundtrip(conn: QuicConnection, data: bytes) -> bytes:
        stream = await conn.open_stream()
        await stream.send_all(data)
        await stream.send_eof()
        echoed = await read_to_eof(stream)
        await stream.aclose()
        return echoed

    results: dict[int, bytes] = {}
    with trio.fail_after(30):
        async with quic_server(echo_handler, certs, config) as listener:
            async with connect_quic("127.0.0.1", listener.port, tls=client_tls(certs)) as conn:

                async def one(i: int) -> None:
                    results[i] = await roundtrip(conn, f"stream {i}".encode())

                async with trio.open_nursery() as streams:
                    for i in range(40):
                        streams.start_soon(one, i)
                for i in range(40, 340):
                    await one(i)
    assert results == {i: f"stream {i}".encode() for i in range(340)}


async def test_aborted_streams_give_their_credit_back(certs: Path) -> None:
    """Streams the client aborts (some before sending a byte) finish on both sides,
    so the server's limit of 16 open streams is replenished: 400 aborted streams
    and then an echo on a fresh stream all go through."""
    config = QuicConfig(max_concurrent_streams=16)
    resets_seen = 0

    async def serve(stream: QuicStream) -> None:
        nonlocal resets_seen
        try:
            data = await stream.receive_some()
            if data == b"echo":
                await stream.send_all(data)
                await stream.send_eof()
            else:
                while await stream.receive_some():
                    pass
        except trio.BrokenResourceError:
            resets_seen += 1

    async def handler(conn: QuicConnection) -> None:
        await serve_streams(conn, serve)

    with trio.fail_after(30):
        async with quic_server(handler, certs, config) as listener:
            async with connect_quic("127.0.0.1", listener.port, tls=client_tls(certs)) as conn:
                for i in range(400):
                    stream = await conn.open_stream()
                    if i % 2:
                        await stream.send_all(b"some data")
                    await stream.abort(0x10 + i % 7)
                stream = await conn.open_stream()
                await stream.send_all(b"echo")
                assert await stream.receive_some() == b"echo"
                assert await stream.receive_some() == b""
    assert resets_seen > 0


async def test_stream_with_only_fin_is_accepted(certs: Path) -> None:
    """A stream the client opens and closes without writing reaches accept_stream
    (its FIN is its first frame) and reads as empty."""
    async def handler(conn: QuicConnection) -> None:
        stream = await conn.accept_stream()
        assert await stream.receive_some() == b""
        await stream.send_all(b"empty")
        await stream.send_eof()
        with trio.move_on_after(10):
            await conn.accept_stream()  # until the client leaves

    with trio.fail_after(10):
        async with quic_pair(handler, certs) as (_, conn):
            stream = await conn.open_stream()
            await stream.send_eof()
            assert await stream.receive_some() == b"empty"
            assert await stream.receive_some() == b""
