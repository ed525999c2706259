"""Bad bytes on a live QUIC connection: the offending stream gets ProtocolError on the
server and is reset; the connection's other streams and other connections keep working."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import attrs
import msgpack
import pytest
import trio
from _helpers import client_tls, quic_pair, quic_server, serve_streams

from midswarm.transport import (
    FRAMING_ERROR_CODE,
    PROTOCOL_VERSION,
    MessageStream,
    ProtocolError,
    QuicConnection,
    QuicStream,
    connect_quic,
    decode,
    encode,
    message,
)

MAX_MESSAGE = 64 * 1024


@message("test.transport.ping")
@attrs.frozen
class Ping:
    n: int


@message("test.transport.pong")
@attrs.frozen
class Pong:
    n: int


class PingServer:
    """Answers Ping(n) with Pong(n) on every stream; records protocol errors."""

    def __init__(self) -> None:
        self.errors: list[ProtocolError] = []

    async def handle(self, conn: QuicConnection) -> None:
        await serve_streams(conn, self.serve_stream)

    async def serve_stream(self, stream: QuicStream) -> None:
        ms = MessageStream(stream, max_message_size=MAX_MESSAGE)
        try:
            async for raw in ms:
                try:
                    ping = decode(raw, expect=Ping)
                except ProtocolError as exc:
                    # Framing was fine but the message was not: the application
                    # resets the stream, exactly as the framing layer would.
                    self.errors.append(exc)
                    await stream.abort(FRAMING_ERROR_CODE)
                    return
                await ms.send_message(encode(Pong(ping.n)))
            await stream.send_eof()
        except ProtocolError as exc:  # framing error: MessageStream reset the stream
            self.errors.append(exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def _garbage(seed: int) -> bytes:
    return random.Random(seed).randbytes(200)


# name -> (bytes to send, send FIN afterwards)
BAD_INPUT: dict[str, tuple[bytes, bool]] = {
    "oversized frame": (struct.pack(">I", MAX_MESSAGE + 1) + b"x" * 100, False),
    "4 GiB frame": (b"\xff\xff\xff\xff" + b"x" * 100, False),
    "frame cut by FIN": (struct.pack(">I", 100) + b"only some", True),
    "header cut by FIN": (b"\0\0", True),
    "garbage payload": (frame(b"\xc1\xc1 not msgpack"), False),
    "random garbage 1": (frame(_garbage(1)), False),
    "random garbage 2": (frame(_garbage(2)), False),
    "other protocol version": (
        frame(msgpack.packb([PROTOCOL_VERSION + 1, "test.transport.ping", {"n": 1}])), False),
    "unknown message tag": (
        frame(msgpack.packb([PROTOCOL_VERSION, "test.transport.nope", {"n": 1}])), False),
    "unexpected message type": (frame(encode(Pong(1))), False),
    "ill-typed field": (
        frame(msgpack.packb([PROTOCOL_VERSION, "test.transport.ping", {"n": "one"}])), False),
    "malformed array": (
        frame(msgpack.packb(msgpack.ExtType(1, msgpack.packb(["<f8", [4], b"\0"])))), False),
}


async def ping(ms: MessageStream, n: int) -> None:
    await ms.send_message(encode(Ping(n)))
    assert decode(await ms.receive_message(), expect=Pong) == Pong(n)


@pytest.mark.parametrize(("bad", "fin"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
async def test_bad_stream_is_reset_and_everything_else_keeps_working(
        certs: Path, bad: bytes, fin: bool) -> None:
    server = PingServer()
    with trio.fail_after(20):
        async with quic_pair(server.handle, certs) as (listener, conn):
            async with connect_quic("127.0.0.1", listener.port, tls=client_tls(certs)) as other:
                good = MessageStream(await conn.open_stream())
                await ping(good, 1)

                victim = await conn.open_stream()
                await victim.send_all(bad)
                if fin:
                    await victim.send_eof()
                with pytest.raises(trio.BrokenResourceError) as info:
                    while await victim.receive_some():
                        pass
                assert info.value.error_code == FRAMING_ERROR_CODE  # type: ignore[attr-defined]

                assert len(server.errors) == 1
                assert isinstance(server.errors[0], ProtocolError)
                # Same connection: the open stream and a new one still work.
                await ping(good, 2)
                await ping(MessageStream(await conn.open_stream()), 3)
                # Another connection is untouched.
                await ping(MessageStream(await other.open_stream()), 4)
                assert not conn.closed and not other.closed
    assert len(server.errors) == 1


async def test_bad_streams_on_many_connections_at_once(certs: Path) -> None:
    server = PingServer()
    cases = list(BAD_INPUT.values())
    with trio.fail_after(30):
        async with quic_server(server.handle, certs) as listener:

            async def client(i: int) -> None:
                async with connect_quic("127.0.0.1", listener.port,
                                        tls=client_tls(certs)) as conn:
                    good = MessageStream(await conn.open_stream())
                    for round_ in range(3):
                        bad, fin = cases[(i + round_) % len(cases)]
                        victim = await conn.open_stream()
                        await victim.send_all(bad)
                        if fin:
                            await victim.send_eof()
                        await ping(good, 100 * i + round_)
                        with pytest.raises(trio.BrokenResourceError):
                            while await victim.receive_some():
                                pass

            async with trio.open_nursery() as clients:
                for i in range(6):
                    clients.start_soon(client, i)
    assert len(server.errors) == 18


async def test_udp_junk_does_not_disturb_connections(certs: Path) -> None:
    server = PingServer()
    rng = random.Random(7)
    with trio.fail_after(20):
        async with quic_pair(server.handle, certs) as (listener, conn):
            good = MessageStream(await conn.open_stream())
            await ping(good, 1)
            with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
                await sock.bind(("127.0.0.1", 0))
                for i in range(200):
                    size = rng.choice([0, 1, 5, 30, 1199, 1200, 1500])
                    junk = bytearray(rng.randbytes(size))
                    if junk and i % 2:
                        junk[0] |= 0xC0  # long header, version 1: looks like an INITIAL
                        junk[1:5] = b"\0\0\0\1"
                    await sock.sendto(bytes(junk), ("127.0.0.1", listener.port))
            for n in range(2, 6):
                await ping(good, n)
            assert not conn.closed
    assert server.errors == []
