"""ACKs held back by the fast receive path (``Machine.ms_deferred``): an ACK
that arrives in a packet with news for a reader is handled after the reader's
reply went out, and never later than anything that needs it."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import trio
from _helpers import quic_pair
from aioquic.quic import events
from test_transport_fastpath import ADDR, connected_pair
from test_transport_lossy import through_relay

from midswarm.transport import QuicConfig, QuicConnection
from midswarm.transport._machine import _DEFERRED_ACKS, Machine


@pytest.fixture
def machines(certs: Path) -> tuple[Machine, Machine]:
    return connected_pair(certs)


def _send(a: Machine, b: Machine, sid: int, data: bytes, now: float) -> None:
    """``a`` writes ``data`` (with its pending ACK) and ``b`` reads the packet."""
    if data:
        a.send_stream_data(sid, data)
    space = a.ms_space
    if space.ack_at is not None:
        space.ack_at = now  # what the driver does for a write
    for datagram, _ in a.datagrams_to_send(now):
        b.receive_datagram(datagram, ADDR, now)
    a.ms_record()  # as the driver does once the datagrams left


def _request_reply(client: Machine, server: Machine, now: float = 1.0) -> int:
    """One exchange at ``now``; the server's reply carries data and an ACK of
    the request."""
    sid = client.get_next_available_stream_id()
    _send(client, server, sid, b"request", now)
    server._events.clear()
    in_flight = client._loss.bytes_in_flight
    assert in_flight > 0
    _send(server, client, sid, b"reply", now + 0.001)
    return in_flight


def test_an_ack_with_data_waits_and_an_ack_alone_does_not(
        machines: tuple[Machine, Machine]) -> None:
    client, server = machines
    in_flight = _request_reply(client, server)
    assert any(isinstance(e, events.StreamDataReceived) for e in client._events)
    # Held: the request is still counted in flight until the ACK is handled.
    assert len(client.ms_deferred) == 1
    assert client._loss.bytes_in_flight == in_flight
    client.ms_apply_acks()
    assert client.ms_deferred == [] and client._loss.bytes_in_flight == 0
    # The client's next packet acknowledges the reply with no data of its own:
    # nobody to go first, so the server handles that ACK at once.
    client._events.clear()
    sid = 0
    _send(client, server, sid, b"", 1.03)
    assert server.ms_deferred == [] and server._loss.bytes_in_flight == 0


def test_held_acks_are_handled_before_aioquics_own_code_runs(
        machines: tuple[Machine, Machine]) -> None:
    client, server = machines
    _request_reply(client, server)
    assert client.ms_deferred
    assert client.get_timer() is not None
    assert client.ms_deferred == []  # the timer is computed on settled state

    _request_reply(client, server, 1.1)
    assert client.ms_deferred
    client.send_ping(1)  # a PING: the fast path declines, aioquic builds it
    assert client.datagrams_to_send(1.11)
    assert client.ms_deferred == []

    _request_reply(client, server, 1.2)
    assert client.ms_deferred
    client.handle_timer(1.25)
    assert client.ms_deferred == []


def test_a_peer_that_never_hears_back_gets_its_acks_handled_in_batches(
        machines: tuple[Machine, Machine]) -> None:
    client, server = machines
    sid = client.get_next_available_stream_id()
    _send(client, server, sid, b"hello", 1.0)
    now = 1.0
    for i in range(3 * _DEFERRED_ACKS):
        now += 0.0005
        # The server's packets each carry data and an ACK; the client answers
        # with data too (so there is always something to acknowledge) but
        # never runs its own send path's settling.
        _send(server, client, sid, b"s%d" % i, now)
        _send(client, server, sid, b"c%d" % i, now)
        assert len(client.ms_deferred) <= _DEFERRED_ACKS
        assert len(server.ms_deferred) <= _DEFERRED_ACKS


#: One datagram carries a whole request, which fills the send watermark.
WATERMARK_BOUND = QuicConfig(stream_send_watermark=4096, stream_receive_window=256 * 1024,
                             max_datagram_size=8192)
REQUEST = b"q" * 4096


async def answer_each_request(conn: QuicConnection) -> None:
    """Server: answer every whole REQUEST read from the first stream with b"ok"."""
    stream = await conn.accept_stream()
    pending = 0
    while data := await stream.receive_some():
        pending += len(data)
        while pending >= len(REQUEST):
            pending -= len(REQUEST)
            await stream.send_all(b"ok")


async def request_and_wait(conn: QuicConnection, rounds: int) -> None:
    stream = await conn.open_stream()
    for _ in range(rounds):
        await stream.send_all(REQUEST)
        assert await stream.receive_some() == b"ok"


async def test_writers_waiting_for_room_get_it_from_acks_in_data_packets(
        certs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests the size of the send watermark, each answered by a short reply:
    a request's ACK rides the reply and is held back, and the next request's
    writer, finding no room, must get it from that ACK at once -- not from
    a timer milliseconds later."""
    timer_settled = [0]
    original = Machine.get_timer

    def get_timer(self: Machine) -> float | None:
        if self.ms_deferred:
            timer_settled[0] += 1
        return original(self)

    monkeypatch.setattr(Machine, "get_timer", get_timer)
    with trio.fail_after(60):
        async with quic_pair(answer_each_request, certs, WATERMARK_BOUND) as (_, conn):
            await request_and_wait(conn, 20)
    assert timer_settled[0] == 0


