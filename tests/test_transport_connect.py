"""Connecting and serving: unreachable and silent servers, many clients, IPv6,
early writes without a ticket, address changes (NAT rebinding), argument checks."""

from __future__ import annotations

import functools
import socket
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from _helpers import client_tls, echo_handler, echo_roundtrip, quic_pair, quic_server, server_tls

from midswarm.transport import ConnectionClosed, QuicConfig, connect_quic, serve_quic


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connect_to_closed_port_raises_connection_closed(certs: Path) -> None:
    port = free_udp_port()
    config = QuicConfig(handshake_timeout=5)
    with trio.fail_after(10), pytest.raises(ConnectionClosed):
        async with connect_quic("127.0.0.1", port, tls=client_tls(certs),
                                config=config):
            pass


async def test_silent_server_raises_connection_closed_after_handshake_timeout(
        certs: Path) -> None:
    config = QuicConfig(handshake_timeout=0.3)
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as silent:
        await silent.bind(("127.0.0.1", 0))  # bound, never answers
        port = silent.getsockname()[1]
        with trio.fail_after(10), pytest.raises(ConnectionClosed, match="handshake"):
            async with connect_quic("127.0.0.1", port, tls=client_tls(certs),
                                    config=config):
                pass


async def test_many_clients_at_once(certs: Path) -> None:
    n_clients, n_streams = 30, 5
    results: dict[tuple[int, int], bytes] = {}
    with trio.fail_after(30):
        async with quic_server(echo_handler, certs) as listener:

            async def client(c: int) -> None:
                async with connect_quic("127.0.0.1", listener.port,
                                        tls=client_tls(certs)) as conn:
                    async with trio.open_nursery() as streams:
                        for s in range(n_streams):
                            async def one(s: int = s) -> None:
                                data = f"{c}:{s}".encode() * 500
                                results[c, s] = await echo_roundtrip(conn, data)
                            streams.start_soon(one)

            async with trio.open_nursery() as clients:
                for c in range(n_clients):
                    clients.start_soon(client, c)
    assert results == {(c, s): f"{c}:{s}".encode() * 500
                       for c in range(n_clients) for s in range(n_streams)}


async def test_ipv6_loopback(certs: Path) -> None:
    with trio.fail_after(10):
        async with quic_pair(echo_handler, certs, host="::1") as (_, conn):
            assert await echo_roundtrip(conn, b"six") == b"six"


async def test_connect_by_host_name(certs: Path) -> None:
    """A name (not a numeric address) is resolved by trio's resolver."""
    first = socket.getaddrinfo("localhost", 0, type=socket.SOCK_DGRAM)[0][4][0]
    with trio.fail_after(10):
        async with quic_server(echo_handler, certs, host=first) as listener:
            async with connect_quic("localhost", listener.port,
                                    tls=client_tls(certs)) as conn:
                assert await echo_roundtrip(conn, b"named") == b"named"
            with pytest.raises(OSError):
                async with connect_quic("no-such-host.invalid", listener.port,
                                        tls=client_tls(certs)):
                    pass


@pytest.mark.parametrize("congestion_control", ["reno", "cubic"])
async def test_congestion_controllers(certs: Path, congestion_control: str) -> None:
    config = QuicConfig(congestion_control=congestion_control)
    data = bytes(range(256)) * 8192  # 2 MiB
    with trio.fail_after(20):
        async with quic_pair(echo_handler, certs, config) as (_, conn):
            assert await echo_roundtrip(conn, data) == data


async def test_writes_before_handshake_without_ticket_arrive(certs: Path) -> None:
    """wait_connected=False with no ticket: nothing rides in 0-RTT, but data written
    before the handshake completes is sent once it does."""
    with trio.fail_after(10):
        async with quic_pair(echo_handler, certs, wait_connected=False) as (_, conn):
            assert not conn.handshake_complete
            assert await echo_roundtrip(conn, b"eager") == b"eager"
            assert conn.handshake_complete
            assert not conn.session_resumed and not conn.early_data_accepted


