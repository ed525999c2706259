"""The half of a QUIC connection that drives aioquic's state machine: the pump,
the timer task, and the datagram size.

Theory of operation
-------------------
aioquic's :class:`~aioquic.quic.connection.QuicConnection` is a pure state
machine (our subclass, with its stream limits, windows, pacing and stream
scheduling, is in ``_machine.py``; streams are in ``_stream.py``).  Three
things feed it: datagrams from the network, calls from the application (stream
writes, resets, close) and its timer.  After each of them we do the same two
steps, :meth:`ConnectionDriver._pump`:

1. drain ``next_event()`` into our stream objects (data, resets, handshake
   completion, termination) and wake whoever waits on them;
2. hand ``datagrams_to_send(now)`` to the endpoint, which writes them to the
   socket without blocking, then read ``get_timer()`` and move the timer
   task's cancel-scope deadline there.

Everything runs in the Trio thread, and steps 1-2 never await, so the state
machine is never seen half-updated and needs no lock.  The one task per
connection (:meth:`ConnectionDriver._run_timer`) sleeps until that deadline (or the
keep-alive instant) and then calls ``handle_timer`` — there are no polling
sleeps.  One clock: ``trio.current_time()``.  The latency path: a write
transmits at once; a receive transmits only what cannot wait (a second packet
to acknowledge, queued data or control frames) — the woken reader's reply
usually carries our ACK, and otherwise the timer sends it at the ACK delay.
Steady-state packets are built and read by the fast path (``_fastpath.py``).
A pump is two halves, the send (:meth:`ConnectionDriver._pump_send`) and the
bookkeeping after it (:meth:`ConnectionDriver._pump_settle`); a task writing
to several connections in a :func:`transmit_together` block gets every
connection's send before any bookkeeping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import trio

from ._config import QuicConfig
from ._udp import max_datagram_to

if TYPE_CHECKING:
    from ._endpoint import _Endpoint
    from ._machine import Machine
    from ._stream import QuicStream

__all__ = ["ConnectionDriver", "transmit_together"]

_NO_ERROR = 0

#: aioquic's initial congestion window, in datagrams.
_INITIAL_WINDOW_PACKETS = 10

#: A QUIC v1 0-RTT packet's first byte, masked to the long-header and
#: packet-type bits.
_LONG_TYPE_MASK = 0xB0
_ZERO_RTT_V1 = 0x90


class _HeldTransmits:
    """The connections whose transmission a :func:`transmit_together` block holds."""

    __slots__ = ("task", "open", "connections")

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.open = True
        self.connections: dict[ConnectionDriver, None] = {}


_held: ContextVar[_HeldTransmits | None] = ContextVar("midswarm_held_transmits", default=None)


@contextmanager
def transmit_together() -> Iterator[None]:
    """Send the datagrams of this block's QUIC writes together, at its end.

    For a task writing to several connections in one go (a query scattered to
    several agents): the writes' datagrams leave back to back, and the
    bookkeeping of each send (loss recovery, held-back ACKs, timers) waits
    until all have left, so the last peer is not kept waiting behind the
    bookkeeping of the first ones.  Writes of other tasks, and writes that
    must wait, are not held.  The block must not checkpoint: what it holds
    is sent only when it ends.  Nested blocks send at the outermost end.
    """
    task = trio.lowlevel.current_task()
    outer = _held.get()
    if outer is not None and outer.open and outer.task is task:
        yield
        return
    held = _HeldTransmits(task)
    token = _held.set(held)
    try:
        yield
    finally:
        held.open = False
        _held.reset(token)
        sent = [(conn, conn._pump_send(True)) for conn in held.connections]
        for conn, result in sent:
            if result is not None:
                conn._pump_settle(*result)


class ConnectionDriver:
    """The pump and timer of :class:`~midswarm.transport.QuicConnection` (its
    subclass, which sets every attribute declared here in its constructor)."""

    _endpoint: _Endpoint
    _machine: Machine
    config: QuicConfig
    remote_address: Any
    is_client: bool
    _datagram_size: int | None
    _send_waiters: set[QuicStream]
    _handshake_done: trio.Event
    _terminated: bool
    _timer_scope: trio.CancelScope | None
    _deadline: float
    _armed: float
    _last_send: float
    _ping_uid: int
    _flush_pending: bool
    _flush_late: bool
    _dirty: bool
    _send_by: float
    _first_flight: bool
    _early_read: bool
    _on_ready: Callable[[Any], None] | None

    # --- what the subclass provides ---------------------------------------------------

    def _process_events(self) -> None:
        raise NotImplementedError

    def _check_early_ready(self) -> None:
        raise NotImplementedError

    def close(self, error_code: int = _NO_ERROR, reason: str = "") -> None:
        raise NotImplementedError

    # --- the pump ---------------------------------------------------------------------

    def _process_received(self) -> None:
        """After datagrams were fed: deliver their events, then transmit (soon,
        see below) if the handshake is still running, if two or more packets
        await our ACK
        (acknowledging every second packet keeps a bulk sender's window open;
        aioquic alone waits a fixed 1 ms), or if anything besides an ACK is
        waiting to go.  Otherwise transmit nothing: a woken reader usually
        answers at once and its reply carries our ACK, and if it does not, the
        re-armed timer sends the ACK at aioquic's ACK delay."""
        in_handshake = not self._handshake_done.is_set()
        self._process_events()
        machine = self._machine
        space = machine.ms_space
        if self._send_waiters and machine.ms_deferred:
            machine.ms_apply_acks()  # writers wait for the room these ACKs free
        if in_handshake and self.is_client:  # running, or completed just now
            # The client's handshake packets go out after the tasks this woke
            # had their turn: a resumed client's early reply reaches its reader
            # before our Finished is sent (sending wakes the server, which may
            # take this core for the length of its processing), and a first
            # request shares the Finished's datagram.  A server sends its
            # flight at once: the client needs it to read anything else.
            self._flush_soon(after_readers=True)
        elif in_handshake:
            if self._early_read:
                # Only 0-RTT packets, read after our flight left: their ACK
                # rides on the handler's 0.5-RTT reply (or goes at the ACK
                # delay); a pump now would find nothing else to send.
                self._early_read = False
                self._rearm()
            else:
                self._pump()
            if self._on_ready is not None and not self._terminated:
                # A resumed client's 0-RTT request can be answered now; its
                # handler starts after our flight left (it runs next round
                # either way, and the client needs the flight first).
                self._check_early_ready()
        elif (space is not None and space.ack_at is not None
                and len(space.ack_queue) >= 1 and machine.ms_unacked >= 2):
            self._pump()
        elif not machine.ms_quiet():
            # Stream data waits (an ACK may have opened the congestion window)
            # or a control frame is due (a response, a new connection ID).
            self._pump()
        elif space is None or not machine.ms_steady() or self._send_waiters:
            self._rearm()
        else:
            # The woken readers run next and their replies re-arm the timer
            # fully; keep get_timer() off that path.  Only the two timers a
            # received packet can bring *forward* matter now: the ACK delay
            # and a time-threshold loss.  A deadline left too early merely
            # wakes the timer task, which re-arms.
            deadline = self._deadline
            for at in (space.ack_at, space.loss_time):
                if at is not None and at < deadline:
                    deadline = at
            if deadline < self._deadline:
                self._set_deadline(deadline)

    def _transmit_soon(self) -> None:
        """Transmit after an application write: at once, unless a flush is
        already due in this scheduling round (see :meth:`_flush_soon`).

        Writes are not held back to share datagrams: with the fast path a
        write's own datagram costs less than the extra scheduling round and
        the burstier traffic that coalescing brings (measured on 1000 streams
        of one connection: 8,500 round trips/s sending at once, 4,300 holding
        writes that came within 50 us of each other for one round).
        """
        if self._flush_pending:
            if self._first_flight:
                # The first write of a client that did not wait for its
                # handshake (a 0-RTT request): it leaves now, in the
                # ClientHello's datagram.  Writes after it in this round wait
                # for the pending flush and share one datagram.
                self._first_flight = False
                self._dirty = False  # this pump sends all there is
                self._pump(with_ack=True)
                return
            self._dirty = True
            return
        held = _held.get()
        if held is not None and held.open and held.task is trio.lowlevel.current_task():
            held.connections[self] = None
            return
        self._pump(with_ack=True)

    def _flush_soon(self, *, after_readers: bool = False) -> None:
        """Transmit in the next scheduling round (the timer task does), taking
        along whatever is written until then; ``after_readers``: one round
        later, so that tasks woken in this round have certainly run first."""
        self._dirty = True
        self._flush_late = self._flush_late or after_readers
        if not self._flush_pending:
            self._flush_pending = True
            if self._timer_scope is not None:
                self._timer_scope.cancel()

    def _send_within(self, delay: float) -> None:
        """Have what is queued leave within ``delay`` seconds: with the next
        datagram sent for any other reason, or by the timer task then (see
        :meth:`_rearm`)."""
        self._send_by = min(self._send_by, trio.current_time() + delay)
        if self._send_by < self._deadline:
            self._set_deadline(self._send_by)

    def _pump(self, *, with_ack: bool = False) -> None:
        """Process pending events, transmit, re-arm the timer.  Never awaits.

        ``with_ack``: we are sending data; put any pending ACK in it rather than
        in a separate packet later.
        """
        result = self._pump_send(with_ack)
        if result is not None:
            self._pump_settle(*result)

    def _pump_send(self, with_ack: bool) -> tuple[float, bool] | None:
        """The first half of :meth:`_pump`: events, then the datagrams to the
        socket.  Returns the time and whether anything was sent, for
        :meth:`_pump_settle`, which must follow (``None``: the connection is
        over, nothing to settle)."""
        if self._terminated:
            return None
        machine = self._machine
        self._process_events()
        if self._datagram_size is not None and machine._handshake_confirmed:
            self._grow_datagrams()
        now = trio.current_time()
        space = machine.ms_space
        if space is not None and space.ack_at is not None and (
                with_ack or machine.ms_unacked >= 2):
            space.ack_at = now
        return now, self._send(now)

    def _pump_settle(self, now: float, sent: bool) -> None:
        """The second half of :meth:`_pump`: the bookkeeping of what was sent,
        held-back ACKs, the timer.  Between the halves the connection may
        wait (see :func:`transmit_together`): every entry to the state
        machine settles what the first half left."""
        machine = self._machine
        if sent:
            self._after_send(now)
        if machine.ms_deferred:
            # ACKs held back by the receive path (see Machine.ms_deferred):
            # handled after our send, off the reply's path.  Should they
            # declare a loss or open the window, what that frees goes now.
            machine.ms_apply_acks()
            if machine.ms_active or machine._ms_rescan:
                self._transmit(now)
        space = machine.ms_space
        if space is not None and space.ack_at is None:
            machine.ms_unacked = 0
        self._rearm()

    def _transmit(self, now: float) -> None:
        if self._send(now):
            self._after_send(now)

    def _send(self, now: float) -> bool:
        """Hand what the state machine has to send to the socket; whether it had any."""
        datagrams = self._machine.datagrams_to_send(now)
        if not datagrams:
            return False
        self._endpoint.send_datagrams(datagrams)
        return True

    def _after_send(self, now: float) -> None:
        # The fast path's packet is recorded once it is on its way: loss
        # recovery's bookkeeping need not delay the syscall.
        self._machine.ms_record()
        self._last_send = now
        endpoint = self._endpoint
        if endpoint.oversized:
            endpoint.oversized = False
            self._shrink_datagrams()

    def _rearm(self) -> None:
        """Wake writers that acknowledgements made room for, deliver events,
        and move the timer task's deadline to the state machine's timer."""
        machine = self._machine
        if self._send_waiters:
            for stream in list(self._send_waiters):
                if machine.unacked_bytes(stream.stream_id) < self.config.stream_send_watermark:
                    stream._send_lot.unpark_all()
        self._process_events()  # datagrams_to_send can also produce events
        if self._terminated:
            return
        timer = machine.ms_timer()
        deadline = math.inf if timer is None else timer
        ka = self.config.keep_alive_interval
        if ka is not None and self._handshake_done.is_set():
            deadline = min(deadline, self._last_send + ka)
        send_by = self._send_by
        if send_by != math.inf:
            if not machine.ms_quiet():
                deadline = min(deadline, send_by)
            else:
                # It left with something else.  The timer task was armed for
                # it alone: re-file its scope rather than wake it for nothing
                # (a wake costs more than the re-filing _set_deadline avoids).
                self._send_by = math.inf
                scope = self._timer_scope
                if self._armed == send_by and scope is not None and deadline > send_by:
                    self._armed = scope.deadline = deadline
        if deadline != self._deadline:
            self._set_deadline(deadline)

    def _set_deadline(self, deadline: float) -> None:
        """Make ``deadline`` the timer task's next wake-up.

        Moving a cancel scope's deadline is one of the dearest steps of a round
        trip (Trio re-files the scope), and the timer moves later after nearly
        every packet (the probe timer restarts with each send; an ACK going
        out cancels the ACK timer).  So the scope's deadline is only ever
        brought forward; a later one is noticed when the task wakes early,
        finds nothing due and sleeps again — at most once per earlier deadline.
        """
        self._deadline = deadline
        if deadline < self._armed and self._timer_scope is not None:
            self._armed = deadline
            self._timer_scope.deadline = deadline

    def _shrink_datagrams(self) -> None:
        """The kernel refused a datagram as larger than the path MTU it now
        knows: send smaller ones from now on (the refused one counts as lost)."""
        if self.config.max_datagram_size is not None:
            return  # the user fixed the size; keep it
        size = max_datagram_to(self._endpoint.sock.family, self.remote_address)
        if size < self._machine._max_datagram_size:
            self._machine._max_datagram_size = size

    def _grow_datagrams(self) -> None:
        """Move from the handshake's minimum datagram to the configured or
        discovered size, with the congestion window aioquic would have started
        with at that size.  Called once the handshake is confirmed: before
        that, datagrams carrying Initial packets are padded to the full size."""
        size, self._datagram_size = self._datagram_size, None
        machine = self._machine
        if size is None or size <= machine._max_datagram_size:
            return
        machine._max_datagram_size = size
        loss = machine._loss
        loss._pacer._max_datagram_size = size
        cc = loss._cc
        if hasattr(cc, "_max_datagram_size"):
            cc._max_datagram_size = size
        cc.congestion_window = max(cc.congestion_window, _INITIAL_WINDOW_PACKETS * size)

    def datagram_received(self, data: bytes, addr: Any, now: float) -> None:
        """Feed one datagram; the caller calls :meth:`_process_received` once
        per batch."""
        self._machine.receive_datagram(data, addr, now)

    def first_datagram_received(self, data: bytes, addr: Any, now: float,
                                initial_length: int) -> None:
        """Server: feed a new connection its first datagram, whose first packet
        is the client's QUIC v1 Initial of ``initial_length`` bytes.

        When 0-RTT packets follow it in the datagram (a resumed client's early
        request), the Initial is fed and our flight sent before they are read:
        the client needs the flight to read anything, and its early request is
        answered after the flight either way (measured: a resumed client's
        first reply ~0.1 ms sooner).  The Initial goes in with the rest of the
        datagram zero-filled — trailing padding, which aioquic skips — so that
        aioquic sees the datagram's real size (Initials in datagrams under 1200
        bytes are dropped); the anti-amplification count, which then sees the
        0-RTT bytes twice, is set back to the datagram's size.  Nothing is
        sent for the 0-RTT packets themselves (see :meth:`_process_received`).
        """
        rest = len(data) - initial_length
        if not (initial_length > 0 and rest > 0
                and data[initial_length] & _LONG_TYPE_MASK == _ZERO_RTT_V1):
            self.datagram_received(data, addr, now)
            return
        self.datagram_received(data[:initial_length] + bytes(rest), addr, now)
        self._process_received()
        paths = self._machine._network_paths
        if self._terminated or not paths:
            return
        path = paths[0]
        self.datagram_received(data[initial_length:], addr, now)
        self._early_read = True
        if not path.is_validated:
            path.bytes_received -= rest

    async def _run_timer(self) -> None:
        """The connection's one task: wake at the state machine's timer, for a
        keep-alive ping, or to flush writes held by :meth:`_flush_soon`;
        never otherwise."""
        machine = self._machine
        try:
            while not self._terminated:
                with trio.CancelScope(deadline=self._deadline) as scope:
                    self._timer_scope = scope
                    self._armed = self._deadline
                    if self._flush_pending:
                        scope.cancel()
                    await trio.sleep_forever()
                self._timer_scope = None
                if self._terminated:
                    break
                if self._flush_pending:
                    if self._flush_late:
                        self._flush_late = False
                        await trio.lowlevel.checkpoint()
                        if self._terminated:
                            break
                    self._first_flight = False  # nothing written yet: it leaves now
                    self._flush_pending = False
                    if self._dirty:
                        self._dirty = False
                        self._pump(with_ack=True)
                now = trio.current_time()
                if now < self._deadline:
                    continue  # woken to flush, or before a deadline that moved later
                timer = machine.get_timer()
                if timer is not None and now >= timer:
                    machine.handle_timer(now)
                ka = self.config.keep_alive_interval
                if (ka is not None and self._handshake_done.is_set()
                        and now >= self._last_send + ka):
                    self._ping_uid += 1
                    machine.send_ping(self._ping_uid)
                self._deadline = math.inf  # force re-arm
                # Whatever _send_within queued leaves now, as far as congestion
                # control lets it (then ACKs re-arm the sending, not this).
                self._send_by = math.inf
                self._pump()
        finally:
            self._timer_scope = None
            if not self._terminated:
                # Our task is being cancelled (endpoint shutting down): say goodbye.
                self.close(_NO_ERROR, "endpoint closing")
