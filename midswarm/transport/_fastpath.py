"""The short-header fast path: 1-RTT packets built and read without aioquic's
general machinery, for the steady state of an established connection.

Theory of operation
-------------------
Once the handshake is confirmed, almost every packet a midswarm connection
sends or receives is a 1-RTT packet holding an ACK and a STREAM frame or two.
aioquic builds and parses those with code that serves every packet type and
every state (a packet builder with a second, empty packet per call; header
parsing for long headers, migration and path validation; idle timers computed
twice), which costs more than half of a small round trip.  This module does
the same work for that one common case, calling aioquic's own primitives for
everything that carries state — stream senders and receivers, frame handlers,
loss recovery, congestion control, encryption — so the two paths cannot
drift apart in what they record.

Each entry point first checks a list of preconditions; when any one fails it
declines (returns ``None`` / ``False``) *before changing anything*, and the
caller runs aioquic's general code instead.  The rules:

========================  ==================================================
send: decline when         reason
========================  ==================================================
not CONNECTED+confirmed    handshake, closing: other packet types/frames
logging on                 qlog wants every frame described
control frame pending      PING, HANDSHAKE_DONE, NEW/RETIRE_CONNECTION_ID,
                           STREAMS_BLOCKED, DATAGRAM, CRYPTO, MAX_DATA,
                           MAX_STREAMS, path frames, probes
stream needs non-data      RESET_STREAM, STOP_SENDING, MAX_STREAM_DATA
ACK of several ranges      may need an ACK-of-ACK PING
paced or window full       the general path computes the pacing timer
more than one packet       bulk data: the general path packs many packets
========================  ==================================================

========================  ==================================================
receive: decline when      reason
========================  ==================================================
long header                handshake packets
not CONNECTED+confirmed    keys and packet spaces still changing
other address or CID       migration, path validation, CID rotation
0-RTT keys still held      server must drop them on the first 1-RTT packet
logging on                 qlog
========================  ==================================================

Once the connection is known steady, :func:`settle_streams` files new streams and
discards finished ones, as aioquic's general code would before building a
packet, so a stream per request (a remote client's calls) stays on this path.

Frames inside a received packet are dispatched to aioquic's frame handlers,
so every frame type is handled exactly as aioquic handles it; the one
exception is an ACK of a single range in the 1-RTT space, which
:func:`parse_ack` reads and :func:`apply_ack` handles with the same steps in
the same order (``Machine`` routes aioquic's ACK handler through them, on
either path).

Held-back ACKs.  When a packet read here brings a reader news (any event),
its ACK is not handled at once but kept in ``Machine.ms_deferred``: the
reader's reply is the latency, the ACK is bookkeeping (packets acknowledged,
congestion window, RTT sample, loss detection: a few microseconds, on a cold
cache more) that can wait until the reply left.  The driver handles them
right after its next send; ``Machine`` handles them before any of aioquic's
general code runs or reads the timer, and the stream send paths before they
find no room.  The RTT sample uses the time the packet arrived.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic.connection import (
    QuicConnectionError,
    QuicConnectionState,
    QuicReceiveContext,
    stream_is_client_initiated,
)
from aioquic.quic.crypto import CryptoError, KeyUnavailableError
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, QuicPacketType, push_ack_frame
from aioquic.quic.packet_builder import QuicDeliveryState, QuicSentPacket
from aioquic.quic.recovery import MAX_ACK_RANGES

if TYPE_CHECKING:
    from ._machine import Machine

__all__ = ["apply_ack", "control_clear", "fast_datagrams_to_send", "fast_receive_datagram",
           "parse_ack", "record_sent", "settle_streams"]

_CONNECTED = QuicConnectionState.CONNECTED
_ONE_RTT = tls.Epoch.ONE_RTT
_ONE_RTT_PACKET = QuicPacketType.ONE_RTT
_ACK = int(QuicFrameType.ACK)
_ACKED = QuicDeliveryState.ACKED
_STREAM_BASE = int(QuicFrameType.STREAM_BASE)
#: Fixed bit, two-byte packet number (aioquic always sends two bytes).
_FIRST_BYTE = 0x40 | 0x01
#: The AEAD tag after the payload.
_TAG = 16
#: Header protection samples 16 bytes starting 4 bytes after the packet number
#: starts; with a 2-byte packet number the payload must hold at least 2 bytes.
_MIN_PAYLOAD = 2
#: Room for a STREAM frame's type, stream id, offset and 2-byte length.
_STREAM_ROOM = 1 + 8 + 8 + 2
#: Room for an ACK frame of one range with every field at full size.
_ACK_ROOM = 1 + 4 * 8


def settle_streams(m: Machine) -> None:
    """The stream bookkeeping aioquic's ``_write_application`` does first,
    which needs no packet: file the streams created since the last send, and
    discard the closing streams that finished since a datagram arrived.

    Either path would do exactly this before building anything, so doing it
    here changes nothing but which path can build: without it, every
    request on a stream of its own (a remote client's call) took aioquic's
    general path twice at each end — once for the new stream, once for the
    finished one.  ``Machine._write_application`` starts with it too, and
    new streams are filed by ``Machine.ms_file``, as every sent stream is.
    A discarded stream the peer opened lets the peer open another, as in
    aioquic (RFC 9000 section 4.6); the MAX_STREAMS that announces it is
    batched by :func:`control_clear`'s rule.
    """
    queue = m._streams_queue
    if queue:
        m._streams_queue = []
        for stream in queue:
            m.ms_file(stream, m.ms_active)
    if m.ms_received:
        m.ms_received = False
        closing = m.ms_closing
        if closing:
            is_client = m._is_client
            for sid in [sid for sid, stream in closing.items() if stream.is_finished]:
                del closing[sid]
                m.ms_active.pop(sid, None)
                del m._streams[sid]
                if stream_is_client_initiated(sid) != is_client:
                    m._stream_limit(sid).value += 1


def control_clear(m: Machine) -> bool:
    """True if no connection-level frame other than ACK is waiting; call
    :func:`settle_streams` first (every caller does)."""
    if (m._handshake_done_pending or m._retire_connection_ids or m._streams_blocked_pending
            or m._ping_pending or m._probe_pending or m._datagrams_pending
            or m._ms_rescan):
        return False
    if not m.ms_crypto_stream.sender.buffer_is_empty:
        return False
    for cid in m._host_cids:
        if not cid.was_sent:
            return False
    max_data = m._local_max_data
    if max_data.used * 2 > max_data.value or max_data.sent != max_data.value:
        return False
    for limit in (m._local_max_streams_bidi, m._local_max_streams_uni):
        # aioquic's batching: MAX_STREAMS goes once the peer has fewer streams
        # left to open than the update would grant.
        if limit.value != limit.sent and limit.sent - limit.used < limit.value - limit.sent:
            return False
    return True


def fast_datagrams_to_send(m: Machine, now: float) -> list[tuple[bytes, Any]] | None:
    """What ``datagrams_to_send(now)`` would return, or ``None`` to decline."""
    if (m._state is not _CONNECTED or not m._handshake_confirmed or m._close_pending
            or m._quic_logger is not None or len(m._network_paths) != 1
            or m._remote_preferred_address is not None):
        return None
    path = m._network_paths[0]
    if not path.is_validated or path.remote_challenges:
        return None
    settle_streams(m)
    space = m.ms_space
    ack_at = space.ack_at
    ack_due = ack_at is not None and ack_at <= now
    active = m.ms_active
    if not active and not ack_due:
        # Nothing to send and nothing that could be: the common call after a
        # receive whose reply already went out.
        if not control_clear(m):
            return None
        m._pacing_at = None
        return []
    if not control_clear(m):
        return None
    if ack_due and len(space.ack_queue) > 1:
        return None  # aioquic may add an ACK-of-ACK PING
    loss = m._loss
    # aioquic consults the pacer unless an ACK is overdue.
    if (ack_at is None or ack_at >= now) and loss._pacer.next_send_time(now=now) is not None:
        return None

    crypto = m.ms_crypto
    peer_cid = m._peer_cid.cid
    header_size = 3 + len(peer_cid)
    capacity = m._max_datagram_size - header_size - _TAG
    flight_room = loss.congestion_window - loss.bytes_in_flight

    # Is everything going to fit in one packet, and does no stream need
    # anything but STREAM frames?  One pass, before touching any state, that
    # stops as soon as the answer is no (with many busy streams, at once).
    need = _ACK_ROOM if ack_due else 0
    data_room = m._remote_max_data - m._remote_max_data_used
    window = m._ms_window
    consumed = m.ms_consumed
    ready = []
    for sid, stream in active.items():
        if stream.is_finished or stream.receiver.stop_pending or stream.sender.reset_pending:
            return None
        local = stream.max_stream_data_local
        if local and (stream.max_stream_data_local_sent != local
                      or consumed.get(sid, 0) + window - local >= window >> 2):
            return None  # MAX_STREAM_DATA is due
        sender = stream.sender
        if stream.is_blocked or sender.buffer_is_empty:
            continue
        if sender._buffer_stop > stream.max_stream_data_remote:
            return None  # stream flow control would split it
        new = sender._buffer_stop - sender.highest_offset
        if new > 0:
            data_room -= new
        # What is queued lies within the bounds of the pending ranges (exactly,
        # when there is one range: no retransmission).
        pending = sender._pending.bounds() if len(sender._pending) else None
        need += (pending.stop - pending.start if pending is not None else 0) + _STREAM_ROOM
        if need > capacity:
            return None
        ready.append(stream)
    if need > capacity or data_room < 0:
        return None
    if ready and need + header_size + _TAG > flight_room:
        return None  # the congestion window is full: the general path waits
    buf = Buffer(capacity=capacity)
    handlers: list[tuple[Any, Any]] = []
    eliciting = False
    if ack_due:
        # ack_at is set only once a packet was received, so a time exists.
        received = space.largest_received_time or now
        delay = int((now - received) * 1000000) >> m._local_ack_delay_exponent
        buf.push_uint_var(_ACK)
        push_ack_frame(buf, space.ack_queue, delay, _ACK_ROOM - 1)
        handlers.append((m._on_ack_delivery, (space, space.largest_received_packet)))
        space.ack_at = None
    used_total = 0
    sent_streams = []
    for stream in ready:
        sender = stream.sender
        before = sender.highest_offset
        frame = sender.get_frame(capacity, None)
        if frame is None:
            continue
        frame_type = _STREAM_BASE | 2
        if frame.offset:
            frame_type |= 4
        if frame.fin:
            frame_type |= 1
        buf.push_uint_var(frame_type)
        buf.push_uint_var(stream.stream_id)  # type: ignore[arg-type]
        if frame.offset:
            buf.push_uint_var(frame.offset)
        data = frame.data
        buf.push_uint16(len(data) | 0x4000)
        buf.push_bytes(data)
        handlers.append((sender.on_data_delivery,
                         (frame.offset, frame.offset + len(data), frame.fin)))
        if not len(sender._pending) and not sender._pending_eof:
            sender.buffer_is_empty = True  # what the next get_frame would find
        used_total += sender.highest_offset - before
        eliciting = True
        sent_streams.append(stream)
    m._remote_max_data_used += used_total
    m._pacing_at = None
    if not handlers:
        return []
    in_flight = eliciting
    if buf.tell() < _MIN_PAYLOAD:
        buf.push_bytes(bytes(_MIN_PAYLOAD - buf.tell()))
        in_flight = True

    pn = m._packet_number
    first = _FIRST_BYTE | (m._spin_bit << 5) | (crypto.key_phase << 2)
    header = bytes((first,)) + peer_cid + (pn & 0xFFFF).to_bytes(2, "big")
    datagram = crypto.encrypt_packet(header, buf.data, pn)
    m._packet_number = pn + 1
    m.ms_unrecorded = (pn, in_flight, eliciting, now, len(datagram), handlers, sent_streams)
    return [(datagram, path.addr)]


def record_sent(m: Machine, pn: int, in_flight: bool, eliciting: bool, now: float,
                size: int, handlers: list[tuple[Any, Any]], streams: list[Any]) -> None:
    """The bookkeeping of a packet :func:`fast_datagrams_to_send` built, as
    aioquic records a packet it sends: loss recovery, pacing, the idle timer."""
    loss = m._loss
    packet = QuicSentPacket(
        epoch=_ONE_RTT, in_flight=in_flight, is_ack_eliciting=eliciting,
        is_crypto_packet=False, packet_number=pn, packet_type=_ONE_RTT_PACKET,
        sent_time=now, sent_bytes=size, delivery_handlers=handlers)
    loss.on_packet_sent(packet=packet, space=m.ms_space)
    loss._pacer.update_after_send(now=now)
    if eliciting:
        if not m._ack_eliciting_sent_since_receipt:
            m._close_at = now + m._idle_timeout()
            m._ack_eliciting_sent_since_receipt = True
    m._network_paths[0].bytes_sent += size
    m.ms_after_send(streams)


def fast_receive_datagram(m: Machine, data: bytes, addr: Any, now: float) -> bool:
    """Handle ``data`` as ``receive_datagram`` would; ``False`` to decline."""
    cid = m.host_cid
    cid_len = len(cid)
    if (data[0] & 0x80 or m._state is not _CONNECTED or not m._handshake_confirmed
            or m._quic_logger is not None or len(m._network_paths) != 1
            or m._close_at is None or len(data) < 1 + cid_len + 4 + _TAG):
        return False
    path = m._network_paths[0]
    if path.addr != addr or not path.is_validated or data[1:1 + cid_len] != cid:
        return False
    if not m._is_client and m.ms_zero_rtt_crypto.recv.is_valid():
        return False

    space = m.ms_space
    try:
        plain_header, payload, pn = m.ms_crypto.decrypt_packet(
            data, 1 + cid_len, space.expected_packet_number)
    except (KeyUnavailableError, CryptoError):
        return True  # dropped, as aioquic drops it
    if pn in space.received_packets:
        return True  # duplicate
    if plain_header[0] & 0x18:
        m.close(error_code=QuicErrorCode.PROTOCOL_VIOLATION,
                frame_type=QuicFrameType.PADDING,
                reason_phrase="Reserved bits must be zero")
        return True
    if pn > space.expected_packet_number:
        space.expected_packet_number = pn + 1
    if pn > m._spin_highest_pn:
        spin = bool(plain_header[0] & 0x20)
        m._spin_bit = (not spin) if m._is_client else spin
        m._spin_highest_pn = pn

    context = QuicReceiveContext(epoch=_ONE_RTT, host_cid=cid, network_path=path,
                                 quic_logger_frames=None, time=now, version=None)
    eliciting = False
    events = m._events
    waiting = len(events)
    m.ms_deferring = True
    try:
        eliciting, _probing = m._payload_received(context, payload)
    except QuicConnectionError as exc:
        m._logger.warning(exc)
        m.close(error_code=exc.error_code, frame_type=exc.frame_type,
                reason_phrase=exc.reason_phrase)
    finally:
        m.ms_deferring = False
    if m.ms_deferred and len(events) == waiting:
        m.ms_apply_acks()  # the packet brought nobody news: no one to go first
    if m._state is not _CONNECTED or m._close_pending:
        return True
    m._close_at = now + m._idle_timeout()
    m._ack_eliciting_sent_since_receipt = False
    if not space.discarded:
        if pn > space.largest_received_packet:
            space.largest_received_packet = pn
            space.largest_received_time = now
        space.ack_queue.add(pn)
        space.received_packets.add(pn)
        if len(space.ack_queue) > MAX_ACK_RANGES:
            space.ack_queue.shift()
        if eliciting and space.ack_at is None:
            space.ack_at = now + m._ack_delay
    return True



def parse_ack(m: Machine, context: Any, frame_type: int,
              buf: Buffer) -> tuple[int, int, int, float] | None:
    """An ACK frame of one range in the 1-RTT space, read from ``buf``:
    ``(largest, encoded delay, smallest, receive time)``; ``None`` (with
    ``buf`` untouched) for any other ACK, which aioquic's handler then reads."""
    if (frame_type != _ACK or context.epoch is not _ONE_RTT
            or m._quic_logger is not None or not m._handshake_confirmed):
        return None
    start = buf.tell()
    largest = buf.pull_uint_var()
    delay_encoded = buf.pull_uint_var()
    if buf.pull_uint_var() != 0:  # more ranges follow
        buf.seek(start)
        return None
    first_range = buf.pull_uint_var()
    if first_range > largest:  # malformed: aioquic reports the error
        buf.seek(start)
        return None
    return largest, delay_encoded, largest - first_range, context.time


def apply_ack(m: Machine, largest: int, delay_encoded: int, smallest: int,
              now: float) -> None:
    """Handle an ACK of one range in the 1-RTT space, received at ``now``, as
    aioquic's ``_handle_ack_frame`` and ``QuicPacketRecovery.on_ack_received``
    would.

    The same steps in the same order — packets acknowledged oldest first, each
    one's congestion accounting and delivery handlers, the RTT sample, loss
    detection — without building a range set to describe a single range, and
    skipping loss detection when no packet older than the acknowledged one is
    left in flight (aioquic's scan would find nothing and record no loss time).
    """
    loss = m._loss
    loss.peer_completed_address_validation = True
    space = m.ms_space
    if largest > space.largest_acked_packet:
        space.largest_acked_packet = largest

    sent = space.sent_packets
    cc = loss._cc
    eliciting = False
    newest: QuicSentPacket | None = None
    for pn in [pn for pn in sent if smallest <= pn <= largest]:
        packet = sent.pop(pn)
        if packet.is_ack_eliciting:
            eliciting = True
            space.ack_eliciting_in_flight -= 1
        if packet.in_flight:
            cc.on_packet_acked(packet=packet, now=now)
        newest = packet
        for handler, args in packet.delivery_handlers:
            handler(_ACKED, *args)
    if newest is None:
        return

    if newest.packet_number == largest and eliciting:
        ack_delay = min((delay_encoded << m._remote_ack_delay_exponent) / 1000000,
                        loss.max_ack_delay)
        latest_rtt = now - newest.sent_time  # type: ignore[operator]
        loss._rtt_latest = max(latest_rtt, 0.001)
        if loss._rtt_latest < loss._rtt_min:
            loss._rtt_min = loss._rtt_latest
        if loss._rtt_latest > loss._rtt_min + ack_delay:
            loss._rtt_latest -= ack_delay
        if not loss._rtt_initialized:
            loss._rtt_first_sample_time = now
            loss._rtt_initialized = True
            loss._rtt_variance = latest_rtt / 2
            loss._rtt_smoothed = latest_rtt
        else:
            loss._rtt_variance = (3 / 4 * loss._rtt_variance
                                  + 1 / 4 * abs(loss._rtt_min - loss._rtt_latest))
            loss._rtt_smoothed = 7 / 8 * loss._rtt_smoothed + 1 / 8 * loss._rtt_latest
        cc.on_rtt_measurement(now=now, rtt=latest_rtt)
        loss._pacer.update_rate(congestion_window=cc.congestion_window,
                                smoothed_rtt=loss._rtt_smoothed)

    oldest = next(iter(sent), None)
    if oldest is None or oldest > space.largest_acked_packet:
        space.loss_time = None
    else:
        loss._detect_loss(now=now, space=space)
    loss._pto_count = 0
