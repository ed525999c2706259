"""Resumption's ClientHello: a resumed client offers only the key-share group
the server chose before and only the ticket's cipher suite; a server that no
longer takes that group costs one failed connection, after which the client
offers every group again; the group survives the ticket file.

Real UDP sockets on loopback; the server's view of each ClientHello is read by
wrapping aioquic's ClientHello parser (the server runs in this process).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aioquic.tls
import msgpack
import pytest
import trio
import trio.testing
from _helpers import (
    client_tls,
    echo_handler,
    echo_roundtrip,
    quic_server,
    read_to_eof,
    resume_with_early_data,
)
from aioquic.tls import CipherSuite, ClientHello, Group

from midswarm.transport import ConnectionClosed, SessionTicketStore, connect_quic


@pytest.fixture
def hellos(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ClientHello]]:
    """Every ClientHello a server in this process parses, in order."""
    seen: list[ClientHello] = []
    pull = aioquic.tls.pull_client_hello

    def recording(buf: Any) -> ClientHello:
        hello = pull(buf)
        seen.append(hello)
        return hello

    monkeypatch.setattr(aioquic.tls, "pull_client_hello", recording)
    yield seen


def offered_groups(hello: ClientHello) -> list[int]:
    return [group for group, _ in hello.key_share or []]


async def earn_ticket(port: int, certs: Path, store: SessionTicketStore) -> None:
    async with connect_quic("127.0.0.1", port, tls=client_tls(certs),
                            session_tickets=store) as conn:
        assert await echo_roundtrip(conn, b"first") == b"first"
    assert store.get("localhost") is not None


async def test_resumed_client_offers_the_servers_group_and_suite_alone(
        certs: Path, hellos: list[ClientHello]) -> None:
    store = SessionTicketStore()
    with trio.fail_after(20):
        async with quic_server(echo_handler, certs) as listener:
            await earn_ticket(listener.port, certs, store)
            group = store.key_share_group("localhost")
            ticket = store.get("localhost")
            assert ticket is not None
            for _ in range(2):
                await resume_with_early_data(listener.port, certs, store, b"early")
    full, *resumed = hellos
    assert offered_groups(full) == [Group.SECP256R1, Group.X25519]
    assert len(full.cipher_suites) == 3
    assert group in offered_groups(full)
    assert len(resumed) == 2
    for hello in resumed:
        assert offered_groups(hello) == [group]
        assert hello.supported_groups == [group]
        assert hello.cipher_suites == [ticket.cipher_suite]
        assert hello.pre_shared_key is not None and hello.early_data
    assert store.key_share_group("localhost") == group


def _server_groups_only(monkeypatch: pytest.MonkeyPatch, groups: list[Group]) -> None:
    """Make every TLS server in this process take only ``groups``."""
    init = aioquic.tls.Context.__init__

    def limited(self: aioquic.tls.Context, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if not self._is_client:
            self._supported_groups = list(groups)

    monkeypatch.setattr(aioquic.tls.Context, "__init__", limited)


@pytest.mark.parametrize("early", [False, True])
async def test_server_refusing_the_remembered_group_costs_one_connection(
        certs: Path, hellos: list[ClientHello], monkeypatch: pytest.MonkeyPatch,
        early: bool) -> None:
    """aioquic has no HelloRetryRequest: a server that no longer takes the one
    group offered fails that handshake.  The client then forgets the group,
    and its next connections offer every group and resume again."""
    store = SessionTicketStore()
    with trio.fail_after(30):
        async with quic_server(echo_handler, certs) as listener:
            await earn_ticket(listener.port, certs, store)
            # As if the server had chosen P-384 last time and now refuses it.
            store.note_key_share_group("localhost", Group.SECP384R1)
            _server_groups_only(monkeypatch, [Group.SECP256R1, Group.X25519])
            with pytest.raises((ConnectionClosed, trio.BrokenResourceError)):
                async with connect_quic("127.0.0.1", listener.port, tls=client_tls(certs),
                                        session_tickets=store,
                                        wait_connected=not early) as conn:
                    stream = await conn.open_stream()
                    await stream.send_all(b"refused")
                    await stream.send_eof()
                    await read_to_eof(stream)
            assert store.key_share_group("localhost") is None
            assert offered_groups(hellos[-1]) == [Group.SECP384R1]
            # The refused attempt used up the ticket on the server: a full
            # handshake (offering both groups) earns a new one.
            async with connect_quic("127.0.0.1", listener.port, tls=client_tls(certs),
                                    session_tickets=store) as conn:
                assert await echo_roundtrip(conn, b"again") == b"again"
            assert offered_groups(hellos[-1]) == [Group.SECP256R1, Group.X25519]
            assert store.key_share_group("localhost") == Group.SECP256R1
            await resume_with_early_data(listener.port, certs, store, b"early")
    assert offered_groups(hellos[-1]) == [Group.SECP256R1]


async def test_the_group_remembered_is_the_one_the_server_chose(
        certs: Path, hellos: list[ClientHello], monkeypatch: pytest.MonkeyPatch) -> None:
    """Read from the ServerHello, not assumed to be the first one offered."""
    _server_groups_only(monkeypatch, [Group.X25519])
    store = SessionTicketStore()
    with trio.fail_after(20):
        async with quic_server(echo_handler, certs) as listener:
            await earn_ticket(listener.port, certs, store)
            assert offered_groups(hellos[-1]) == [Group.SECP256R1, Group.X25519]
            assert store.key_share_group("localhost") == Group.X25519
            await resume_with_early_data(listener.port, certs, store, b"early")
    assert offered_groups(hellos[-1]) == [Group.X25519]


async def test_resumption_without_a_known_group_offers_every_group(
        certs: Path, hellos: list[ClientHello]) -> None:
    """A ticket without a group (a file from before groups were kept) resumes
    with the full offer and learns the group."""
    store = SessionTicketStore()
    with trio.fail_after(20):
        async with quic_server(echo_handler, certs) as listener:
            await earn_ticket(listener.port, certs, store)
            store.note_key_share_group("localhost", None)
            await resume_with_early_data(listener.port, certs, store, b"early")
            assert offered_groups(hellos[-1]) == [Group.SECP256R1, Group.X25519]
            assert store.key_share_group("localhost") == Group.SECP256R1


async def test_ticket_file_keeps_the_group(certs: Path, tmp_path: Path,
                                           hellos: list[ClientHello]) -> None:
    path = tmp_path / "tickets.bin"
    with trio.fail_after(20):
        async with quic_server(echo_handler, certs) as listener:
            await earn_ticket(listener.port, certs, SessionTicketStore(path))
            second = SessionTicketStore(path)
            assert second.key_share_group("localhost") == Group.SECP256R1
            await resume_with_early_data(listener.port, certs, second, b"early")
    assert offered_groups(hellos[-1]) == [Group.SECP256R1]


def test_ticket_file_without_groups_still_loads(certs: Path, tmp_path: Path) -> None:
    """Files written before the group was kept hold nine fields per ticket."""
    path = tmp_path / "tickets.bin"
    store = SessionTicketStore(path)
    ticket = aioquic.tls.SessionTicket(
        age_add=1, cipher_suite=CipherSuite.AES_128_GCM_SHA256,
        not_valid_after=aioquic.tls.utcnow().replace(year=2100),
        not_valid_before=aioquic.tls.utcnow(), resumption_secret=b"s" * 32,
        server_name="localhost", ticket=b"t", max_early_data_size=None)
    store.note_key_share_group("localhost", Group.X25519)
    store.add(ticket)
    raw = msgpack.unpackb(path.read_bytes(), raw=False)
    assert raw["localhost"][9] == Group.X25519
    raw["localhost"] = raw["localhost"][:9]
    path.write_bytes(msgpack.packb(raw, use_bin_type=True))
    old = SessionTicketStore(path)
    assert old.get("localhost") == ticket
    assert old.key_share_group("localhost") is None


# --- when the first flight leaves ------------------------------------------------------


async def test_first_write_sends_the_first_flight_at_once(
        certs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that does not wait for its handshake holds its ClientHello for
    the first request and sends both as soon as that is written (not some
    scheduling rounds later); a second request written in the same round
    follows, and the server takes both as early data."""
    from midswarm.transport._endpoint import _Endpoint

    store = SessionTicketStore()
    with trio.fail_after(20):
        async with quic_server(echo_handler, certs) as listener:
            await earn_ticket(listener.port, certs, store)
            sent: list[int] = []
            send_datagrams = _Endpoint.send_datagrams

            def counting(self: _Endpoint, datagrams: list[tuple[bytes, Any]]) -> None:
                if self._connected:
                    sent.extend(len(d) for d, _ in datagrams)
                send_datagrams(self, datagrams)

            monkeypatch.setattr(_Endpoint, "send_datagrams", counting)
            async with connect_quic("127.0.0.1", listener.port, tls=client_tls(certs),
                                    session_tickets=store, wait_connected=False) as conn:
                first = await conn.open_stream()
                assert sent == []
                # send_all_nowait is not a checkpoint: no scheduling round
                # passes between the write and the check.
                assert first.send_all_nowait(b"one")
                assert len(sent) == 1  # the ClientHello with the request, already out
                second = await conn.open_stream()
                await second.send_all(b"two")
                for stream in (first, second):
                    await stream.send_eof()
                assert await read_to_eof(first) == b"one"
                assert await read_to_eof(second) == b"two"
                await conn.wait_handshake()
                assert conn.session_resumed and conn.early_data_accepted


