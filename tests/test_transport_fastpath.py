"""The short-header fast path (``_fastpath.py``): taken in the steady state,
byte-compatible with aioquic's general code in both directions, and declined
whenever anything but STREAM and ACK frames is due."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
from _helpers import echo_handler, quic_pair
from aioquic import tls
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection as AioQuicConnection

from midswarm.transport import MessageStream, QuicConfig, _machine
from midswarm.transport._connect import _base_configuration
from midswarm.transport._endpoint import _Endpoint
from midswarm.transport._fastpath import fast_datagrams_to_send, fast_receive_datagram
from midswarm.transport._machine import _ACK_DELAY, Machine

ADDR = ("127.0.0.1", 4433)


# --- a connected pair of state machines, no sockets --------------------------------


def _exchange(a: Machine, b: Machine, now: float) -> None:
    for data, _ in a.datagrams_to_send(now):
        b.receive_datagram(data, ADDR, now)


def connected_pair(certs: Path, cfg: QuicConfig | None = None) -> tuple[Machine, Machine]:
    """A client and a server machine with a confirmed handshake."""
    cfg = QuicConfig() if cfg is None else cfg
    server_conf = _base_configuration(cfg, is_client=False, handshake_size=1452)
    server_conf.load_cert_chain(certs / "coordinator.pem", certs / "coordinator.key")
    client_conf = _base_configuration(cfg, is_client=True, handshake_size=1452)
    client_conf.server_name = "localhost"
    client_conf.load_verify_locations(cafile=str(certs / "ca.pem"))
    client = Machine(config=cfg, configuration=client_conf)
    client.connect(ADDR, now=0.0)
    first = client.datagrams_to_send(0.0)
    server = Machine(config=cfg, configuration=server_conf,
                     original_destination_connection_id=client._peer_cid.cid)
    for data, _ in first:
        server.receive_datagram(data, ADDR, 0.0)
    now = 0.0
    for _ in range(6):
        now += 0.001
        _exchange(server, client, now)
        _exchange(client, server, now)
    assert client._handshake_confirmed and server._handshake_confirmed
    for _ in range(2):  # the delayed ACKs of the last packets go out too
        now += _ACK_DELAY
        _exchange(server, client, now)
        _exchange(client, server, now)
    client._events.clear()
    server._events.clear()
    return client, server


@pytest.fixture
def machines(certs: Path) -> tuple[Machine, Machine]:
    return connected_pair(certs)


def _open_stream(client: Machine, server: Machine) -> int:
    """A client stream the server knows of."""
    sid = client.get_next_available_stream_id()
    client.send_stream_data(sid, b"open")
    _exchange(client, server, 1.0)
    return sid


def _stream_data(machine: Machine) -> list[bytes]:
    return [e.data for e in machine._events if isinstance(e, events.StreamDataReceived)]


def test_fast_packets_are_read_by_aioquics_general_code(
        machines: tuple[Machine, Machine]) -> None:
    client, server = machines
    sid = client.get_next_available_stream_id()
    client.send_stream_data(sid, b"first")
    _exchange(client, server, 1.0)
    server._events.clear()
    client.send_stream_data(sid, b"hello")
    client._spaces[tls.Epoch.ONE_RTT].ack_at = 1.0  # carry an ACK as well
    sent = fast_datagrams_to_send(client, 1.01)
    assert sent is not None and len(sent) == 1
    AioQuicConnection.receive_datagram(server, sent[0][0], ADDR, 1.01)
    assert _stream_data(server) == [b"hello"]


def test_general_packets_are_read_by_the_fast_path(
        machines: tuple[Machine, Machine]) -> None:
    client, server = machines
    sid = client.get_next_available_stream_id()
    client.send_stream_data(sid, b"one")
    _exchange(client, server, 1.0)
    server._events.clear()
    server.send_stream_data(sid, b"reply")
    datagrams = AioQuicConnection.datagrams_to_send(server, 1.01)
    assert len(datagrams) == 1
    assert fast_receive_datagram(client, datagrams[0][0], ADDR, 1.01)
    assert _stream_data(client) == [b"reply"]
    # The server's data is acknowledged by the client's next (fast) packet.
    client.send_stream_data(sid, b"two")
    client._spaces[tls.Epoch.ONE_RTT].ack_at = 1.02
    sent = fast_datagrams_to_send(client, 1.02)
    assert sent is not None
    in_flight = server._loss.bytes_in_flight
    assert fast_receive_datagram(server, sent[0][0], ADDR, 1.02)
    # The packet brought data, so its ACK waits until the reader had its turn.
    assert server.ms_deferred and server._loss.bytes_in_flight == in_flight
    server.ms_apply_acks()
    assert server._loss.bytes_in_flight < in_flight


def test_nothing_to_send_is_answered_without_a_packet(
        machines: tuple[Machine, Machine]) -> None:
    client, _ = machines
    assert fast_datagrams_to_send(client, 2.0) == []


@pytest.mark.parametrize("make_due", [
    lambda m, sid: m.send_ping(7),
    lambda m, sid: m.reset_stream(sid, 5),
    lambda m, sid: m.stop_stream(sid, 5),
    lambda m, sid: m.send_datagram_frame(b"x"),
    lambda m, sid: m.close(error_code=0, reason_phrase="bye"),
], ids=["ping", "reset", "stop-sending", "datagram", "close"])
def test_fast_path_declines_when_other_frames_are_due(
        machines: tuple[Machine, Machine], make_due: Any) -> None:
    client, server = machines
    sid = _open_stream(client, server)
    client.send_stream_data(sid, b"more")
    make_due(client, sid)
    assert fast_datagrams_to_send(client, 1.1) is None
    # ... and the general path sends it all.
    assert client.datagrams_to_send(1.1)


def test_fast_path_declines_data_that_needs_several_packets(
        machines: tuple[Machine, Machine]) -> None:
    client, server = machines
    sid = _open_stream(client, server)
    client.send_stream_data(sid, bytes(5000))
    assert fast_datagrams_to_send(client, 1.1) is None
    assert len(client.datagrams_to_send(1.1)) >= 4


def test_fast_path_declines_when_the_congestion_window_is_full(
        machines: tuple[Machine, Machine]) -> None:
    client, server = machines
    sid = _open_stream(client, server)
    cc = client._loss._cc
    cc.congestion_window = client._loss.bytes_in_flight + 100
    client.send_stream_data(sid, bytes(400))
    assert fast_datagrams_to_send(client, 1.1) is None
    cc.congestion_window += 10_000
    assert fast_datagrams_to_send(client, 1.1)


def test_fast_receive_declines_an_unknown_address(machines: tuple[Machine, Machine]) -> None:
    client, server = machines
    sid = _open_stream(client, server)
    client.send_stream_data(sid, b"moved")
    sent = client.datagrams_to_send(1.1)
    assert not fast_receive_datagram(server, sent[0][0], ("127.0.0.2", 9), 1.1)


def test_a_stream_per_request_takes_the_fast_path(
        certs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests on streams of their own, as a remote client makes them: the
    packet that opens a stream and the one after a stream finished are built
    by the fast path at both ends; finished streams are discarded at both
    ends; the server's MAX_STREAMS still goes (by the general path) when
    aioquic's batching rule says so, so the client opens streams far past
    the first limit."""
    client, server = connected_pair(certs, QuicConfig(max_concurrent_streams=8))
    general: Counter[str] = Counter()
    aioquic_send = AioQuicConnection.datagrams_to_send

    def counting(m: Machine, now: float) -> Any:
        general["client" if m._is_client else "server"] += 1
        return aioquic_send(m, now)

    def send(a: Machine, b: Machine, now: float) -> None:
        space = a.ms_space
        if space.ack_at is not None:
            space.ack_at = now  # data carries the pending ACK, as the driver has it
        for datagram, _ in a.datagrams_to_send(now):
            b.receive_datagram(datagram, ADDR, now)
        a.ms_record()  # what the driver does after the syscall ...
        a.ms_apply_acks()  # ... and after the reply left

    monkeypatch.setattr(AioQuicConnection, "datagrams_to_send", counting)
    requests = 40
    now = 1.0
    for i in range(requests):
        sid = client.get_next_available_stream_id()
        client.send_stream_data(sid, b"request %d" % i, end_stream=True)
        send(client, server, now)
        assert _stream_data(server) == [b"request %d" % i]
        server._events.clear()
        server.send_stream_data(sid, b"reply %d" % i, end_stream=True)
        send(server, client, now + 0.0002)
        assert _stream_data(client) == [b"reply %d" % i]
        client._events.clear()
        now += 0.001
    assert sid == 4 * (requests - 1)  # five times the server's first limit
    assert general["client"] == 0, general
    # MAX_STREAMS once every few requests (with a limit of 8, about every 4th).
    assert 0 < general["server"] <= requests // 3, general
    assert len(client._streams) <= 2 and len(server._streams) <= 2


