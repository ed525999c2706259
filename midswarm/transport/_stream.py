"""QUIC streams with the Trio stream interface."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ._quic import QuicConnection

__all__ = ["QuicStream", "APPLICATION_ERROR_CLOSED"]

#: Application error code for a stream reset because its owner closed it early.
APPLICATION_ERROR_CLOSED = 0x1

#: Seconds the FIN of a finished exchange may wait for other data to ride on
#: (see ``QuicStream.aclose``): a client's next request comes well within it.
LAZY_FIN_DELAY = 0.002


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
        self._on_readable: Callable[[], None] | None = None

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

    #: ``send_all(data, eof=True)`` sends the FIN with the data (see ``MessageStream``).
    sends_eof_with_data = True

    async def send_all(self, data: bytes | bytearray | memoryview, *, eof: bool = False
                       ) -> None:
        """Write ``data``; with ``eof=True`` also end our direction, the FIN in the
        data's last packet (``send_all`` then ``send_eof`` would send it apart)."""
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
                await self._wait_send_capacity()
                # Chunks of at most one watermark keep memory bounded even for a
                # single huge write.
                chunk = view[pos:pos + watermark]
                pos += len(chunk)
                last = pos >= total
                if eof and last:
                    self._send_closed = True
                conn._machine.send_stream_data(self.stream_id, bytes(chunk),
                                               end_stream=eof and last)
                conn._transmit_soon()
                if last:
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
        if self._send_conflict or not self._has_room(len(data)):
            return False
        conn._machine.send_stream_data(self.stream_id, bytes(data))
        conn._transmit_soon()
        return True

    def _has_room(self, size: int) -> bool:
        """Whether ``size`` more bytes keep this stream's unacknowledged bytes
        within the send watermark.  Before saying no, the connection handles
        the ACKs its fast path held back (see ``Machine.ms_deferred``) -- in a
        pump, so that a loss they reveal is retransmitted at once."""
        conn = self._conn
        machine = conn._machine
        limit = conn.config.stream_send_watermark - size
        if machine.unacked_bytes(self.stream_id) <= limit:
            return True
        if not machine.ms_deferred:
            return False
        conn._pump()
        return machine.unacked_bytes(self.stream_id) <= limit

    async def _wait_send_capacity(self) -> None:
        conn = self._conn
        while True:
            if self._closed:
                raise trio.ClosedResourceError("stream was closed")
            broken = self._send_broken()
            if broken is not None:
                raise broken
            if self._has_room(1):
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
            await self._wait_send_capacity()
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
                if self._at_end():
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                await self._recv_lot.park()
                parked = True
            data = self._take(max_bytes)
            self._conn._consumed(self.stream_id, len(data))
            if not parked:  # parking was our schedule point already
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        finally:
            self._recv_conflict = False

    def receive_some_nowait(self, max_bytes: int | None = None) -> bytes:
        """What :meth:`receive_some` would return at once, without waiting or
        yielding: buffered data, or ``b""`` after the peer's FIN.

        Raises :class:`trio.WouldBlock` when nothing has arrived (or another
        task is receiving), and otherwise what :meth:`receive_some` raises.
        Not a checkpoint.
        """
        if self._recv_conflict:
            raise trio.WouldBlock
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        if not self._rbuf:
            if self._at_end():
                return b""
            raise trio.WouldBlock
        data = self._take(max_bytes)
        # No transmission from here: this may run inside the receive
        # processing (a readable callback), which must not be re-entered.
        self._conn._consumed(self.stream_id, len(data), now=False)
        return data

    def _at_end(self) -> bool:
        """With nothing buffered: ``True`` after the peer's FIN, ``False`` if
        more may come; raises for a reset stream or a closed connection."""
        if self._reset_code is not None:
            exc = trio.BrokenResourceError(
                f"peer reset stream {self.stream_id} (code {self._reset_code})")
            exc.error_code = self._reset_code  # type: ignore[attr-defined]
            raise exc
        if self._eof:
            return True
        broken = self._conn._broken_error()
        if broken is not None:
            raise broken
        return False

    def _take(self, max_bytes: int | None) -> bytes:
        buf = self._rbuf
        if max_bytes is None or max_bytes >= len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:max_bytes])
            del buf[:max_bytes]
        return data

    def set_readable_callback(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback()`` whenever something arrives that a receiver could
        take: data, the peer's FIN or reset, the stream or its connection
        closing.  It runs synchronously inside the connection's receive
        processing, before any task waiting in :meth:`receive_some` is woken;
        it may take the data with :meth:`receive_some_nowait` and must not
        raise or block.  ``None`` removes it."""
        self._on_readable = callback

    def _readable(self) -> None:
        callback = self._on_readable
        if callback is not None:
            callback()
        self._recv_lot.unpark_all()

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

        A stream whose peer already finished (a request whose reply was read
        to the end) has nothing left to hurry: its FIN leaves with whatever
        the connection sends within ``LAZY_FIN_DELAY`` -- typically the next
        request, which then carries it at no cost -- rather than in a datagram
        of its own that the peer must wake up for and acknowledge.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        conn = self._conn
        if not conn._terminated:
            machine = conn._machine
            lazy = False
            try:
                if not self._send_closed and self._stop_code is None:
                    self._send_closed = True
                    machine.send_stream_data(self.stream_id, b"", end_stream=True)
                    lazy = self._eof  # a FIN is all that goes, the peer is done
                if not self._eof and self._reset_code is None:
                    machine.stop_stream(self.stream_id, APPLICATION_ERROR_CLOSED)
            except (ValueError, RuntimeError):
                pass
            if lazy:
                conn._send_within(LAZY_FIN_DELAY)
            else:
                conn._pump()
        self._closed = True
        self._wake()
        conn._forget(self)
        await trio.lowlevel.checkpoint()

    def _wake(self) -> None:
        self._readable()
        self._send_lot.unpark_all()
