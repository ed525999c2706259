"""Opening QUIC connections: :func:`serve_quic` accepts them, :func:`connect_quic`
dials one; both on an :class:`~._endpoint._Endpoint` of their own.

The server routes by destination connection ID (see ``_endpoint.py``).  A
datagram for an unknown ID starts a connection only if it is a full-size
(>= 1200 byte) INITIAL packet of a version we speak; a long-header packet of
another version gets a Version Negotiation reply; all else is dropped.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import (
    PACKET_TYPE_INITIAL,
    QuicProtocolVersion,
    encode_quic_version_negotiation,
    pull_quic_header,
)

from .._util import open_service_nursery
from ._config import QuicConfig
from ._endpoint import _Endpoint
from ._errors import ConnectionClosed
from ._machine import Machine
from ._quic import QuicConnection
from ._tickets import SessionTicketStore, _ServerTickets
from ._tls import ClientTLS, ServerTLS
from ._udp import (
    MIN_DATAGRAM_SIZE,
    max_datagram_to,
    path_max_datagram_size,
    resolve_udp,
    tune_socket,
)

__all__ = ["serve_quic", "connect_quic", "QuicListener"]

log = logging.getLogger("midswarm.transport")

_CID_LENGTH = 8
_MIN_INITIAL_SIZE = 1200
_INTERNAL_ERROR = 0x3


@attrs.define(eq=False)
class QuicListener:
    """What ``await nursery.start(serve_quic, ...)`` returns."""

    host: str
    port: int
    #: Connections whose handshake completed and whose handler is running.
    connections: set[QuicConnection] = attrs.field(factory=set)
    _scope: trio.CancelScope | None = None

    def close(self) -> None:
        """Stop serving: every connection is closed and :func:`serve_quic` returns."""
        if self._scope is not None:
            self._scope.cancel()


#: Largest datagram used during a handshake (see _handshake_size).
_HANDSHAKE_DATAGRAM = 1452


def _handshake_size(path_size: int) -> int:
    # Initial datagrams are padded to the full datagram size and aioquic parses
    # padding a byte at a time (16 KB Initials cost ~0.5 ms each to receive),
    # while too small a size splits the server's certificate flight into more
    # packets.  The connection grows to its real size once the handshake is
    # confirmed (QuicConnection._grow_datagrams).
    return max(MIN_DATAGRAM_SIZE, min(_HANDSHAKE_DATAGRAM, path_size))


def _base_configuration(config: QuicConfig, *, is_client: bool,
                        handshake_size: int = MIN_DATAGRAM_SIZE) -> QuicConfiguration:
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[config.alpn],
        congestion_control_algorithm=config.congestion_control,
        connection_id_length=_CID_LENGTH,
        idle_timeout=config.idle_timeout,
        max_data=config.connection_receive_window,
        max_stream_data=config.stream_receive_window,
        max_datagram_size=handshake_size,
        initial_rtt=config.initial_rtt,
        # QUIC v1 only: aioquic also sets up QUIC v2's Initial keys for every
        # connection, which no midswarm peer uses; a v2-only peer is answered
        # with Version Negotiation.
        supported_versions=[QuicProtocolVersion.VERSION_1],
    )


async def serve_quic(
    handler: Callable[[QuicConnection], Awaitable[object]],
    port: int,
    host: str = "127.0.0.1",
    tls: ServerTLS | None = None,
    config: QuicConfig | None = None,
    *,
    task_status: trio.TaskStatus[QuicListener] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve QUIC on ``host:port`` (UDP); use as ``await nursery.start(serve_quic, ...)``.

    ``handler(conn)`` runs in its own task for each connection once its
    handshake completes (and, with ``tls.require_client_cert``, the client's
    certificate verified: ``conn.peer_identity`` is then the client's identity).
    When the handler returns, its connection is closed; when it raises, the
    connection is closed with an internal-error code and the exception is
    logged — other connections are not affected.  ``port=0`` picks a free port,
    readable as ``listener.port``.  Runs until cancelled or ``listener.close()``;
    then every connection is closed.

    ``nursery.start`` passes no keyword arguments: give ``host``, ``tls`` and
    ``config`` positionally, or wrap the call in :func:`functools.partial`.
    """
    if tls is None:
        raise TypeError("serve_quic needs tls=ServerTLS(cert, key, ...)")
    cfg = config if config is not None else QuicConfig()
    qconf = _base_configuration(cfg, is_client=False, handshake_size=_HANDSHAKE_DATAGRAM)
    qconf.load_cert_chain(tls.cert, tls.key)
    client_ca = tls.ca if tls.require_client_cert else None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
        tune_socket(sock)
        endpoint = _Endpoint(sock, connected=False, gso=cfg.gso, busy_poll=cfg.busy_poll)
        tickets = _ServerTickets()
        supported = list(qconf.supported_versions)

        async with trio.open_nursery() as nursery:
            listener = QuicListener(host, sock.getsockname()[1], scope=nursery.cancel_scope)

            async def run_handler(conn: QuicConnection) -> None:
                listener.connections.add(conn)
                try:
                    await handler(conn)
                except Exception as exc:
                    log.exception("QUIC connection handler failed for %r", conn)
                    conn.close(_INTERNAL_ERROR, f"handler failed: {type(exc).__name__}")
                else:
                    conn.close(0, "")
                finally:
                    listener.connections.discard(conn)

            def on_ready(conn: QuicConnection) -> None:
                for entry in conn._issued_tickets:
                    entry[1] = conn.peer_identity
                nursery.start_soon(run_handler, conn)

            def new_connection(data: bytes, addr: Any, dcid: bytes) -> QuicConnection:
                holder: list[Any] = []
                conn: QuicConnection  # made below; the callbacks run later

                def fetch(label: bytes) -> Any:
                    found = tickets.pop(label)
                    if found is None:
                        return None
                    ticket, identity = found
                    if client_ca is not None and identity is None:
                        return None  # no verified identity: insist on a certificate
                    conn._resumed_identity = identity
                    return ticket

                size = cfg.max_datagram_size or max_datagram_to(family, addr)
                conf = qconf
                if _handshake_size(size) != qconf.max_datagram_size:
                    conf = dataclasses.replace(qconf, max_datagram_size=_handshake_size(size))
                machine = Machine(
                    config=cfg,
                    request_client_cert=client_ca is not None,
                    configuration=conf,
                    original_destination_connection_id=dcid,
                    session_ticket_fetcher=fetch,
                    # A connection verified early (0-RTT on a resumed session)
                    # knows its identity when its new ticket is issued; a fresh
                    # one gets it filled in by on_ready after verification.
                    session_ticket_handler=lambda t: tickets.add(t, holder, conn.peer_identity),
                )
                conn = QuicConnection(endpoint, machine, cfg, addr, is_client=False,
                                      client_ca=client_ca, datagram_size=size)
                conn._issued_tickets = holder
                conn._on_ready = on_ready
                endpoint.route_add(dcid, conn)
                endpoint.route_add(machine.host_cid, conn)
                nursery.start_soon(conn._run_timer)
                return conn

            def on_datagram(data: bytes, addr: Any, now: float) -> QuicConnection | None:
                if not data:
                    return None
                if not data[0] & 0x80:  # short header: our fixed-length CID follows
                    conn = endpoint.routes.get(data[1:1 + _CID_LENGTH])
                    if conn is not None:
                        conn.datagram_received(data, addr, now)
                    return conn
                try:
                    header = pull_quic_header(Buffer(data=data), host_cid_length=_CID_LENGTH)
                except ValueError:
                    return None
                conn = endpoint.routes.get(header.destination_cid)
                if conn is None:
                    if len(data) < _MIN_INITIAL_SIZE:
                        return None
                    if header.version is not None and header.version not in supported:
                        endpoint.send_datagrams([(encode_quic_version_negotiation(
                            source_cid=header.destination_cid,
                            destination_cid=header.source_cid,
                            supported_versions=supported), addr)])
                        return None
                    if header.packet_type != PACKET_TYPE_INITIAL:
                        return None
                    conn = new_connection(data, addr, header.destination_cid)
                    if header.version == QuicProtocolVersion.VERSION_1:
                        conn.first_datagram_received(data, addr, now, header.packet_length)
                        return conn
                conn.datagram_received(data, addr, now)
                return conn

            nursery.start_soon(endpoint.run_receiver, on_datagram)
            nursery.start_soon(endpoint.run_flusher)
            task_status.started(listener)
    finally:
        sock.close()


