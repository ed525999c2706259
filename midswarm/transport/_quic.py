"""QUIC connections and streams: aioquic's sans-I/O state machine driven by Trio.

Theory of operation
-------------------
aioquic's :class:`~aioquic.quic.connection.QuicConnection` is a pure state
machine.  Three things feed it: datagrams from the network, calls from the
application (stream writes, resets, close) and its timer.  After each of them
we do the same two steps, :meth:`QuicConnection._pump`:

1. drain ``next_event()`` into our stream objects (data, resets, handshake
   completion, termination) and wake whoever waits on them;
2. hand ``datagrams_to_send(now)`` to the endpoint, which writes them to the
   socket without blocking, then read ``get_timer()`` and move the timer
   task's cancel-scope deadline there.

Everything runs in the Trio thread, and steps 1-2 never await, so the state
machine is never seen half-updated and needs no lock.  The one task per
connection (:meth:`QuicConnection._run_timer`) sleeps until that deadline (or the
keep-alive instant) and then calls ``handle_timer`` — there are no polling
sleeps.  One clock: ``trio.current_time()``.

Flow control: aioquic grows a stream's receive window as data *arrives*, which
would let a fast peer fill our memory while the reader is slow.  Our subclass
(:class:`_Machine`) grows it only as the application *consumes* data, so each
stream buffers at most ``QuicConfig.stream_receive_window`` bytes.  aioquic's
send buffer is unbounded; :meth:`QuicStream.send_all` waits while more than
``QuicConfig.stream_send_watermark`` bytes are unacknowledged.
"""

from __future__ import annotations

import math
import operator
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio
from aioquic import tls
from aioquic.quic import events
from aioquic.quic.connection import (
    MAX_STREAM_DATA_FRAME_CAPACITY,
    QuicFrameType,
)
from aioquic.quic.connection import (
    QuicConnection as _AioQuicConnection,
)
from aioquic.quic.recovery import QuicPacketPacer
from aioquic.quic.stream import QuicStream as _AioStream
from aioquic.tls import State as TlsState

from ._config import QuicConfig
from ._errors import ConnectionClosed
from ._tls import CertificateError, certificate_identity, verify_client_certificate
from ._udp import max_datagram_to

if TYPE_CHECKING:
    from ._endpoint import _Endpoint

__all__ = ["QuicConnection", "QuicStream", "APPLICATION_ERROR_CLOSED"]

#: Application error code for a stream reset because its owner closed it early.
APPLICATION_ERROR_CLOSED = 0x1
#: Error code for CONNECTION_CLOSE when client authentication fails.
_AUTH_FAILED = 0x2

_NO_ERROR = 0


#: Writes closer together than this are treated as a burst and coalesced.
_BURST_GAP = 50e-6

#: Timers wake at best with millisecond precision (epoll); see _GranularPacer.
_TIMER_GRANULARITY = 0.002


class _GranularPacer(QuicPacketPacer):
    """aioquic's token-bucket pacer, with bursts sized to the timer precision.

    aioquic caps a burst at 16 packets.  Our timer task cannot wake sooner than
    about a millisecond after it asked to (epoll counts whole milliseconds), so
    with that cap a paced sender can never exceed 16 packets per millisecond —
    23 MB/s at 1452-byte datagrams — however large its congestion window.  Let
    the bucket hold as much as the pacing rate sends in two timer periods.
    """

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        super().update_rate(congestion_window, smoothed_rtt)
        if self.packet_time is not None:
            rate = congestion_window / max(smoothed_rtt, 1e-6)
            burst = min(_TIMER_GRANULARITY, congestion_window / 2 / rate)
            if burst > self.bucket_max:
                self.bucket_max = burst


def _sid(stream: _AioStream) -> int:
    # aioquic types stream_id as optional (crypto streams have none); ours all do.
    return stream.stream_id  # type: ignore[return-value]


