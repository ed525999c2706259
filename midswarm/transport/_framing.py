"""Length-prefixed message framing over any Trio byte stream.

Each frame is a 4-byte big-endian unsigned length followed by that many bytes of
payload.  The length is checked against ``max_message_size`` before anything is
allocated for the payload, so a hostile peer cannot make us reserve memory by
announcing a huge frame.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import trio

from ._errors import ProtocolError

__all__ = ["MessageStream", "DEFAULT_MAX_MESSAGE_SIZE", "FRAMING_ERROR_CODE"]

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: Application error code used when a stream is reset because of a framing error.
FRAMING_ERROR_CODE = 0x4D53  # "MS"

_HEADER = struct.Struct(">I")
_COALESCE_LIMIT = 64 * 1024  # below this, header and payload go out in one write
_RECEIVE_CHUNK = 256 * 1024


class MessageStream:
    """Whole messages over a byte stream.

    ``stream`` is any :class:`trio.abc.Stream` (a :class:`QuicStream`, a TCP or
    in-memory stream, ...).  Sending is safe from several tasks at once: frames are
    never interleaved.  Receiving is for one task at a time.

    When the peer sends a frame longer than ``max_message_size`` or the stream
    ends in the middle of a frame, :meth:`receive_message` closes the stream
    (resetting it with :data:`FRAMING_ERROR_CODE` when the stream supports
    ``abort``) and raises :class:`ProtocolError`.  Other streams are untouched.
    """

    def __init__(self, stream: trio.abc.Stream,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if max_message_size < 1 or max_message_size > 0xFFFFFFFF:
            raise ValueError("max_message_size must be between 1 and 2**32 - 1")
        self.stream = stream
        self.max_message_size = max_message_size
        self._buf = bytearray()
        self._send_lock = trio.Lock()
        self._eof = False
        self._send_broken: str | None = None

    async def send_message(self, message: bytes | bytearray | memoryview) -> None:
        """Send one message.  Waits while the stream applies backpressure.

        Raises :class:`ValueError` for a message over ``max_message_size`` (the
        peer would refuse it) and whatever the underlying stream raises
        (:class:`trio.BrokenResourceError`, :class:`trio.ClosedResourceError`).
        """
        n = len(message)
        if n > self.max_message_size:
            raise ValueError(
                f"message of {n} bytes exceeds max_message_size={self.max_message_size}")
        if n <= _COALESCE_LIMIT:
            await self._write((_HEADER.pack(n) + bytes(message),), 4 + n, False)
        else:
            await self._write((_HEADER.pack(n), message), 4 + n, False)

    async def send_messages(self, messages: Iterable[bytes | bytearray | memoryview], *,
                            eof: bool = False) -> None:
        """Send several messages in one write, so that together they take as few
        packets as their size allows, and with ``eof=True`` half-close after
        them -- on a :class:`QuicStream` the FIN rides in the last packet.

        A request and its reply sent this way cost one packet each way rather
        than one per message plus one for the FIN.  Raises like
        :meth:`send_message`; nothing is sent if any message is too large.
        """
        parts: list[bytes | bytearray | memoryview] = []
        total = 0
        for message in messages:
            n = len(message)
            if n > self.max_message_size:
                raise ValueError(
                    f"message of {n} bytes exceeds max_message_size={self.max_message_size}")
            parts += (_HEADER.pack(n), message)
            total += 4 + n
        if total <= _COALESCE_LIMIT:
            parts = [b"".join(parts)]
        await self._write(parts, total, eof)

    async def _write(self, parts: Sequence[bytes | bytearray | memoryview], total: int,
                     eof: bool) -> None:
        """Write ``parts`` (whole frames, ``total`` bytes) in order, then FIN if
        ``eof``; one writer at a time."""
        lock = self._send_lock
        # Uncontended: take the lock without trio.Lock's extra schedule point;
        # send_all below is this call's checkpoint.
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            if self._send_broken is not None:
                raise trio.BrokenResourceError(self._send_broken)
            stream: Any = self.stream
            try:
                for i, part in enumerate(parts):
                    if eof and i == len(parts) - 1 and getattr(stream, "sends_eof_with_data",
                                                               False):
                        await stream.send_all(part, eof=True)
                        eof = False
                    else:
                        await stream.send_all(part)
            except BaseException:
                # Interrupted (cancelled, or the stream failed) possibly in the
                # middle of a frame: what follows could not be parsed by the
                # peer.  A stream whose writes are all-or-nothing up to a size
                # (ours) lost nothing if the frames went in one write that
                # fitted; otherwise end the stream, so the peer sees a reset
                # rather than garbage.
                atomic = getattr(stream, "atomic_send_limit", 0)
                if not (len(parts) == 1 and total <= atomic):
                    self._send_broken = "a send was interrupted inside a frame"
                    with trio.CancelScope(shield=True):
                        await self._abort_quietly(FRAMING_ERROR_CODE,
                                                  self._send_broken)
                raise
            if eof:
                send_eof: Any = getattr(stream, "send_eof", None)
                if send_eof is None:
                    raise TypeError(f"{type(stream).__name__} cannot half-close")
                await send_eof()
        finally:
            lock.release()

    def send_message_nowait(self, message: bytes | bytearray | memoryview) -> bool:
        """Send one message now if that needs no waiting; else send nothing.

        Returns ``True`` when the whole frame was handed to the stream, ``False``
        when :meth:`send_message` would have had to wait (another send is in
        progress, the stream applies backpressure, or the stream has no
        non-blocking write).  Raises :class:`ValueError` for an oversized message
        and what the stream raises when it is closed or broken.  Not a checkpoint.
        """
        n = len(message)
        if n > self.max_message_size:
            raise ValueError(
                f"message of {n} bytes exceeds max_message_size={self.max_message_size}")
        if self._send_broken is not None:
            raise trio.BrokenResourceError(self._send_broken)
        send_all_nowait = getattr(self.stream, "send_all_nowait", None)
        if send_all_nowait is None or self._send_lock.locked():
            return False
        return bool(send_all_nowait(_HEADER.pack(n) + bytes(message)))

    async def receive_message(self) -> bytes:
        """Receive one whole message.

        Raises :class:`trio.EndOfChannel` when the peer closed the stream cleanly
        between messages, and :class:`ProtocolError` for an oversized frame or a
        stream that ends inside a frame.
        """
        while True:
            got = self._buffered()
            if isinstance(got, bytes):
                return got
            if got is not None:
                await self._fail(got)
            data = await self.stream.receive_some(_RECEIVE_CHUNK)
            if not data:
                self._eof = True
            else:
                self._buf += data

    def receive_message_nowait(self) -> bytes:
        """One whole message if it has arrived, without waiting or yielding.

        Needs a stream with ``receive_some_nowait`` (a :class:`QuicStream`).
        Raises :class:`trio.WouldBlock` when no whole message is in yet,
        :class:`trio.EndOfChannel` as :meth:`receive_message` does, and what the
        stream raises.  A framing error (an oversized frame, a stream ending
        inside a frame) raises :class:`ProtocolError` and leaves the stream to
        the caller, who should :meth:`abort_framing` it.  Not a checkpoint.
        """
        while True:
            got = self._buffered()
            if isinstance(got, bytes):
                return got
            if got is not None:
                self._buf.clear()
                self._eof = True
                raise ProtocolError(got)
            receive_some_nowait = getattr(self.stream, "receive_some_nowait", None)
            if receive_some_nowait is None:
                raise trio.WouldBlock
            data = receive_some_nowait(_RECEIVE_CHUNK)
            if not data:
                self._eof = True
            else:
                self._buf += data

    def _buffered(self) -> bytes | str | None:
        """The next whole message in the buffer (taken out of it); ``None``
        if more must be read first; a framing error's description.  Raises
        :class:`trio.EndOfChannel` at a clean end."""
        buf = self._buf
        if len(buf) >= 4:
            (n,) = _HEADER.unpack_from(buf)
            if n > self.max_message_size:
                return f"frame of {n} bytes exceeds max_message_size={self.max_message_size}"
            end = 4 + n
            if len(buf) >= end:
                msg = bytes(buf[4:end])
                del buf[:end]
                return msg
        if self._eof:
            if buf:
                return f"stream ended inside a frame ({len(buf)} bytes pending)"
            raise trio.EndOfChannel
        return None

    async def abort_framing(self, why: str) -> None:
        """Reset the stream as :meth:`receive_message` does on a framing error
        (after :meth:`receive_message_nowait` raised :class:`ProtocolError`)."""
        await self._abort_quietly(FRAMING_ERROR_CODE, why)

    async def _fail(self, why: str) -> None:
        self._buf.clear()
        self._eof = True
        await self._abort_quietly(FRAMING_ERROR_CODE, why)
        raise ProtocolError(why)

    async def _abort_quietly(self, code: int, why: str) -> None:
        abort = getattr(self.stream, "abort", None)
        try:
            if abort is not None:
                await abort(code, why)
            else:
                await self.stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        while True:
            try:
                yield await self.receive_message()
            except trio.EndOfChannel:
                return

    async def send_eof(self) -> None:
        """Half-close: tell the peer no more messages follow."""
        async with self._send_lock:
            send_eof: Any = getattr(self.stream, "send_eof", None)
            if send_eof is None:
                raise TypeError(f"{type(self.stream).__name__} cannot half-close")
            await send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> MessageStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