@asynccontextmanager
async def connect_quic(
    host: str,
    port: int,
    *,
    tls: ClientTLS,
    config: QuicConfig | None = None,
    session_tickets: SessionTicketStore | None = None,
    wait_connected: bool = True,
) -> AsyncIterator[QuicConnection]:
    """Connect to a QUIC server: ``async with connect_quic(host, port, tls=...) as conn``.

    With a ``session_tickets`` store that holds a ticket for ``tls.server_name``,
    the connection resumes (``conn.session_resumed``) and may send 0-RTT data:
    with ``wait_connected=False`` the block is entered at once, and streams
    opened there carry early data — the ClientHello waits for the first write
    and leaves in its datagram (or two scheduling rounds later if nothing is
    written).  ``conn.early_data_accepted`` tells, after the handshake, whether
    the server took it; if not, aioquic resends it in 1-RTT.  Only idempotent
    requests belong in early data: it can be replayed.  A resumed connection
    offers only the key-share group the server chose before (kept in the
    store); if the server no longer takes it, that handshake fails and the
    store forgets the group, so the next connection offers every group.

    Raises :class:`ConnectionClosed` if the handshake fails (bad certificate,
    wrong server name, refused, no answer within ``config.idle_timeout``).
    Leaving the block closes the connection.
    """
    cfg = config if config is not None else QuicConfig()
    infos = await resolve_udp(host, port)
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        tune_socket(sock)
        sock.connect(addr)
        size = cfg.max_datagram_size or path_max_datagram_size(sock)
        qconf = _base_configuration(cfg, is_client=True, handshake_size=_handshake_size(size))
        qconf.server_name = tls.server_name
        qconf.load_verify_locations(cafile=tls.ca)
        if tls.cert is not None:
            qconf.load_cert_chain(tls.cert, tls.key)
        group: int | None = None
        on_ticket: Callable[[Any], None] | None = None
        if session_tickets is not None:
            store = session_tickets
            qconf.session_ticket = store.get(tls.server_name)
            if qconf.session_ticket is not None:
                group = store.key_share_group(tls.server_name)

            def on_ticket(ticket: Any) -> None:
                store.note_key_share_group(tls.server_name, machine.ms_key_share_group())
                store.add(ticket)

        machine = Machine(config=cfg, configuration=qconf, key_share_group=group,
                          session_ticket_handler=on_ticket)
        endpoint = _Endpoint(sock, connected=True, gso=cfg.gso, busy_poll=cfg.busy_poll)
        conn = QuicConnection(endpoint, machine, cfg, addr, is_client=True, datagram_size=size)

        def refused() -> None:
            if not conn.handshake_complete:
                conn._terminate(errno.ECONNREFUSED, "connection refused (ICMP)", by_peer=True)

        endpoint.on_refused = refused

        def on_datagram(data: bytes, _addr: Any, now: float) -> QuicConnection:
            conn.datagram_received(data, addr, now)
            return conn

        # The background tasks never raise, so anything leaving the nursery came
        # from the handshake or the caller's block: it leaves unwrapped.
        async with open_service_nursery() as nursery:
            nursery.start_soon(endpoint.run_receiver, on_datagram)
            nursery.start_soon(endpoint.run_flusher)
            nursery.start_soon(conn._run_timer)
            machine.connect(addr, now=trio.current_time())
            if wait_connected:
                conn._pump()
            else:
                # The caller's first request (0-RTT data on a resumed session)
                # is written right after this returns (the first open_stream
                # does not yield): the first flight waits for it, so both leave
                # in one datagram and the server reads them at once.  If
                # nothing is written within two scheduling rounds, it leaves.
                conn._first_flight = True
                conn._flush_soon(after_readers=True)
            try:
                if wait_connected:
                    with trio.move_on_after(cfg.handshake_timeout):
                        await conn.wait_handshake()
                    if not conn.handshake_complete:
                        conn.close(0, "handshake timed out")
                        raise ConnectionClosed(
                            f"no handshake with {host}:{port} within "
                            f"{cfg.handshake_timeout} s")
                yield conn
            finally:
                conn.close(0, "")
                nursery.cancel_scope.cancel()
                if group is not None and not conn.handshake_complete:
                    # Perhaps the server no longer takes the one group offered
                    # (aioquic has no HelloRetryRequest): offer all next time.
                    store.note_key_share_group(tls.server_name, None)
    finally:
        sock.close()

