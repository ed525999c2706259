"""QUIC stream and connection semantics: resets, STOP_SENDING, close, cancellation,
backpressure, failing handlers, version negotiation and undersized INITIALs.

Real UDP sockets and real time; every test is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import functools
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from _helpers import (
    Handler,
    client_tls,
    echo_roundtrip,
    echo_stream,
    quic_server,
    read_to_eof,
    serve_streams,
)
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection as AioQuicConnection
from aioquic.quic.packet import pull_quic_header

from midswarm.transport import (
    ConnectionClosed,
    QuicConfig,
    QuicConnection,
    QuicListener,
    QuicStream,
    connect_quic,
)

# Small windows so that a peer that does not read stalls a sender quickly.
SMALL = QuicConfig(stream_receive_window=16 * 1024, stream_send_watermark=16 * 1024)


class ScriptedServer:
    """A server whose streams behave according to their first byte:

    ``E`` echo the rest; ``H`` hold (never read, keep the stream open);
    ``R`` read the rest, send a little, then reset with the code in byte 2;
    ``S`` read 4 bytes then abort (STOP_SENDING + RESET) with the code in byte 2;
    ``X`` raise inside the connection handler.
    ``held`` collects the held streams so a test can read them later.
    """

    def __init__(self) -> None:
        self.held: list[QuicStream] = []
        self.held_event = trio.Event()
        self.connections: list[QuicConnection] = []
        self.handler_exits = 0

    async def handle(self, conn: QuicConnection) -> None:
        self.connections.append(conn)
        try:
            await serve_streams(conn, self._serve)
        finally:
            self.handler_exits += 1

    async def _serve(self, stream: QuicStream) -> None:
        kind = await stream.receive_some(1)
        if kind == b"X":
            # Escapes serve_streams' nursery: the connection handler fails.
            raise RuntimeError("handler failure requested by the test")
        try:
            if kind == b"E":
                await echo_stream(stream)
            elif kind == b"H":
                self.held.append(stream)
                self.held_event.set()
            elif kind == b"R":
                code = (await stream.receive_some(1))[0]
                await read_to_eof(stream)
                await stream.send_all(b"partial")
                await stream.abort(code)
            elif kind == b"S":
                code = (await stream.receive_some(1))[0]
                await stream.receive_some(4)
                await stream.abort(code)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@asynccontextmanager
async def scripted(certs: Path, config: QuicConfig | None = None,
                   handler: Handler | None = None
                   ) -> AsyncIterator[tuple[ScriptedServer, QuicListener]]:
    server = ScriptedServer()
    async with quic_server(handler or server.handle, certs, config) as listener:
        yield server, listener


def client(certs: Path, port: int,
           config: QuicConfig | None = None) -> AbstractAsyncContextManager[QuicConnection]:
    return connect_quic("127.0.0.1", port, tls=client_tls(certs), config=config)


# --- resets and STOP_SENDING -----------------------------------------------------------


async def test_peer_reset_raises_broken_resource_with_code(certs: Path) -> None:
    with trio.fail_after(20):
        async with scripted(certs) as (_, listener), client(certs, listener.port) as conn:
            stream = await conn.open_stream()
            await stream.send_all(b"R\x2a request")
            await stream.send_eof()
            got = b""
            with pytest.raises(trio.BrokenResourceError) as info:
                while True:
                    got += await stream.receive_some()
            # Data sent before the reset may or may not arrive; nothing else may.
            assert b"partial".startswith(got)
            assert info.value.error_code == 0x2A  # type: ignore[attr-defined]
            # The connection is unaffected.
            assert await echo_roundtrip(conn, b"Eafter reset") == b"after reset"


async def test_stop_sending_raises_broken_resource_on_send(certs: Path) -> None:
    with trio.fail_after(20):
        async with scripted(certs) as (_, listener), client(certs, listener.port) as conn:
            stream = await conn.open_stream()
            await stream.send_all(b"S\x33")
            chunk = b"x" * 65536
            with pytest.raises(trio.BrokenResourceError) as info:
                for _ in range(10_000):  # far more than any window: must break first
                    await stream.send_all(chunk)
            assert info.value.error_code == 0x33  # type: ignore[attr-defined]
            # The stream's receive side was reset too; it reports the code.
            with pytest.raises(trio.BrokenResourceError) as info2:
                await stream.receive_some()
            assert info2.value.error_code == 0x33  # type: ignore[attr-defined]
            assert await echo_roundtrip(conn, b"Estill fine") == b"still fine"


async def test_local_abort_then_use_raises_closed(certs: Path) -> None:
    with trio.fail_after(20):
        async with scripted(certs) as (server, listener), client(certs, listener.port) as conn:
            stream = await conn.open_stream()
            await stream.send_all(b"H")
            await server.held_event.wait()
            await stream.abort(7)
            with pytest.raises(trio.ClosedResourceError):
                await stream.send_all(b"more")
            with pytest.raises(trio.ClosedResourceError):
                await stream.receive_some()
            # The server's reader sees our reset with our code.
            with pytest.raises(trio.BrokenResourceError) as info:
                await server.held[0].receive_some()
            assert info.value.error_code == 7  # type: ignore[attr-defined]


# --- closing wakes every blocked task ----------------------------------------------------


@pytest.mark.parametrize("closer", ["local", "peer"])
async def test_connection_close_wakes_all_blocked_tasks(certs: Path, closer: str) -> None:
    outcomes: dict[str, BaseException] = {}
    with trio.fail_after(20):
        async with scripted(certs, SMALL) as (server, listener), \
                client(certs, listener.port, SMALL) as conn:
            recv_stream = await conn.open_stream()
            await recv_stream.send_all(b"H")
            send_stream = await conn.open_stream()
            await send_stream.send_all(b"H")
            blocked = 0
            all_blocked = trio.Event()

            async def expect_failure(name: str, fn: Callable[[], Awaitable[object]]) -> None:
                nonlocal blocked
                blocked += 1
                if blocked == 3:
                    all_blocked.set()
                try:
                    await fn()
                except (trio.BrokenResourceError, trio.ClosedResourceError,
                        ConnectionClosed) as exc:
                    outcomes[name] = exc
                else:
                    raise AssertionError(f"{name} returned instead of raising")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(expect_failure, "receive_some", recv_stream.receive_some)
                nursery.start_soon(expect_failure, "send_all",
                                   functools.partial(send_stream.send_all, b"y" * (1 << 20)))
                nursery.start_soon(expect_failure, "accept_stream", conn.accept_stream)
                await all_blocked.wait()
                # Quiet for 0.1 s: the sender has filled the window and parked.
                await trio.testing.wait_all_tasks_blocked(0.1)
                assert len(server.held) == 2
                assert not outcomes, outcomes
                if closer == "local":
                    conn.close(0x5, "test closes")
                else:
                    server.connections[0].close(0x6, "server closes")
            assert set(outcomes) == {"receive_some", "send_all", "accept_stream"}
            assert conn.closed
            expected = 0x5 if closer == "local" else 0x6
            assert conn.close_reason[0] == expected
            assert isinstance(outcomes["accept_stream"], ConnectionClosed)
            for name in ("receive_some", "send_all"):
                exc = outcomes[name]
                assert isinstance(exc, trio.BrokenResourceError), (name, exc)
                assert exc.error_code == expected  # type: ignore[attr-defined]
            with pytest.raises(ConnectionClosed):
                await conn.open_stream()


async def test_server_listener_close_closes_client_connections(certs: Path) -> None:
    with trio.fail_after(20):
        async with scripted(certs) as (_, listener), client(certs, listener.port) as conn:
            assert await echo_roundtrip(conn, b"Eup") == b"up"
            listener.close()
            with trio.fail_after(5):
                await conn.terminated.wait()
            with pytest.raises(ConnectionClosed):
                await conn.accept_stream()


# --- cancellation --------------------------------------------------------------------


async def test_cancelled_send_all_leaves_connection_usable(certs: Path) -> None:
    with trio.fail_after(20):
        async with scripted(certs, SMALL) as (server, listener), \
                client(certs, listener.port, SMALL) as conn:
            stream = await conn.open_stream()
            with trio.move_on_after(0.5) as scope:
                await stream.send_all(b"H" + b"z" * (1 << 20))
            assert scope.cancelled_caught, "send_all completed although the peer never read"
            assert await echo_roundtrip(conn, b"Eusable") == b"usable"
            # The stalled stream itself still works once the peer reads.
            held = server.held[0]
            async with trio.open_nursery() as nursery:
                async def drain() -> None:
                    await read_to_eof(held)
                nursery.start_soon(drain)
                await stream.send_all(b"tail")
                await stream.send_eof()


async def test_cancelled_receive_some_leaves_stream_and_connection_usable(certs: Path) -> None:
    with trio.fail_after(20):
        async with scripted(certs) as (server, listener), client(certs, listener.port) as conn:
            stream = await conn.open_stream()
            await stream.send_all(b"H")
            with trio.move_on_after(0.2) as scope:
                await stream.receive_some()
            assert scope.cancelled_caught
            assert await echo_roundtrip(conn, b"Eusable") == b"usable"
            await server.held_event.wait()
            await server.held[0].send_all(b"late reply")
            await server.held[0].send_eof()
            assert await read_to_eof(stream) == b"late reply"


async def test_cancelled_accept_stream_leaves_connection_usable(certs: Path) -> None:
    with trio.fail_after(20):
        async with scripted(certs) as (_, listener), client(certs, listener.port) as conn:
            with trio.move_on_after(0.1) as scope:
                await conn.accept_stream()
            assert scope.cancelled_caught
            assert await echo_roundtrip(conn, b"Eusable") == b"usable"


# --- backpressure ----------------------------------------------------------------------


async def test_backpressure_bounds_receiver_buffer(certs: Path) -> None:
    window = SMALL.stream_receive_window
    total = 1 << 20
    data = bytes(range(256)) * (total // 256)
    with trio.fail_after(30):
        async with scripted(certs, SMALL) as (server, listener), \
                client(certs, listener.port, SMALL) as conn:
            stream = await conn.open_stream()
            await stream.send_all(b"H")
            await server.held_event.wait()
            held = server.held[0]
            sent = 0
            done = trio.Event()

            async def sender() -> None:
                nonlocal sent
                for i in range(0, total, 4096):
                    await stream.send_all(data[i:i + 4096])
                    sent = i + 4096
                await stream.send_eof()
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                with trio.move_on_after(0.5):
                    await done.wait()
                # Quiet for 0.1 s: nothing moves while the server does not read.
                await trio.testing.wait_all_tasks_blocked(0.1)
                assert not done.is_set(), "send_all never blocked although the peer never read"
                assert sent < total
                # Without waiting, take whatever the server has buffered.
                first = await held.receive_some()
                assert 0 < len(first) <= window
                # The sender got a window plus its watermark ahead, never more.
                assert sent <= window + SMALL.stream_send_watermark + 4096
                received = first + await read_to_eof(held)
            assert received == data


# --- failing handler -------------------------------------------------------------------


async def test_failing_handler_closes_only_its_connection(certs: Path) -> None:
    with trio.fail_after(20):
        async with scripted(certs) as (server, listener):
            async with client(certs, listener.port) as good, \
                    client(certs, listener.port) as bad:
                assert await echo_roundtrip(good, b"Ebefore") == b"before"
                stream = await bad.open_stream()
                await stream.send_all(b"X")
                with pytest.raises(trio.BrokenResourceError):
                    await stream.receive_some()
                assert bad.closed
                assert bad.close_reason[0] != 0  # an error code, not a clean close
                assert not good.closed
                assert await echo_roundtrip(good, b"Eafter") == b"after"
            async with client(certs, listener.port) as fresh:
                assert await echo_roundtrip(fresh, b"Enew") == b"new"


async def test_handler_return_closes_connection(certs: Path) -> None:
    async def handler(conn: QuicConnection) -> None:
        stream = await conn.accept_stream()
        await stream.send_all(await read_to_eof(stream))
        await stream.send_eof()

    with trio.fail_after(20):
        async with scripted(certs, handler=handler) as (_, listener), \
                client(certs, listener.port) as conn:
            assert await echo_roundtrip(conn, b"once") == b"once"
            with trio.fail_after(5):
                await conn.terminated.wait()
            assert conn.close_reason[0] == 0


# --- packets that must not create connections -------------------------------------------


def aioquic_initial() -> bytes:
    """A genuine client INITIAL datagram (ClientHello) made by aioquic."""
    cfg = QuicConfiguration(is_client=True, alpn_protocols=["midswarm/1"],
                            server_name="localhost")
    machine = AioQuicConnection(configuration=cfg)
    now = time.monotonic()
    machine.connect(("127.0.0.1", 4433), now=now)
    datagrams = machine.datagrams_to_send(now=now)
    assert len(datagrams[0][0]) >= 1200
    return datagrams[0][0]


def count_connection_tasks() -> int:
    """Connection worker tasks alive in this Trio run (one per QuicConnection)."""
    def walk(task: trio.lowlevel.Task) -> int:
        n = int(task.name.endswith("ConnectionDriver._run_timer"))
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                n += walk(child)
        return n
    return walk(trio.lowlevel.current_root_task())  # type: ignore[arg-type]


async def test_unknown_version_gets_version_negotiation(certs: Path) -> None:
    dcid, scid = bytes(range(8)), bytes(range(100, 108))
    packet = (bytes([0xC0]) + struct.pack(">I", 0x1A2A3A4A) + bytes([len(dcid)]) + dcid
              + bytes([len(scid)]) + scid)
    packet += bytes(1200 - len(packet))
    with trio.fail_after(10):
        async with scripted(certs) as (_, listener):
            with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
                await sock.bind(("127.0.0.1", 0))
                await sock.sendto(packet, ("127.0.0.1", listener.port))
                reply, _ = await sock.recvfrom(65536)
    assert reply[0] & 0x80, "version negotiation uses a long header"
    assert reply[1:5] == b"\0\0\0\0", "version negotiation carries version 0"
    pos = 5
    assert reply[pos] == len(scid) and reply[pos + 1:pos + 1 + len(scid)] == scid
    pos += 1 + len(scid)
    assert reply[pos] == len(dcid) and reply[pos + 1:pos + 1 + len(dcid)] == dcid
    pos += 1 + len(dcid)
    versions = [struct.unpack_from(">I", reply, i)[0] for i in range(pos, len(reply), 4)]
    assert 0x00000001 in versions
    assert 0x1A2A3A4A not in versions


async def test_short_initial_creates_no_connection(certs: Path) -> None:
    full = aioquic_initial()
    # aioquic pads the datagram after the INITIAL packet: cut the padding off
    # to get a complete, valid INITIAL in a datagram under 1200 bytes.
    header = pull_quic_header(Buffer(data=full), host_cid_length=8)
    short = full[:header.packet_length]
    assert len(short) < 1200
    with trio.fail_after(10):
        async with scripted(certs) as (_, listener):
            before = count_connection_tasks()
            with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
                await sock.bind(("127.0.0.1", 0))
                await sock.sendto(short, ("127.0.0.1", listener.port))
                with trio.move_on_after(0.3) as scope:
                    await sock.recvfrom(65536)
                assert scope.cancelled_caught, "server answered an undersized INITIAL"
                assert count_connection_tasks() == before
                # Control: the same ClientHello at full size does start a connection.
                await sock.sendto(full, ("127.0.0.1", listener.port))
                reply, _ = await sock.recvfrom(65536)
                assert reply[0] & 0x80
                assert count_connection_tasks() == before + 1
