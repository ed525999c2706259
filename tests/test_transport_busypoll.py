"""Busy polling (``_busypoll.py``): the poller on its own over a UDP socket
pair, and the endpoint's rule for when to poll, over real QUIC connections."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from _helpers import echo_stream, quic_pair

from midswarm.transport import MessageStream, QuicConfig, QuicConnection, serve_streams
from midswarm.transport._busypoll import BusyPoller, busy_poller, real_time


@contextmanager
def udp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Two non-blocking UDP sockets on loopback, each connected to the other."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        a.connect(b.getsockname())
        b.connect(a.getsockname())
        a.setblocking(False)
        b.setblocking(False)
        yield a, b
    finally:
        a.close()
        b.close()


def test_config_checks_busy_poll() -> None:
    assert QuicConfig().busy_poll > 0
    assert QuicConfig(busy_poll=0).busy_poll == 0
    with pytest.raises(ValueError):
        QuicConfig(busy_poll=-0.001)


async def test_poll_returns_a_datagram_sent_while_it_polls() -> None:
    poller = BusyPoller()
    poller.extend(real_time() + 5.0)
    with udp_pair() as (a, b):
        async with trio.open_nursery() as nursery:
            async def send_later() -> None:
                for _ in range(3):
                    await trio.lowlevel.checkpoint()
                a.send(b"hello")
            nursery.start_soon(send_later)
            got = await poller.poll(b)
    assert got is not None and got[0] == b"hello"
    assert not poller.polling


async def test_poll_gives_up_when_the_window_closes_and_lets_others_run() -> None:
    poller = BusyPoller()
    steps = 0

    async def count_steps() -> None:
        nonlocal steps
        while True:
            steps += 1
            await trio.lowlevel.checkpoint()

    with udp_pair() as (_a, b):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(count_steps)
            start = real_time()
            poller.extend(start + 0.02)
            assert await poller.poll(b) is None
            took = real_time() - start
            nursery.cancel_scope.cancel()
    assert 0.02 <= took < 5.0
    assert steps > 10  # the other task ran all along
    assert not poller.polling


async def test_only_one_receiver_polls_at_a_time() -> None:
    poller = BusyPoller()
    poller.extend(real_time() + 5.0)
    with udp_pair() as (a, b), udp_pair() as (_c, d):
        async with trio.open_nursery() as nursery:
            first: list[Any] = []

            async def first_poller() -> None:
                first.append(await poller.poll(b))

            nursery.start_soon(first_poller)
            for _ in range(3):
                await trio.lowlevel.checkpoint()
            assert poller.polling
            with trio.testing.assert_no_checkpoints():  # at once, without polling
                assert await poller.poll(d) is None
            a.send(b"x")
            sender = a.getsockname()
    assert first == [(b"x", sender)]
    assert not poller.polling


async def test_poll_is_cancellable_and_lets_go() -> None:
    poller = BusyPoller()
    poller.extend(real_time() + 60.0)
    with udp_pair() as (_a, b):
        with trio.move_on_after(0.05) as scope:
            await poller.poll(b)
    assert scope.cancelled_caught
    assert not poller.polling


async def test_a_socket_error_ends_the_poll() -> None:
    poller = BusyPoller()
    poller.extend(real_time() + 60.0)
    with udp_pair() as (a, b):
        b.close()  # a's datagrams to it now draw ICMP port-unreachable
        a.send(b"nobody")
        with trio.fail_after(5):  # long before the window closes
            assert await poller.poll(a) is None


async def test_each_run_has_its_own_poller() -> None:
    assert busy_poller() is busy_poller()
    other: list[BusyPoller] = []

    async def in_other_run() -> None:
        other.append(busy_poller())

    await trio.to_thread.run_sync(trio.run, in_other_run)
    assert other and other[0] is not busy_poller()


@contextmanager
def counting_polls() -> Iterator[dict[str, int]]:
    """Counts every :meth:`BusyPoller.poll` and those that returned a datagram."""
    counts = {"polls": 0, "hits": 0}
    original = BusyPoller.poll

    async def poll(self: BusyPoller, sock: socket.socket) -> Any:
        counts["polls"] += 1
        got = await original(self, sock)
        counts["hits"] += got is not None
        return got

    BusyPoller.poll = poll  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        BusyPoller.poll = original  # type: ignore[method-assign]


async def _echo_handler(conn: QuicConnection) -> None:
    await serve_streams(conn, echo_stream)


async def _round_trips(certs: Path, config: QuicConfig, n: int, pause: float,
                       counts: dict[str, int] | None = None) -> None:
    """``n`` round trips ``pause`` seconds apart; ``counts`` (from
    :func:`counting_polls`) is zeroed once the handshake's flights are over."""
    async with quic_pair(_echo_handler, certs, config) as (_, conn):
        box = MessageStream(await conn.open_stream())
        if counts is not None:
            await box.send_message(b"warm-up")
            assert await box.receive_message() == b"warm-up"
            # The run stays awake meanwhile: the handshake's last datagrams
            # (HANDSHAKE_DONE, tickets, connection IDs, their ACKs) are read now.
            await trio.sleep(0.05)
            counts.update(polls=0, hits=0)
        for i in range(n):
            msg = b"%d" % i * 40
            await box.send_message(msg)
            assert await box.receive_message() == msg
            if pause:
                time.sleep(pause)  # a gap on the real clock, which the rule reads


async def test_frequent_traffic_is_busy_polled(certs: Path) -> None:
    with counting_polls() as counts:
        await _round_trips(certs, QuicConfig(busy_poll=0.05), 200, 0)
    # Client and server share this run, so only one of them polls at a time
    # and the other's datagrams are caught by the run's awake loop.
    assert counts["hits"] >= 100


async def test_busy_poll_zero_never_polls(certs: Path) -> None:
    with counting_polls() as counts:
        await _round_trips(certs, QuicConfig(busy_poll=0), 50, 0)
    assert counts["polls"] == 0


async def test_rare_traffic_is_not_polled(certs: Path) -> None:
    # Requests 30 ms apart with a 1 ms window, counted after the handshake
    # (whose flights come close together, more or fewer of them batched as the
    # host's load goes): nothing comes within a window of the batch before it,
    # except, now and then, a delayed ACK.
    with counting_polls() as counts:
        await _round_trips(certs, QuicConfig(busy_poll=0.001), 15, 0.03, counts)
    assert counts["polls"] <= 5