class _Machine(_AioQuicConnection):
    """aioquic's state machine with our stream limits and receive windows."""

    def __init__(self, *, config: QuicConfig, request_client_cert: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # aioquic hard-codes 128; it replenishes one per finished stream, so this
        # is the number of peer-opened streams open at once.
        for limit in (self._local_max_streams_bidi, self._local_max_streams_uni):
            # ``sent`` too: the initial value travels in the transport parameters,
            # and aioquic only announces increases over what it thinks it sent.
            limit.value = limit.sent = config.max_concurrent_streams
        self._ms_window = config.stream_receive_window
        self._ms_request_client_cert = request_client_cert
        self._loss._pacer = _GranularPacer(max_datagram_size=self._max_datagram_size)
        # stream id -> bytes the application has read
        self.ms_consumed: dict[int, int] = {}
        # streams that may need a frame, in service order (see _write_application)
        self.ms_active: dict[int, _AioStream] = {}
        self.ms_closing: dict[int, _AioStream] = {}
        self.ms_received = False  # a datagram arrived since closing streams were checked
        self._ms_rescan = False
        self._ms_lost_packets = self._loss._on_packets_lost
        self._loss._on_packets_lost = self._ms_on_packets_lost  # type: ignore[method-assign]

    # --- serving only the streams that need it --------------------------------------
    #
    # aioquic's _write_application visits every open stream for every packet it
    # builds (once for flow-control limits, once for data), which makes each
    # packet cost O(open streams): with 1000 streams, milliseconds.  We keep the
    # set of streams that can need a frame — written to, reset or stopped by us,
    # owed a window update, closing but not yet finished, or new — and show
    # aioquic only those, by swapping its stream table for the duration of the
    # call.  A lost packet can make any stream need a retransmission, so a loss
    # puts every stream back in view once.

    def _ms_mark(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            self.ms_active[stream_id] = stream

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        super().send_stream_data(stream_id, data, end_stream)
        self._ms_mark(stream_id)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        super().reset_stream(stream_id, error_code)
        self._ms_mark(stream_id)

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        super().stop_stream(stream_id, error_code)
        self._ms_mark(stream_id)

    def _ms_on_packets_lost(self, *, packets: Any, **kwargs: Any) -> None:
        # aioquic calls this after every ACK, usually with no packet at all.
        packets = tuple(packets)
        if packets:
            self._ms_rescan = True
            self._ms_lost_packets(packets=packets, **kwargs)

    @staticmethod
    def _ms_has_work(stream: _AioStream) -> bool:
        sender = stream.sender
        return (not sender.buffer_is_empty or sender.reset_pending
                or stream.receiver.stop_pending
                or stream.max_stream_data_local_sent != stream.max_stream_data_local)

    @staticmethod
    def _ms_is_closing(stream: _AioStream) -> bool:
        # Closing streams must be seen once finished, so that aioquic discards
        # them (which also lets the peer open another).  They finish only when
        # a packet arrives (an ACK, a FIN, a reset), so they are shown to aioquic
        # only on the first packet built after a receive.
        sender = stream.sender
        return (sender._buffer_fin is not None or sender._reset_error_code is not None
                or stream.receiver.is_finished)

    def _write_application(self, builder: Any, network_path: Any, now: float) -> None:
        streams = self._streams
        active = self.ms_active
        if self._streams_queue:  # streams aioquic created since the last call
            for stream in self._streams_queue:
                active[_sid(stream)] = stream
        if self._ms_rescan:
            self._ms_rescan = False
            view = dict(streams)
        else:
            view = dict(active)
        if self.ms_received:
            self.ms_received = False
            view.update(self.ms_closing)
        shown = list(view)
        self._streams = view
        self._streams_queue = list(view.values())
        try:
            super()._write_application(builder, network_path, now)
        finally:
            order = self._streams_queue
            self._streams = streams
            self._streams_queue = []
            closing = self.ms_closing
            for sid in shown:
                if sid not in view:  # finished: aioquic discarded it from the view
                    streams.pop(sid, None)
                    closing.pop(sid, None)
            new_active: dict[int, _AioStream] = {}
            for stream in order:
                sid = _sid(stream)
                if sid not in view:
                    continue
                if self._ms_has_work(stream):
                    new_active[sid] = stream
                    closing.pop(sid, None)
                elif self._ms_is_closing(stream):
                    closing[sid] = stream
            self.ms_active = new_active

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if self._ms_request_client_cert:
            # aioquic has the switch but documents it as test-only: it asks for a
            # client certificate and does not verify it; we verify after the
            # handshake (see QuicConnection._on_handshake).
            self.tls._request_client_certificate = True
            # ... and then expects a certificate even when the client resumed
            # with a PSK (it rightly sent no CertificateRequest then), failing
            # the handshake.  A resumed session goes straight to Finished.
            context = self.tls
            handle_hello = context._server_handle_hello

            def server_handle_hello(*args: Any, **kwargs: Any) -> None:
                handle_hello(*args, **kwargs)
                if (context.session_resumed
                        and context.state == TlsState.SERVER_EXPECT_CERTIFICATE):
                    context._server_expect_finished()

            context._server_handle_hello = server_handle_hello  # type: ignore[method-assign]

    def _write_stream_limits(self, builder: Any, space: Any, stream: _AioStream) -> None:
        if not stream.max_stream_data_local:
            return
        window = self._ms_window
        target = self.ms_consumed.get(_sid(stream), 0) + window
        # Announce a bigger window only once a quarter of it was read, so that a
        # steady reader causes one MAX_STREAM_DATA per quarter window.
        if target - stream.max_stream_data_local >= window >> 2:
            stream.max_stream_data_local = target
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream.stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local

    def window_update_due(self, stream_id: int) -> bool:
        stream = self._streams.get(stream_id)
        if stream is None or not stream.max_stream_data_local:
            return False
        target = self.ms_consumed.get(stream_id, 0) + self._ms_window
        if target - stream.max_stream_data_local >= self._ms_window >> 2:
            self.ms_active[stream_id] = stream
            return True
        return False

    def unacked_bytes(self, stream_id: int) -> int:
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return sender._buffer_stop - sender._buffer_start


class QuicStream(trio.abc.HalfCloseableStream):
    """A bidirectional QUIC stream with the Trio stream interface.

    ``send_all`` waits while the stream's unacknowledged bytes exceed the send
    watermark (the peer's flow-control window or congestion keeps them there).
    ``receive_some`` returns ``b""`` once the peer sent FIN.  A peer's
    RESET_STREAM (on receive) or STOP_SENDING (on send) raises
    :class:`trio.BrokenResourceError` whose ``error_code`` attribute carries the
    peer's code; so does a closed connection.  Cancelling a blocked
    ``send_all``/``receive_some`` leaves the connection usable.
    """

    def __init__(self, conn: QuicConnection, stream_id: int) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self._rbuf = bytearray()
        self._eof = False
        self._reset_code: int | None = None  # peer reset its sending side
        self._stop_code: int | None = None  # peer asked us to stop sending
        self._send_closed = False
        self._closed = False
        self._recv_lot = trio.lowlevel.ParkingLot()
        self._send_lot = trio.lowlevel.ParkingLot()
        self._send_conflict = False
        self._recv_conflict = False

    def __repr__(self) -> str:
        return f"<QuicStream {self.stream_id}>"

    @property
    def atomic_send_limit(self) -> int:
        """``send_all`` of at most this many bytes either writes all of them or,
        if cancelled or failed, none."""
        return self._conn.config.stream_send_watermark

    @property
    def connection(self) -> QuicConnection:
        return self._conn

    # --- sending ------------------------------------------------------------------

    def _send_broken(self) -> trio.BrokenResourceError | None:
        if self._stop_code is not None:
            exc = trio.BrokenResourceError(
                f"peer stopped stream {self.stream_id} (code {self._stop_code})")
            exc.error_code = self._stop_code  # type: ignore[attr-defined]
            return exc
        return self._conn._broken_error()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._send_conflict:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._send_conflict = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._closed or self._send_closed:
                raise trio.ClosedResourceError("stream was closed for sending")
            conn = self._conn
            watermark = conn.config.stream_send_watermark
            view = memoryview(data).cast("B")
            pos, total = 0, len(view)
            while True:
                await self._wait_send_capacity(watermark)
                # Chunks of at most one watermark keep memory bounded even for a
                # single huge write.
                chunk = view[pos:pos + watermark]
                conn._machine.send_stream_data(self.stream_id, bytes(chunk))
                pos += len(chunk)
                conn._transmit_soon()
                if pos >= total:
                    break
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._send_conflict = False

    def send_all_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        """Write ``data`` now if that needs no waiting, else write nothing.

        Returns ``True`` when the data was queued for sending (whole), ``False``
        when ``send_all`` would have had to wait (another task is sending, or the
        stream's unacknowledged bytes would pass the send watermark).  Raises
        like ``send_all`` on a closed or broken stream.  Not a checkpoint: it
        lets code that must not block (an actor answering a remote ask) skip a
        hand-off to a writer task in the common case.
        """
        if self._closed or self._send_closed:
            raise trio.ClosedResourceError("stream was closed for sending")
        broken = self._send_broken()
        if broken is not None:
            raise broken
        conn = self._conn
        if (self._send_conflict
                or conn._machine.unacked_bytes(self.stream_id) + len(data)
                > conn.config.stream_send_watermark):
            return False
        conn._machine.send_stream_data(self.stream_id, bytes(data))
        conn._transmit_soon()
        return True

    async def _wait_send_capacity(self, watermark: int) -> None:
        conn = self._conn
        while True:
            if self._closed:
                raise trio.ClosedResourceError("stream was closed")
            broken = self._send_broken()
            if broken is not None:
                raise broken
            if conn._machine.unacked_bytes(self.stream_id) < watermark:
                return
            conn._send_waiters.add(self)
            try:
                await self._send_lot.park()
            finally:
                conn._send_waiters.discard(self)

    async def wait_send_all_might_not_block(self) -> None:
        if self._send_conflict:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._send_conflict = True
        try:
            await trio.lowlevel.checkpoint()
            await self._wait_send_capacity(self._conn.config.stream_send_watermark)
        finally:
            self._send_conflict = False

    async def send_eof(self) -> None:
        """Send FIN: the peer's reader sees end of stream after the data sent so far."""
        if self._send_conflict:
            raise trio.BusyResourceError("another task is already sending on this stream")
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        if self._send_closed:
            return
        broken = self._send_broken()
        if broken is not None:
            raise broken
        self._send_closed = True
        self._conn._machine.send_stream_data(self.stream_id, b"", end_stream=True)
        self._conn._pump()

    # --- receiving ----------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._recv_conflict:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        self._recv_conflict = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            parked = False
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("stream was closed")
                if self._rbuf:
                    break
                if self._reset_code is not None:
                    exc = trio.BrokenResourceError(
                        f"peer reset stream {self.stream_id} (code {self._reset_code})")
                    exc.error_code = self._reset_code  # type: ignore[attr-defined]
                    raise exc
                if self._eof:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                broken = self._conn._broken_error()
                if broken is not None:
                    raise broken
                await self._recv_lot.park()
                parked = True
            buf = self._rbuf
            if max_bytes is None or max_bytes >= len(buf):
                data = bytes(buf)
                buf.clear()
            else:
                data = bytes(buf[:max_bytes])
                del buf[:max_bytes]
            self._conn._consumed(self.stream_id, len(data))
            if not parked:  # parking was our schedule point already
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        finally:
            self._recv_conflict = False

    # --- closing ------------------------------------------------------------------

    async def abort(self, error_code: int, reason: str = "") -> None:
        """Close both directions abruptly: RESET_STREAM our side and STOP_SENDING
        theirs with ``error_code``.  ``reason`` is for our logs only (QUIC streams
        carry no reason text)."""
        self._abort(error_code)
        await trio.lowlevel.checkpoint()

    def _abort(self, error_code: int) -> None:
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        if not conn._terminated:
            machine = conn._machine
            try:
                if not self._send_closed:
                    machine.reset_stream(self.stream_id, error_code)
                if not self._eof and self._reset_code is None:
                    machine.stop_stream(self.stream_id, error_code)
            except ValueError:
                pass  # the stream never existed on the wire, or is already finished
            conn._pump()
        self._wake()
        conn._forget(self)

    async def aclose(self) -> None:
        """Close the stream.

        Sends FIN if we had not, and if the peer's data was not read to the end,
        asks the peer to stop sending.  Never blocks for long.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        conn = self._conn
        if not conn._terminated:
            machine = conn._machine
            try:
                if not self._send_closed and self._stop_code is None:
                    self._send_closed = True
                    machine.send_stream_data(self.stream_id, b"", end_stream=True)
                if not self._eof and self._reset_code is None:
                    machine.stop_stream(self.stream_id, APPLICATION_ERROR_CLOSED)
            except (ValueError, RuntimeError):
                pass
            conn._pump()
        self._closed = True
        self._wake()
        conn._forget(self)
        await trio.lowlevel.checkpoint()

    def _wake(self) -> None:
        self._recv_lot.unpark_all()
        self._send_lot.unpark_all()


class QuicConnection:
    """One QUIC connection.  Made by :func:`serve_quic` (given to the handler)
    and :func:`connect_quic`; not constructed directly."""

    def __init__(self, endpoint: _Endpoint, machine: _Machine, config: QuicConfig,
                 addr: Any, *, is_client: bool, client_ca: str | None = None) -> None:
        self._endpoint = endpoint
        self._machine = machine
        self.config = config
        self.remote_address = addr
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
        self._last_send = trio.current_time()
        self._ping_uid = 0
        self._pump_seq = 0
        self._flush_pending = False  # the timer task will flush coalesced writes
        self._last_write = -math.inf
        self._dirty = False  # a write is waiting for that flush
        self._unacked_rx = 0  # datagrams received since we last sent an ACK
        self._ack_space: Any = None  # aioquic's 1-RTT packet space, once it exists
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
        """
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

    def _consumed(self, stream_id: int, n: int) -> None:
        machine = self._machine
        consumed = machine.ms_consumed
        consumed[stream_id] = consumed.get(stream_id, 0) + n
        if machine.window_update_due(stream_id):
            self._pump()

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

    # --- the pump -----------------------------------------------------------------

    def _process_received(self) -> int:
        """After datagrams were fed: deliver their events; if the handshake is
        still running, or two or more packets await our ACK, transmit now too
        (acknowledging every second packet keeps a bulk sender's window open;
        aioquic alone waits a fixed 1 ms).  Returns the pump sequence number so
        the endpoint can tell whether someone transmitted since."""
        self._process_events()
        if self._on_ready is not None and not self.is_client:
            self._check_early_ready()
        space = self._ack_space
        if space is None:
            space = self._ack_space = self._machine._spaces.get(tls.Epoch.ONE_RTT)
        if not self._handshake_done.is_set() or (
                space is not None and space.ack_at is not None
                and len(space.ack_queue) >= 1 and self._unacked_rx >= 2):
            self._pump()
        return self._pump_seq

    def _transmit_soon(self) -> None:
        """Transmit after an application write.

        The first write transmits at once (lowest latency) and asks the timer
        task for a flush in the next scheduling round; writes made before that
        flush — typically by the many tasks a burst of received data woke —
        wait for it and leave together, packed into full datagrams, instead of
        one datagram each.
        """
        if self._flush_pending:
            self._dirty = True
            return
        now = trio.current_time()
        burst = now - self._last_write < _BURST_GAP
        self._last_write = now
        self._pump(with_ack=True)
        if burst:
            # Writes are coming close together: hold the next ones for one
            # scheduling round.  A lone request/reply never pays for the wake-up.
            self._flush_pending = True
            if self._timer_scope is not None:
                self._timer_scope.cancel()

    def _pump(self, *, with_ack: bool = False) -> None:
        """Process pending events, transmit, re-arm the timer.  Never awaits.

        ``with_ack``: we are sending data; put any pending ACK in it rather than
        in a separate packet later.
        """
        if self._terminated:
            return
        machine = self._machine
        self._pump_seq += 1
        self._process_events()
        now = trio.current_time()
        space = self._ack_space
        if space is None:
            space = self._ack_space = machine._spaces.get(tls.Epoch.ONE_RTT)
        if space is not None and space.ack_at is not None and (
                with_ack or self._unacked_rx >= 2):
            space.ack_at = now
        datagrams = machine.datagrams_to_send(now)
        if datagrams:
            endpoint = self._endpoint
            endpoint.send_datagrams(datagrams)
            self._last_send = now
            if endpoint.oversized:
                endpoint.oversized = False
                self._shrink_datagrams()
        if space is not None and space.ack_at is None:
            self._unacked_rx = 0
        # Acknowledgements may have freed send capacity.
        if self._send_waiters:
            for stream in list(self._send_waiters):
                if machine.unacked_bytes(stream.stream_id) < self.config.stream_send_watermark:
                    stream._send_lot.unpark_all()
        self._process_events()  # datagrams_to_send can also produce events
        if self._terminated:
            return
        timer = machine.get_timer()
        deadline = math.inf if timer is None else timer
        ka = self.config.keep_alive_interval
        if ka is not None and self._handshake_done.is_set():
            deadline = min(deadline, self._last_send + ka)
        if deadline != self._deadline:
            self._deadline = deadline
            if self._timer_scope is not None:
                self._timer_scope.deadline = deadline

    def _shrink_datagrams(self) -> None:
        """The kernel refused a datagram as larger than the path MTU it now
        knows: send smaller ones from now on (the refused one counts as lost)."""
        if self.config.max_datagram_size is not None:
            return  # the user fixed the size; keep it
        size = max_datagram_to(self._endpoint.sock.family, self.remote_address)
        if size < self._machine._max_datagram_size:
            self._machine._max_datagram_size = size

    @property
    def max_datagram_size(self) -> int:
        """The largest datagram this connection sends now."""
        return int(self._machine._max_datagram_size)

    def datagram_received(self, data: bytes, addr: Any, now: float) -> None:
        """Feed one datagram; the caller calls :meth:`_process_received` once
        per batch."""
        machine = self._machine
        machine.receive_datagram(data, addr, now)
        machine.ms_received = True
        self._unacked_rx += 1

    async def _run_timer(self) -> None:
        """The connection's one task: wake at the state machine's timer, for a
        keep-alive ping, or to flush writes coalesced by :meth:`_transmit_soon`;
        never otherwise."""
        machine = self._machine
        try:
            while not self._terminated:
                with trio.CancelScope(deadline=self._deadline) as scope:
                    self._timer_scope = scope
                    if self._flush_pending:
                        scope.cancel()
                    await trio.sleep_forever()
                self._timer_scope = None
                if self._terminated:
                    break
                if self._flush_pending:
                    self._flush_pending = False
                    if self._dirty:
                        self._dirty = False
                        self._pump(with_ack=True)
                now = trio.current_time()
                if now < self._deadline:
                    continue  # woken only to flush
                timer = machine.get_timer()
                if timer is not None and now >= timer:
                    machine.handle_timer(now)
                ka = self.config.keep_alive_interval
                if (ka is not None and self._handshake_done.is_set()
                        and now >= self._last_send + ka):
                    self._ping_uid += 1
                    machine.send_ping(self._ping_uid)
                self._deadline = math.inf  # force re-arm
                self._pump()
        finally:
            self._timer_scope = None
            if not self._terminated:
                # Our task is being cancelled (endpoint shutting down): say goodbye.
                self.close(_NO_ERROR, "endpoint closing")

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
                    stream._recv_lot.unpark_all()
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
        stream._recv_lot.unpark_all()

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