@pytest.mark.parametrize("seed", [5, 6])
async def test_watermark_bound_exchanges_survive_loss(certs: Path, seed: int) -> None:
    """The same exchange through a relay that drops one datagram in ten, with
    no keep-alive: held-back ACKs that reveal a loss (settled by a writer
    short of room, or after a send) lead to its repair, and every exchange
    completes well within the idle timeout."""
    config = attrs.evolve(WATERMARK_BOUND, keep_alive_interval=None, idle_timeout=5.0)
    with trio.fail_after(60):
        async with through_relay(certs, answer_each_request, config, seed, drop=0.1,
                                 duplicate=0.0, reorder=0.0) as (_, relay, conn):
            await request_and_wait(conn, 60)
    assert relay.dropped > 0


def test_a_fast_packet_is_recorded_once_sent_and_before_anything_else(
        machines: tuple[Machine, Machine]) -> None:
    """The fast path's packet joins loss recovery after the send (the driver
    records it right after the syscall); any other entry records it first."""
    client, server = machines
    sid = client.get_next_available_stream_id()
    _send(client, server, sid, b"open", 0.9)  # a new stream's first packet goes the general way
    _send(server, client, sid, b"", 0.95)  # and is acknowledged
    client.ms_apply_acks()
    sent_before = len(client.ms_space.sent_packets)
    in_flight = client._loss.bytes_in_flight

    def fast_send(data: bytes, now: float) -> list[tuple[bytes, object]]:
        client.send_stream_data(sid, data)
        datagrams = client.datagrams_to_send(now)
        assert client.ms_unrecorded is not None  # built, not yet recorded
        assert len(client.ms_space.sent_packets) == sent_before
        return datagrams

    fast_send(b"one", 1.0)
    client.ms_record()  # what the driver does after the syscall
    assert client.ms_unrecorded is None
    assert len(client.ms_space.sent_packets) == sent_before + 1
    assert client._loss.bytes_in_flight > in_flight

    entries = (lambda: client.get_timer(), lambda: client.send_stream_data(sid, b"more"),
               lambda: client.receive_datagram(b"\x40" + bytes(40), ADDR, 1.2))
    for i, entry in enumerate(entries):
        sent_before = len(client.ms_space.sent_packets)
        fast_send(b"two", 1.1 + i / 100)
        entry()
        assert client.ms_unrecorded is None
        assert len(client.ms_space.sent_packets) == sent_before + 1
