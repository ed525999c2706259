"""QUIC over a hostile network: a seeded UDP relay between client and server drops,
duplicates and reorders datagrams; every message must still arrive intact and in
order on its stream."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from _helpers import (
    Handler,
    client_tls,
    echo_handler,
    echo_roundtrip,
    payload,
    quic_server,
    serve_streams,
)

from midswarm.transport import (
    MessageStream,
    QuicConfig,
    QuicConnection,
    QuicListener,
    QuicStream,
    connect_quic,
)


class LossyRelay:
    """Forwards datagrams between one client and a server, misbehaving on purpose.

    Each datagram is dropped with probability ``drop``; a survivor is sent twice
    with probability ``duplicate``; each copy is held back for 1-20 ms with
    probability ``reorder`` (so later datagrams overtake it).  Decisions come
    from ``random.Random(seed)``, one draw sequence per datagram.
    """

    def __init__(self, seed: int, server: tuple[str, int], *, drop: float = 0.05,
                 duplicate: float = 0.05, reorder: float = 0.10) -> None:
        self.rng = random.Random(seed)
        self.server = server
        self.drop, self.duplicate, self.reorder = drop, duplicate, reorder
        self.client: Any = None
        self.forwarded = self.dropped = self.duplicated = self.delayed = 0
        #: Set to drop everything from now on (the path died).
        self.blackhole = False

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
            await sock.bind(("127.0.0.1", 0))
            task_status.started(sock.getsockname()[1])

            async def send_later(data: bytes, dest: Any, delay: float) -> None:
                await trio.sleep(delay)
                await sock.sendto(data, dest)

            async with trio.open_nursery() as nursery:
                while True:
                    data, addr = await sock.recvfrom(65536)
                    if addr == self.server:
                        dest = self.client
                    else:
                        self.client = addr
                        dest = self.server
                    if dest is None or self.blackhole:
                        continue
                    rng = self.rng
                    if rng.random() < self.drop:
                        self.dropped += 1
                        continue
                    copies = 1
                    if rng.random() < self.duplicate:
                        copies = 2
                        self.duplicated += 1
                    for _ in range(copies):
                        self.forwarded += 1
                        if rng.random() < self.reorder:
                            self.delayed += 1
                            nursery.start_soon(send_later, data, dest,
                                               rng.uniform(0.001, 0.02))
                        else:
                            await sock.sendto(data, dest)


@asynccontextmanager
async def through_relay(certs: Path, handler: Handler, config: QuicConfig | None,
                        seed: int, **misbehaviour: float
                        ) -> AsyncIterator[tuple[QuicListener, LossyRelay, QuicConnection]]:
    """Serve ``handler``; yield ``(listener, relay, conn)`` with ``conn`` a client
    connection that reaches the server through ``LossyRelay(seed, **misbehaviour)``."""
    async with quic_server(handler, certs, config) as listener, \
            trio.open_nursery() as nursery:
        relay = LossyRelay(seed, ("127.0.0.1", listener.port), **misbehaviour)
        relay_port: int = await nursery.start(relay.run)
        async with connect_quic("127.0.0.1", relay_port, tls=client_tls(certs),
                                config=config) as conn:
            yield listener, relay, conn
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("seed", "drop", "duplicate", "reorder", "per_stream"), [
    (1, 0.05, 0.05, 0.10, 75),
    (2, 0.05, 0.05, 0.10, 75),
    (3, 0.15, 0.10, 0.30, 25),  # a very bad network, less data
])
async def test_messages_survive_loss_duplication_reordering(
        certs: Path, seed: int, drop: float, duplicate: float, reorder: float,
        per_stream: int) -> None:
    n_streams = 4
    rng = random.Random(1000 + seed)
    # Mostly small messages, one in five larger than several datagrams.
    sizes = {(s, m): rng.randint(2_000, 30_000) if rng.random() < 0.2 else rng.randint(1, 1_000)
             for s in range(n_streams) for m in range(per_stream)}
    received: dict[int, list[bytes]] = {}
    with trio.fail_after(45):
        async with through_relay(certs, echo_handler, None, seed, drop=drop,
                                 duplicate=duplicate, reorder=reorder) as (_, relay, conn):

            async def one_stream(s: int) -> None:
                ms = MessageStream(await conn.open_stream())

                async def send() -> None:
                    for m in range(per_stream):
                        await ms.send_message(payload(f"{s}/{m}", sizes[s, m]))
                    await ms.send_eof()

                async with trio.open_nursery() as inner:
                    inner.start_soon(send)
                    received[s] = [msg async for msg in ms]

            async with trio.open_nursery() as streams:
                for s in range(n_streams):
                    streams.start_soon(one_stream, s)
    for s in range(n_streams):
        expected = [payload(f"{s}/{m}", sizes[s, m]) for m in range(per_stream)]
        assert len(received[s]) == per_stream, f"stream {s}"
        assert received[s] == expected, f"stream {s}"
    # The relay really misbehaved.
    assert relay.dropped > 0 and relay.duplicated > 0 and relay.delayed > 0, vars(relay)


async def test_keep_alive_does_not_keep_a_dead_path_alive(certs: Path) -> None:
    """Pings keep an idle connection up, but when nothing comes back at all both
    ends still give up after the idle timeout (and the server handler ends)."""
    config = QuicConfig(keep_alive_interval=0.05, idle_timeout=0.5)
    handler_done = trio.Event()

    async def handler(conn: QuicConnection) -> None:
        try:
            await echo_handler(conn)
        finally:
            handler_done.set()

    with trio.fail_after(20):
        async with through_relay(certs, handler, config, 0, drop=0, duplicate=0,
                                 reorder=0) as (listener, relay, conn):
            ms = MessageStream(await conn.open_stream())
            await ms.send_message(b"ping")
            assert await ms.receive_message() == b"ping"
            relay.blackhole = True
            with trio.fail_after(5):
                await conn.terminated.wait()
            with trio.fail_after(5):
                await handler_done.wait()
            with pytest.raises(trio.BrokenResourceError):
                await ms.send_message(b"anyone?")
            # The handler's end removed the connection (the listener still serves).
            assert not listener.connections


async def _through_lossy_relay(certs: Path, seed: int, handler: Handler, config: QuicConfig,
                               client_work: Callable[[QuicConnection], Awaitable[object]]
                               ) -> LossyRelay:
    """Serve ``handler``; run ``client_work(conn)`` on a connection through a relay
    with 10 % loss, some duplication and reordering; return the relay."""
    async with through_relay(certs, handler, config, seed, drop=0.10, duplicate=0.05,
                             reorder=0.10) as (_, relay, conn):
        await client_work(conn)
    return relay


async def test_small_windows_under_loss_do_not_stall(certs: Path) -> None:
    """Lost window updates (MAX_STREAM_DATA) must be resent, or a stream whose
    window is exhausted stalls forever: many window-sized transfers under loss."""
    config = QuicConfig(stream_receive_window=8 * 1024, stream_send_watermark=8 * 1024)
    n_streams, size = 12, 100_000
    received: dict[int, bytes] = {}

    async def work(conn: QuicConnection) -> None:
        async def one(i: int) -> None:
            received[i] = await echo_roundtrip(conn, payload(f"w{i}", size))

        async with trio.open_nursery() as nursery:
            for i in range(n_streams):
                nursery.start_soon(one, i)

    with trio.fail_after(45):
        relay = await _through_lossy_relay(certs, 11, echo_handler, config, work)
    assert relay.dropped > 0
    assert received == {i: payload(f"w{i}", size) for i in range(n_streams)}


async def test_resets_and_fins_under_loss_arrive(certs: Path) -> None:
    """RESET_STREAM, STOP_SENDING and bare FINs lost on the way are resent: on every
    stream the client sees exactly what the server did (echo + FIN, or a reset)."""
    n_streams = 60

    async def handler(conn: QuicConnection) -> None:
        await serve_streams(conn, serve)

    async def serve(stream: QuicStream) -> None:
        try:
            first = await stream.receive_some(1)
            if first == b"R":
                await stream.abort(0x99)
            else:
                await stream.send_all(first)
                await stream.send_eof()  # a FIN on its own packet, most likely
                while await stream.receive_some():
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    outcomes: dict[int, object] = {}

    async def work(conn: QuicConnection) -> None:
        async def one(i: int) -> None:
            stream = await conn.open_stream()
            kind = b"R" if i % 2 else b"E"
            await stream.send_all(kind)
            try:
                got = b""
                while chunk := await stream.receive_some():
                    got += chunk
                outcomes[i] = got
            except trio.BrokenResourceError as exc:
                outcomes[i] = exc.error_code  # type: ignore[attr-defined]
            if kind == b"E":
                await stream.send_eof()

        async with trio.open_nursery() as nursery:
            for i in range(n_streams):
                nursery.start_soon(one, i)

    with trio.fail_after(45):
        relay = await _through_lossy_relay(certs, 12, handler, QuicConfig(), work)
    assert relay.dropped > 0
    assert outcomes == {i: 0x99 if i % 2 else b"E" for i in range(n_streams)}
