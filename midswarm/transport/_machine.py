"""aioquic's state machine with midswarm's stream limits, receive windows,
pacing and stream scheduling (see the theory of operation in ``_driver.py``)."""

from __future__ import annotations

import functools
from typing import Any

from aioquic.buffer import Buffer
from aioquic.quic import connection as _aioquic_connection
from aioquic.quic.connection import (
    MAX_STREAM_DATA_FRAME_CAPACITY,
    QuicConnectionState,
    QuicFrameType,
)
from aioquic.quic.connection import (
    QuicConnection as _AioQuicConnection,
)
from aioquic.quic.recovery import QuicPacketPacer
from aioquic.quic.stream import QuicStream as _AioStream
from aioquic.tls import Epoch as TlsEpoch
from aioquic.tls import Group, pull_server_hello
from aioquic.tls import State as TlsState

from . import _tlsblocks
from ._config import QuicConfig
from ._fastpath import (
    apply_ack,
    control_clear,
    fast_datagrams_to_send,
    fast_receive_datagram,
    parse_ack,
    record_sent,
    settle_streams,
)

__all__ = ["Machine"]

# aioquic's QuicConnection.__init__ builds its frame-handler table with some
# thirty calls of EPOCHS("...") — each a new frozenset from a string, ~80 us of
# every connection's setup.  The function is pure and its results immutable,
# so remembering them changes nothing else.
if not hasattr(_aioquic_connection.EPOCHS, "cache_info"):
    _aioquic_connection.EPOCHS = functools.lru_cache(maxsize=None)(_aioquic_connection.EPOCHS)

# aioquic's TLS messages are (de)serialised through generator-based context
# managers, ~80 us of every handshake; same bytes, a third of the cost.
_tlsblocks.install()

_INITIAL = TlsEpoch.INITIAL
_HANDSHAKE = TlsEpoch.HANDSHAKE
_ONE_RTT = TlsEpoch.ONE_RTT

#: Connection IDs we let the peer issue to us (RFC 9000's minimum).
_ACTIVE_CONNECTION_IDS = 2

#: How long an ACK may wait for data to ride on (aioquic waits 1 ms).  An
#: agent's task often takes longer than 1 ms, and every ACK-only packet sent
#: meanwhile wakes the peer to read it.  Within the max_ack_delay we announce
#: (aioquic's 25 ms), which the peer's loss timer allows for; two unacknowledged
#: packets are still acknowledged at once (see ConnectionDriver._process_received).
_ACK_DELAY = 0.010

#: ACK frames the fast receive path holds back at most (see ms_deferred);
#: a peer that keeps sending while we never do gets its ACKs handled in
#: batches of this many.
_DEFERRED_ACKS = 8

#: Key-share groups a client offers, in order of preference.
_CLIENT_GROUPS = (Group.SECP256R1, Group.X25519)
_KNOWN_GROUPS = frozenset(int(g) for g in Group)

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