async def test_client_that_writes_nothing_still_connects(certs: Path) -> None:
    store = SessionTicketStore()
    with trio.fail_after(20):
        async with quic_server(echo_handler, certs) as listener:
            await earn_ticket(listener.port, certs, store)
            async with connect_quic("127.0.0.1", listener.port, tls=client_tls(certs),
                                    session_tickets=store, wait_connected=False) as conn:
                await conn.wait_handshake()
                assert conn.session_resumed
                assert await echo_roundtrip(conn, b"late") == b"late"


async def test_first_flight_leaves_before_other_tasks_run(
        certs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From connect_quic to the first request's datagram, no scheduling round
    passes (a task started just before has not run); a second open_stream
    before any write is a full checkpoint as usual."""
    from midswarm.transport._endpoint import _Endpoint

    store = SessionTicketStore()
    ran: list[str] = []
    sent_before_canary: list[bool] = []
    with trio.fail_after(20):
        async with quic_server(echo_handler, certs) as listener:
            await earn_ticket(listener.port, certs, store)
            send_datagrams = _Endpoint.send_datagrams

            def noting(self: _Endpoint, datagrams: list[tuple[bytes, Any]]) -> None:
                if self._connected and not sent_before_canary:
                    sent_before_canary.append(not ran)
                send_datagrams(self, datagrams)

            monkeypatch.setattr(_Endpoint, "send_datagrams", noting)

            async def canary() -> None:
                ran.append("canary")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(canary)
                async with connect_quic("127.0.0.1", listener.port, tls=client_tls(certs),
                                        session_tickets=store, wait_connected=False) as conn:
                    task = trio.lowlevel.current_task()
                    rounds = task._schedule_points  # the counter trio.testing reads
                    stream = await conn.open_stream()
                    assert task._schedule_points == rounds
                    assert not ran
                    await stream.send_all(b"early")
                    assert sent_before_canary == [True]
                    await stream.send_eof()
                    assert await read_to_eof(stream) == b"early"
            ran.clear()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(canary)
                async with connect_quic("127.0.0.1", listener.port, tls=client_tls(certs),
                                        session_tickets=store, wait_connected=False) as conn:
                    await conn.open_stream()
                    assert not ran
                    with trio.testing.assert_checkpoints():  # no write yet: this one yields
                        await conn.open_stream()


async def test_server_sends_its_flight_before_reading_early_data(
        certs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ClientHello with a 0-RTT request in one datagram: the server's flight
    leaves before the request reaches the stream, the datagram counts once
    towards the anti-amplification limit, and the early request is answered."""
    from midswarm.transport import QuicConnection
    from midswarm.transport._endpoint import _Endpoint

    order: list[str] = []
    counted: list[tuple[int, int]] = []  # (datagram size, bytes counted) of a new connection
    send_datagrams = _Endpoint.send_datagrams
    on_stream_data = QuicConnection._on_stream_data
    run_receiver = _Endpoint.run_receiver

    def noting_send(self: _Endpoint, datagrams: list[tuple[bytes, Any]]) -> None:
        if not self._connected:
            order.append("send")
        send_datagrams(self, datagrams)

    def noting_data(self: QuicConnection, event: Any) -> None:
        if not self.is_client:
            order.append("data")
        on_stream_data(self, event)

    async def noting_receiver(self: _Endpoint, on_datagram: Any) -> None:
        def wrapped(data: bytes, addr: Any, now: float) -> Any:
            known = set(self.routes.values())
            conn = on_datagram(data, addr, now)
            if not self._connected and conn is not None and conn not in known:
                path = conn._machine._network_paths[0]
                assert not path.is_validated
                counted.append((len(data), path.bytes_received))
            return conn
        await run_receiver(self, wrapped)

    monkeypatch.setattr(_Endpoint, "send_datagrams", noting_send)
    monkeypatch.setattr(QuicConnection, "_on_stream_data", noting_data)
    monkeypatch.setattr(_Endpoint, "run_receiver", noting_receiver)
    store = SessionTicketStore()
    with trio.fail_after(20):
        async with quic_server(echo_handler, certs) as listener:
            await earn_ticket(listener.port, certs, store)
            order.clear()
            counted.clear()
            await resume_with_early_data(listener.port, certs, store, b"early")
    assert order[:2] == ["send", "data"], order
    assert len(counted) == 1 and counted[0][0] == counted[0][1], counted