# --- over real sockets ----------------------------------------------------------------


async def test_round_trips_take_the_fast_path_one_datagram_each_way(
        certs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request/reply exchange costs one datagram in each direction (the
    reply carries the ACK; no ACK-only packets bounce back and forth), and
    the fast path builds and reads them."""
    sent: Counter[str] = Counter()
    path: Counter[str] = Counter()
    send_datagrams = _Endpoint.send_datagrams

    def counting_send(self: _Endpoint, datagrams: list[tuple[bytes, Any]]) -> None:
        sent["client" if self._connected else "server"] += len(datagrams)
        send_datagrams(self, datagrams)

    def counting_fast_send(m: Machine, now: float) -> Any:
        result = fast_datagrams_to_send(m, now)
        path["send fast" if result is not None else "send general"] += 1
        return result

    def counting_fast_receive(m: Machine, data: bytes, addr: Any, now: float) -> bool:
        taken = fast_receive_datagram(m, data, addr, now)
        path["receive fast" if taken else "receive general"] += 1
        return taken

    rounds = 200
    with trio.fail_after(30):
        async with quic_pair(echo_handler, certs, QuicConfig()) as (_, conn):
            stream = MessageStream(await conn.open_stream())
            for _ in range(20):  # the handshake is confirmed, the stream known
                await stream.send_message(b"E" + bytes(400))
                await stream.receive_message()
            monkeypatch.setattr(_Endpoint, "send_datagrams", counting_send)
            monkeypatch.setattr(_machine, "fast_datagrams_to_send", counting_fast_send)
            monkeypatch.setattr(_machine, "fast_receive_datagram", counting_fast_receive)
            for _ in range(rounds):
                await stream.send_message(b"E" + bytes(400))
                assert len(await stream.receive_message()) == 401
            counts = dict(sent)
            monkeypatch.undo()
    # On a slow machine an ACK timer can fire before a reply is written and
    # add an ACK-only datagram now and then; ACKs answering ACKs would add one
    # (or more) to every round.
    assert rounds <= counts["client"] <= rounds * 3 // 2, counts
    assert rounds <= counts["server"] <= rounds * 3 // 2, counts
    assert path["send general"] <= rounds // 4 and path["receive general"] <= rounds // 4, path
    assert path["receive fast"] >= 2 * rounds, path


def test_steady_state_timer_matches_aioquics(machines: tuple[Machine, Machine]) -> None:
    client, server = machines
    for m in (client, server):  # the steady state ms_timer computes itself
        assert m._spaces[tls.Epoch.INITIAL].discarded and m._spaces[tls.Epoch.HANDSHAKE].discarded
    sid = client.get_next_available_stream_id()
    now = 1.0
    for i in range(20):
        now += 0.0003
        client.send_stream_data(sid, b"ping %d" % i)
        _exchange(client, server, now)
        if i % 3:  # sometimes answer, sometimes leave an ACK pending
            server.send_stream_data(sid, b"pong")
            _exchange(server, client, now)
        for m in (client, server):
            assert m.ms_timer() == m.get_timer()


def _recovery_state(m: Machine, base_window: int) -> tuple[Any, ...]:
    loss, space = m._loss, m._spaces[tls.Epoch.ONE_RTT]
    # The window is compared by its growth: the handshake's own packets differ
    # by a byte or two from one run to the next (signature lengths vary).
    return (loss._rtt_smoothed, loss._rtt_variance, loss._rtt_min, loss._rtt_latest,
            loss._cc.congestion_window - base_window, loss.bytes_in_flight, loss._pto_count,
            space.largest_acked_packet, list(space.sent_packets), space.loss_time,
            space.ack_eliciting_in_flight, list(space.ack_queue))


def test_fast_ack_handling_matches_aioquics(certs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same exchange — answers, pipelined writes, a lost packet — leaves
    loss recovery in the same state with and without the fast ACK handler."""
    def run() -> list[tuple[Any, ...]]:
        client, server = connected_pair(certs)
        sid = client.get_next_available_stream_id()
        states = []
        windows = client._loss._cc.congestion_window, server._loss._cc.congestion_window
        now = 1.0
        for i in range(30):
            now += 0.0004
            client.send_stream_data(sid, b"request %d" % i)
            if i % 4 == 0:
                client.send_stream_data(sid, b"and another")  # pipelined
                client.datagrams_to_send(now) if i == 8 else None  # lost on the way
            _exchange(client, server, now)
            if i % 3:
                server.send_stream_data(sid, b"reply %d" % i)
                server._spaces[tls.Epoch.ONE_RTT].ack_at = now
            _exchange(server, client, now + 0.0002)
            for m in (client, server):
                m.ms_apply_acks()  # as the driver does once woken readers ran
            states.append(_recovery_state(client, windows[0])
                          + _recovery_state(server, windows[1]))
        return states

    fast = run()
    monkeypatch.setattr(_machine, "parse_ack", lambda *args: None)
    general = run()
    assert len(fast) == len(general)
    for i, (a, b) in enumerate(zip(fast, general, strict=True)):
        assert a == b, f"step {i}"