class Machine(_AioQuicConnection):
    """aioquic's state machine with our stream limits and receive windows."""

    def __init__(self, *, config: QuicConfig, request_client_cert: bool = False,
                 key_share_group: int | None = None, **kwargs: Any) -> None:
        #: Client: the key-share group the server chose last time (kept with
        #: the session ticket); a resumed connection offers only that one.
        self._ms_group = key_share_group
        #: Client: the ServerHello, kept to read the server's group from.
        self._ms_server_hello: bytes | None = None
        super().__init__(**kwargs)
        self._ack_delay = _ACK_DELAY
        # Ask the peer for one spare connection ID, not seven: each costs a
        # NEW_CONNECTION_ID frame to build and to parse in the first flights,
        # on every connection's critical path, and midswarm never migrates.
        self._local_active_connection_id_limit = _ACTIVE_CONNECTION_IDS
        # aioquic hard-codes 128; it replenishes one per finished stream, so this
        # is the number of peer-opened streams open at once.
        for limit in (self._local_max_streams_bidi, self._local_max_streams_uni):
            # ``sent`` too: the initial value travels in the transport parameters,
            # and aioquic only announces increases over what it thinks it sent.
            limit.value = limit.sent = config.max_concurrent_streams
        self._ms_window = config.stream_receive_window
        #: The 1-RTT packet space, keys and crypto stream, set by _initialize
        #: (the fast path and the driver use them on every packet).
        self.ms_space: Any = None
        self.ms_crypto: Any = None
        self.ms_crypto_stream: Any = None
        self.ms_zero_rtt_crypto: Any = None
        self._ms_request_client_cert = request_client_cert
        self._loss._pacer = _GranularPacer(max_datagram_size=self._max_datagram_size)
        # stream id -> bytes the application has read
        self.ms_consumed: dict[int, int] = {}
        # streams that may need a frame, in service order (see _write_application)
        self.ms_active: dict[int, _AioStream] = {}
        self.ms_closing: dict[int, _AioStream] = {}
        self.ms_received = False  # a datagram arrived since closing streams were checked
        #: Ack-eliciting 1-RTT packets received since we last sent an ACK.  Only
        #: those count: counting ACK-only packets would make two peers answer
        #: each other's ACKs with ACKs.
        self.ms_unacked = 0
        #: ACK frames (single-range, 1-RTT, see _fastpath.parse_ack) that came
        #: in packets with news for a reader, held back so that the reader's
        #: reply does not wait for them: they are handled right after our next
        #: send, before aioquic's general code runs or reads the timer, and
        #: when a writer needs the room they free.  While ``ms_deferring``
        #: (inside the fast receive path) ACK frames are held, not handled.
        self.ms_deferred: list[tuple[int, int, int, float]] = []
        #: The last packet the fast path built, recorded (fastpath.record_sent)
        #: once it was handed to the socket -- before anything else touches
        #: this machine (every entry point below records it first).
        self.ms_unrecorded: tuple[Any, ...] | None = None
        self.ms_deferring = False
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
        if self.ms_unrecorded is not None:
            self.ms_record()
        super().send_stream_data(stream_id, data, end_stream)
        self._ms_mark(stream_id)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        self.ms_record()
        super().reset_stream(stream_id, error_code)
        self._ms_mark(stream_id)

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        self.ms_record()
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
        # Closing streams must be discarded once finished (which also lets the
        # peer open another).  They finish only when a packet arrives (an ACK,
        # a FIN, a reset), so settle_streams checks them only after a receive.
        sender = stream.sender
        return (sender._buffer_fin is not None or sender._reset_error_code is not None
                or stream.receiver.is_finished)

    def ms_file(self, stream: _AioStream, active: dict[int, _AioStream]) -> None:
        """Put ``stream`` where it belongs: last in ``active`` (the streams in
        view) if it has something to send, among the closing ones if it is
        finishing, else nowhere (a write brings it back into view)."""
        sid = _sid(stream)
        if self._ms_has_work(stream):
            active[sid] = stream
            self.ms_closing.pop(sid, None)
        elif self._ms_is_closing(stream):
            self.ms_closing[sid] = stream

    def ms_after_send(self, streams: list[_AioStream]) -> None:
        """After the fast path sent ``streams`` data: keep in view only those
        with more to send, served last next time; finished ones wait as closing."""
        active = self.ms_active
        for stream in streams:
            del active[_sid(stream)]
            self.ms_file(stream, active)

    # --- the fast path (see _fastpath.py) ---------------------------------------------

    def ms_steady(self) -> bool:
        """True once the handshake is confirmed and while no close has begun:
        the only timers then are the ACK delay, loss detection, pacing and
        the idle timeout."""
        return self._handshake_confirmed and self._state is QuicConnectionState.CONNECTED

    def ms_timer(self) -> float | None:
        """``get_timer()``, computed for the steady state alone: the Initial and
        Handshake spaces discarded and the path validated leave the idle timer,
        the ACK delay, loss detection of 1-RTT packets and pacing — the same
        arithmetic as aioquic's, without visiting what no longer exists."""
        if self.ms_unrecorded is not None:
            self.ms_record()
        spaces = self._spaces
        path = self._network_paths[0] if self._network_paths else None
        if (not self.ms_steady() or path is None or not path.is_validated
                or not spaces[_INITIAL].discarded or not spaces[_HANDSHAKE].discarded):
            return self.get_timer()
        timer = self._close_at
        if timer is None:
            return self.get_timer()
        space = self.ms_space
        if space.ack_at is not None and space.ack_at < timer:
            timer = space.ack_at
        loss = self._loss
        if space.loss_time is not None:
            loss_at: float | None = space.loss_time
        elif space.ack_eliciting_in_flight or not loss.peer_completed_address_validation:
            loss_at = (loss._time_of_last_sent_ack_eliciting_packet
                       + loss.get_probe_timeout(include_max_ack_delay=True)
                       * (2 ** loss._pto_count))
        else:
            loss_at = None
        self._loss_at = loss_at
        if loss_at is not None and loss_at < timer:
            timer = loss_at
        if self._pacing_at is not None and self._pacing_at < timer:
            timer = self._pacing_at
        return timer

    def ms_quiet(self) -> bool:
        """True if nothing but an ACK could be sent now: no stream has data or
        frames waiting and no connection-level frame is due."""
        settle_streams(self)
        return not self.ms_active and control_clear(self)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        if self.ms_unrecorded is not None:
            self.ms_record()
        datagrams = fast_datagrams_to_send(self, now)
        if datagrams is None:
            self.ms_apply_acks()
            return super().datagrams_to_send(now)
        return datagrams

    def _payload_received(self, context: Any, plain: bytes,
                          crypto_frame_required: bool = False) -> tuple[bool, bool]:
        eliciting, probing = super()._payload_received(context, plain, crypto_frame_required)
        if eliciting:
            self.ms_unacked += 1
        return eliciting, probing

    def _write_application(self, builder: Any, network_path: Any, now: float) -> None:
        settle_streams(self)  # new streams in view, finished ones discarded
        streams = self._streams
        if self._ms_rescan:
            self._ms_rescan = False
            view = dict(streams)
        else:
            view = dict(self.ms_active)
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
                if _sid(stream) in view:
                    self.ms_file(stream, new_active)
            self.ms_active = new_active

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        # Looked up once: tls.Epoch is a plain Enum, each dict lookup hashes
        # its name.  A Retry or version change runs this again.
        self.ms_space = self._spaces[_ONE_RTT]
        self.ms_crypto = self._cryptos[_ONE_RTT]
        self.ms_crypto_stream = self._crypto_streams[_ONE_RTT]
        self.ms_zero_rtt_crypto = self._cryptos[TlsEpoch.ZERO_RTT]
        if self._is_client:
            self._ms_offer_groups()
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

    def _ms_offer_groups(self) -> None:
        """Choose the client's key shares and cipher suites.

        aioquic offers a key share for each of P-256, P-384, X25519 and X448:
        four key generations (~0.3 ms) for every connection, when the server
        uses one.  A full handshake offers the two that every TLS 1.3 server
        has (P-256 is mandatory), cheapest first.  A resumed one knows what
        this server chose before: it offers that group's share alone and the
        ticket's cipher suite alone (the PSK is bound to its hash), which
        saves a key generation and two of the three transcript hashes on the
        path to the first request.  aioquic has no HelloRetryRequest: a server
        that no longer takes the group fails the handshake, and
        :func:`connect_quic` then forgets the group (the next connection
        offers both again).
        """
        context = self.tls
        ticket = context.session_ticket  # set by aioquic only if usable
        group = self._ms_group
        if group is not None and ticket is not None and group in _KNOWN_GROUPS:
            context._supported_groups = [Group(group)]
            context._cipher_suites = [ticket.cipher_suite]
            return
        context._supported_groups = list(_CLIENT_GROUPS)
        # Several shares offered: keep the ServerHello to learn which group the
        # server took (read once a ticket arrives, off the handshake's path).
        handle_hello = context._client_handle_hello

        def client_handle_hello(input_buf: Any, output_buf: Any) -> None:
            self._ms_server_hello = input_buf.data_slice(0, input_buf.capacity)
            handle_hello(input_buf, output_buf)

        context._client_handle_hello = client_handle_hello  # type: ignore[method-assign]

    def ms_key_share_group(self) -> int | None:
        """Client: the key-share group the server chose, once its ServerHello
        was processed (``None`` before, or if it cannot be read)."""
        groups = self.tls._supported_groups
        if len(groups) == 1:
            return int(groups[0]) if self.tls.key_schedule is not None else None
        if self._ms_server_hello is None:
            return None
        try:
            share = pull_server_hello(Buffer(data=self._ms_server_hello)).key_share
        except Exception:  # a ServerHello aioquic accepted parses; be safe anyway
            return None
        return None if share is None else int(share[0])

    def _handle_ack_frame(self, context: Any, frame_type: int, buf: Any) -> None:
        ack = parse_ack(self, context, frame_type, buf)
        if ack is None:
            self.ms_apply_acks()  # in order
            super()._handle_ack_frame(context, frame_type, buf)
        elif self.ms_deferring:
            if len(self.ms_deferred) >= _DEFERRED_ACKS:
                self.ms_apply_acks()
            self.ms_deferred.append(ack)
        else:
            self.ms_apply_acks()
            apply_ack(self, *ack)

    def ms_record(self) -> None:
        """Record the packet the fast path built last (see ``ms_unrecorded``)."""
        unrecorded, self.ms_unrecorded = self.ms_unrecorded, None
        if unrecorded is not None:
            record_sent(self, *unrecorded)

    def ms_apply_acks(self) -> None:
        """Handle the ACK frames held back by the fast receive path, in order."""
        if self.ms_unrecorded is not None:
            self.ms_record()
        deferred = self.ms_deferred
        while deferred:
            apply_ack(self, *deferred.pop(0))

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        if self.ms_unrecorded is not None:
            self.ms_record()
        if not fast_receive_datagram(self, data, addr, now):
            self.ms_apply_acks()
            super().receive_datagram(data, addr, now)
        self.ms_received = True

    def get_timer(self) -> float | None:
        self.ms_apply_acks()
        return super().get_timer()

    def handle_timer(self, now: float) -> None:
        self.ms_apply_acks()
        super().handle_timer(now)

    def _handle_padding_frame(self, context: Any, frame_type: int, buf: Any) -> None:
        # aioquic steps through padding a byte at a time in Python: ~40 us for
        # each padded Initial datagram of a handshake.
        if self._quic_logger is not None:
            super()._handle_padding_frame(context, frame_type, buf)
            return
        pos = buf.tell()
        rest = buf.data_slice(pos, buf.capacity)
        buf.seek(pos + len(rest) - len(rest.lstrip(b"\x00")))

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
