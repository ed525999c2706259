"""QUIC connections: aioquic's sans-I/O state machine driven by Trio.

:class:`QuicConnection` is the application's side: streams, accept, close,
the peer's identity, and the events aioquic reports turned into wake-ups of
the tasks waiting on streams.  How the state machine is fed and when packets
leave — the pump and the timer task — is :class:`ConnectionDriver`, its base
class in ``_driver.py`` (theory of operation there).  aioquic's machine, with
our stream limits, windows and fast path, is in ``_machine.py``; streams are
in ``_stream.py``.

Flow control: aioquic grows a stream's receive window as data *arrives*, which
would let a fast peer fill our memory while the reader is slow.  Our subclass
(``Machine``) grows it only as the application *consumes* data, so each stream
buffers at most ``QuicConfig.stream_receive_window`` bytes.  aioquic's
send buffer is unbounded; :meth:`QuicStream.send_all` waits while more than
``QuicConfig.stream_send_watermark`` bytes are unacknowledged.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio
from aioquic.quic import events

from ._config import QuicConfig
from ._driver import ConnectionDriver
from ._errors import ConnectionClosed
from ._stream import QuicStream
from ._tls import CertificateError, certificate_identity, verify_client_certificate

if TYPE_CHECKING:
    from ._endpoint import _Endpoint
    from ._machine import Machine

__all__ = ["QuicConnection", "QuicStream"]

#: Error code for CONNECTION_CLOSE when client authentication fails.
_AUTH_FAILED = 0x2

_NO_ERROR = 0


class QuicConnection(ConnectionDriver):
    """One QUIC connection.  Made by :func:`serve_quic` (given to the handler)
    and :func:`connect_quic`; not constructed directly."""

    def __init__(self, endpoint: _Endpoint, machine: Machine, config: QuicConfig,
                 addr: Any, *, is_client: bool, client_ca: str | None = None,
                 datagram_size: int | None = None) -> None:
        self._endpoint = endpoint
        self._machine = machine
        self.config = config
        self.remote_address = addr
        #: Datagram size once the handshake is done (it runs at the minimum).
        self._datagram_size = datagram_size
        self.is_client = is_client
        self._client_ca = client_ca
        self._streams: dict[int, QuicStream] = {}
        self._accept_queue: deque[QuicStream] = deque()
        self._accept_lot = trio.lowlevel.ParkingLot()
        self._send_waiters: set[QuicStream] = set()
        self._handshake_done = trio.Event()
        self._terminated = False
        self._close_code: int | None = None
        self._close_reason = ""
        self._timer_scope: trio.CancelScope | None = None
        self._deadline = math.inf
        self._armed = math.inf  # the deadline of the timer task's cancel scope
        self._last_send = trio.current_time()
        self._ping_uid = 0
        self._flush_pending = False  # the timer task will flush held writes
        self._flush_late = False  # ... after one more scheduling round
        self._dirty = False  # a write is waiting for that flush
        self._send_by = math.inf  # queued frames leave by then at the latest (_send_within)
        self._first_flight = False  # held until the first write (see connect_quic)
        self._early_read = False  # see first_datagram_received
        self.peer_identity: str | None = None
        self.session_resumed = False
        self.early_data_accepted = False
        self.alpn_protocol: str | None = None
        #: Called on the server when the handshake completes and the peer was
        #: verified; set by the endpoint.
        self._on_ready: Callable[[QuicConnection], None] | None = None
        self._resumed_identity: str | None = None
        # Server: entries of the tickets this connection earned, filled with the
        # identity once verified (see _ServerTickets).
        self._issued_tickets: list[Any] = []
        self.terminated = trio.Event()
        self._termination_scopes: set[trio.CancelScope] = set()
        # Ids of peer-opened streams we closed while aioquic still tracks them, so
        # late frames are not mistaken for a new stream; swept as aioquic forgets.
        self._closed_peer_ids: set[int] = set()
        self._sweep_at = 64

    def __repr__(self) -> str:
        side = "client" if self.is_client else "server"
        return f"<QuicConnection {side} {self.remote_address} id={self.peer_identity!r}>"

    # --- public API ---------------------------------------------------------------

    @property
    def handshake_complete(self) -> bool:
        return self._handshake_done.is_set()

    @property
    def closed(self) -> bool:
        return self._terminated

    @property
    def close_reason(self) -> tuple[int | None, str]:
        """``(error_code, reason)`` of the CONNECTION_CLOSE, once closed."""
        return self._close_code, self._close_reason

    async def wait_handshake(self) -> None:
        """Wait for the TLS handshake (and, on a server, client verification).

        Raises :class:`ConnectionClosed` if the connection closes first."""
        with trio.CancelScope() as scope:
            if not self._terminated:
                self._termination_scopes.add(scope)
                try:
                    await self._handshake_done.wait()
                finally:
                    self._termination_scopes.discard(scope)
        if not self._handshake_done.is_set():
            raise self._closed_error()


    async def open_stream(self) -> QuicStream:
        """Open a new bidirectional stream.

        Never blocks: if the peer's stream limit is reached, data written to the
        new stream waits (inside ``send_all``'s watermark) until the peer allows
        another stream.  The peer's :meth:`accept_stream` sees the stream when
        the first bytes (or FIN) arrive.  Raises :class:`ConnectionClosed`.
        A checkpoint; the first stream of a client whose ClientHello waits for
        the first write (``connect_quic(wait_connected=False)``) is opened
        without a scheduling round (cancellation is still checked).
        """
        if self._first_flight and not self._streams:
            # The 0-RTT request written next sends the held first flight: a
            # round here would run the connection's three new tasks first
            # (~50 us on the resumed path, measured).  Once only, so a loop
            # of opens still yields.
            await trio.lowlevel.checkpoint_if_cancelled()
        else:
            await trio.lowlevel.checkpoint()
        if self._terminated:
            raise self._closed_error()
        sid = self._machine.get_next_available_stream_id()
        # Reserve the id now: aioquic only creates the stream on first send.
        self._machine._get_or_create_stream_for_send(sid)
        stream = QuicStream(self, sid)
        self._streams[sid] = stream
        return stream

    async def accept_stream(self) -> QuicStream:
        """Wait for the next stream the peer opens.  Raises :class:`ConnectionClosed`
        once the connection is closed and no accepted stream is pending."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._accept_queue:
            if self._terminated:
                raise self._closed_error()
            await self._accept_lot.park()
        stream = self._accept_queue.popleft()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return stream

    def accept_stream_nowait(self) -> QuicStream:
        """Return a stream the peer opened if one is waiting, else raise
        :class:`trio.WouldBlock`.  Lets a server drain a burst of new streams
        in one scheduling round (``accept_stream`` yields once per stream)."""
        if self._accept_queue:
            return self._accept_queue.popleft()
        if self._terminated:
            raise self._closed_error()
        raise trio.WouldBlock

    def close(self, error_code: int = _NO_ERROR, reason: str = "") -> None:
        """Send CONNECTION_CLOSE now, fail every stream, and stop the connection."""
        if self._terminated:
            return
        self._machine.close(error_code=error_code, reason_phrase=reason)
        self._pump()
        self._terminate(error_code, reason, by_peer=False)

    async def aclose(self, error_code: int = _NO_ERROR, reason: str = "") -> None:
        self.close(error_code, reason)
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> QuicConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- stream bookkeeping --------------------------------------------------------

    def _consumed(self, stream_id: int, n: int, *, now: bool = True) -> None:
        """The application read ``n`` bytes of a stream: grant the window
        back when due -- at once, or (``now=False``, when called from inside
        the receive processing) with the next scheduling round's flush."""
        machine = self._machine
        consumed = machine.ms_consumed
        consumed[stream_id] = consumed.get(stream_id, 0) + n
        if machine.window_update_due(stream_id):
            if now:
                self._pump()
            else:
                self._flush_soon()

    def _forget(self, stream: QuicStream) -> None:
        sid = stream.stream_id
        self._streams.pop(sid, None)
        self._machine.ms_consumed.pop(sid, None)
        self._send_waiters.discard(stream)
        if (sid & 1) == (1 if self.is_client else 0):
            closed = self._closed_peer_ids
            closed.add(sid)
            if len(closed) > self._sweep_at:
                alive = self._machine._streams
                closed.intersection_update(alive)
                self._sweep_at = max(64, 2 * len(closed))

    def _closed_error(self) -> ConnectionClosed:
        return ConnectionClosed(self._close_reason, self._close_code or 0)

    def _broken_error(self) -> trio.BrokenResourceError | None:
        if not self._terminated:
            return None
        exc = trio.BrokenResourceError(
            f"connection closed (code {self._close_code}): {self._close_reason}")
        exc.error_code = self._close_code  # type: ignore[attr-defined]
        return exc

    @property
    def max_datagram_size(self) -> int:
        """The largest datagram this connection sends now."""
        return int(self._machine._max_datagram_size)

    def _process_events(self) -> None:
        machine = self._machine
        pending = machine._events  # next_event() raises and catches when it is empty
        while pending:
            event = pending.popleft()
            kind = type(event)
            if kind is events.StreamDataReceived:
                self._on_stream_data(event)  # type: ignore[arg-type]
            elif kind is events.StreamReset:
                stream = self._stream_for(event.stream_id)  # type: ignore[attr-defined]
                if stream is not None:
                    stream._reset_code = event.error_code  # type: ignore[attr-defined]
                    stream._readable()
            elif kind is events.StopSendingReceived:
                sid = event.stream_id  # type: ignore[attr-defined]
                stream = self._stream_for(sid)
                if stream is not None:
                    stream._stop_code = event.error_code  # type: ignore[attr-defined]
                    stream._send_lot.unpark_all()
                try:
                    machine.reset_stream(sid, event.error_code)  # type: ignore[attr-defined]
                except ValueError:
                    pass
            elif kind is events.HandshakeCompleted:
                self._on_handshake(event)  # type: ignore[arg-type]
            elif kind is events.ConnectionTerminated:
                self._terminate(event.error_code,  # type: ignore[attr-defined]
                                event.reason_phrase, by_peer=True)  # type: ignore[attr-defined]
                return
            elif kind is events.ConnectionIdIssued:
                self._endpoint.route_add(event.connection_id, self)  # type: ignore[attr-defined]
            elif kind is events.ConnectionIdRetired:
                self._endpoint.route_remove(event.connection_id)  # type: ignore[attr-defined]

    def _stream_for(self, stream_id: int) -> QuicStream | None:
        stream = self._streams.get(stream_id)
        if stream is None and (stream_id & 1) == (0 if not self.is_client else 1):
            # Peer-initiated (client streams are even, server streams odd).
            if stream_id in self._closed_peer_ids:
                return None  # closed by us already
            stream = QuicStream(self, stream_id)
            self._streams[stream_id] = stream
            self._accept_queue.append(stream)
            self._accept_lot.unpark()
        return stream

    def _on_stream_data(self, event: events.StreamDataReceived) -> None:
        stream = self._stream_for(event.stream_id)
        if stream is None or stream._closed:
            return
        if event.data:
            stream._rbuf += event.data
        if event.end_stream:
            stream._eof = True
        stream._readable()

    def _on_handshake(self, event: events.HandshakeCompleted) -> None:
        self.session_resumed = event.session_resumed
        self.early_data_accepted = event.early_data_accepted
        self.alpn_protocol = event.alpn_protocol
        tls = self._machine.tls
        if self.is_client:
            cert = tls._peer_certificate
            self.peer_identity = certificate_identity(cert) if cert is not None else None
        elif self._client_ca is not None:
            if self.session_resumed:
                # Resumption skips certificates; the ticket carried the identity
                # verified on the connection that earned it.
                self.peer_identity = self._resumed_identity
                if self.peer_identity is None:
                    self.close(_AUTH_FAILED, "resumed session carries no verified identity")
                    return
            else:
                try:
                    self.peer_identity = verify_client_certificate(
                        tls._peer_certificate, tls._peer_certificate_chain, self._client_ca)
                except CertificateError as exc:
                    self.close(_AUTH_FAILED, str(exc))
                    return
        elif tls._peer_certificate is not None:
            self.peer_identity = certificate_identity(tls._peer_certificate)
        self._handshake_done.set()
        self._ready()

    def _ready(self) -> None:
        on_ready, self._on_ready = self._on_ready, None
        if on_ready is not None:
            on_ready(self)

    def _check_early_ready(self) -> None:
        """Server: a resumed client whose early data we accepted is known (the
        ticket carries its identity), so start its handler now and let it answer
        0-RTT requests before the client's Finished arrives."""
        tls = getattr(self._machine, "tls", None)
        if tls is None or not (tls.session_resumed and tls.early_data_accepted):
            return
        if self._client_ca is not None:
            if self._resumed_identity is None:
                return  # the handshake check will refuse it
            self.peer_identity = self._resumed_identity
        self.session_resumed = True
        self.early_data_accepted = True
        self._ready()

    def _terminate(self, error_code: int, reason: str, *, by_peer: bool) -> None:
        if self._terminated:
            return
        self._terminated = True
        self._close_code = error_code
        self._close_reason = reason
        for stream in list(self._streams.values()):
            stream._wake()
        self._accept_lot.unpark_all()
        for scope in self._termination_scopes:
            scope.cancel()
        if self._timer_scope is not None:
            self._timer_scope.cancel()
        self._endpoint.connection_terminated(self)
        self.terminated.set()