class RebindingRelay:
    """Forwards one client's datagrams to the server; after ``switch_after``
    client datagrams it sends from a fresh socket, as a NAT that rebinds would,
    and drops whatever the server still sends to the old address."""

    def __init__(self, server: tuple[str, int], switch_after: int) -> None:
        self.server = server
        self.switch_after = switch_after
        self.client: Any = None
        self.count = 0
        self.switched = trio.Event()
        self.stale = 0  # server datagrams sent to the old address after the switch

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        front = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        backs = [trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
                 for _ in range(2)]
        with front, backs[0], backs[1]:
            await front.bind(("127.0.0.1", 0))
            for back in backs:
                await back.bind(("127.0.0.1", 0))
            task_status.started(front.getsockname()[1])

            async def from_server(back: trio.socket.SocketType) -> None:
                while True:
                    data, _ = await back.recvfrom(65536)
                    if back is not backs[self.switched.is_set()]:
                        self.stale += 1  # the old binding is gone: drop
                    elif self.client is not None:
                        await front.sendto(data, self.client)

            async with trio.open_nursery() as nursery:
                for back in backs:
                    nursery.start_soon(from_server, back)
                while True:
                    data, self.client = await front.recvfrom(65536)
                    self.count += 1
                    back = backs[self.count > self.switch_after]
                    if self.count > self.switch_after:
                        self.switched.set()
                    await back.sendto(data, self.server)


async def test_connection_survives_client_address_change(certs: Path) -> None:
    with trio.fail_after(20):
        async with quic_server(echo_handler, certs) as listener, \
                trio.open_nursery() as nursery:
            relay = RebindingRelay(("127.0.0.1", listener.port), switch_after=20)
            port: int = await nursery.start(relay.run)
            async with connect_quic("127.0.0.1", port, tls=client_tls(certs)) as conn:
                for i in range(40):
                    data = b"before/after %d" % i
                    assert await echo_roundtrip(conn, data) == data
                assert relay.switched.is_set()
            nursery.cancel_scope.cancel()


# --- argument checks ---------------------------------------------------------------------


async def test_serve_quic_needs_tls() -> None:
    async with trio.open_nursery() as nursery:
        with pytest.raises(TypeError, match="tls"):
            await nursery.start(serve_quic, echo_handler, 0)


async def test_serve_quic_on_a_busy_port_raises_oserror(certs: Path) -> None:
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as taken:
        await taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        async with trio.open_nursery() as nursery:
            with pytest.raises(OSError):
                await nursery.start(functools.partial(
                    serve_quic, echo_handler, port, tls=server_tls(certs)))


@pytest.mark.parametrize("kwargs", [
    {"max_datagram_size": 1199},
    {"max_datagram_size": 70_000},
    {"stream_receive_window": 0},
    {"stream_send_watermark": -1},
    {"connection_receive_window": 0},
    {"max_concurrent_streams": 0},
    {"idle_timeout": 0},
    {"handshake_timeout": -1},
    {"keep_alive_interval": 0},
    {"congestion_control": "bbr"},
    {"initial_rtt": 0},
])
def test_quic_config_rejects_bad_values(kwargs: dict[str, Any]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        QuicConfig(**kwargs)


async def test_cancelling_connect_during_handshake_cleans_up(certs: Path) -> None:
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as silent:
        await silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        with trio.fail_after(10):
            with trio.move_on_after(0.2) as scope:
                async with connect_quic("127.0.0.1", port, tls=client_tls(certs)):
                    raise AssertionError("a silent server cannot complete a handshake")
            assert scope.cancelled_caught
            # Nothing of the connection is left running in this Trio run.
            await trio.testing.wait_all_tasks_blocked()
            root = trio.lowlevel.current_root_task()
            assert root is not None
            names = []

            def walk(task: trio.lowlevel.Task) -> None:
                names.append(task.name)
                for nursery in task.child_nurseries:
                    for child in nursery.child_tasks:
                        walk(child)
            walk(root)
            assert not [n for n in names if "midswarm" in n], names
