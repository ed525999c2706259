"""An in-memory transport with the QUIC connection's shape.

For a swarm embedded in one Trio program: :func:`memory_connection_pair` gives
two connected :class:`MemoryConnection` objects with the same stream methods as
:class:`~midswarm.transport.QuicConnection` (``open_stream``, ``accept_stream``,
``close``, ``peer_identity``), so code written against one runs on the other.
Streams are bounded (``send_all`` waits when the peer has ``buffer_chunks``
unread writes), half-closeable, and can be aborted with a code like QUIC streams.
"""

from __future__ import annotations

import math
import operator
from collections import deque

import trio

from ._errors import ConnectionClosed

__all__ = ["MemoryConnection", "MemoryStream", "memory_connection_pair"]

_DEFAULT_BUFFER_CHUNKS = 64


class _Pipe:
    """One direction: bounded queue of byte chunks, EOF, reset code."""

    def __init__(self, capacity: int) -> None:
        self.chunks: deque[bytes] = deque()
        self.capacity = capacity
        self.eof = False
        self.reset_code: int | None = None  # writer aborted
        self.stop_code: int | None = None  # reader aborted
        self.readable = trio.lowlevel.ParkingLot()
        self.writable = trio.lowlevel.ParkingLot()

    def wake(self) -> None:
        self.readable.unpark_all()
        self.writable.unpark_all()


def _broken(message: str, code: int | None) -> trio.BrokenResourceError:
    exc = trio.BrokenResourceError(message)
    exc.error_code = code  # type: ignore[attr-defined]
    return exc


class MemoryStream(trio.abc.HalfCloseableStream):
    """One end of an in-memory bidirectional stream."""

    def __init__(self, conn: MemoryConnection, stream_id: int, send: _Pipe,
                 recv: _Pipe) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self._send = send
        self._recv = recv
        self._closed = False
        self._send_closed = False
        self._pending = b""

    #: ``send_all`` writes all or nothing, whatever the size.
    atomic_send_limit = 1 << 62

    def _check_send(self) -> None:
        if self._closed or self._send_closed:
            raise trio.ClosedResourceError("stream was closed for sending")
        if self._send.stop_code is not None:
            raise _broken(f"peer stopped stream {self.stream_id} (code {self._send.stop_code})",
                          self._send.stop_code)
        if self._conn._closed:
            raise _broken(f"connection closed: {self._conn._close_reason}",
                          self._conn._close_code)

    #: ``send_all(data, eof=True)`` half-closes with the data, as ``QuicStream``'s does.
    sends_eof_with_data = True

    async def send_all(self, data: bytes | bytearray | memoryview, *, eof: bool = False
                       ) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_send()
        pipe = self._send
        while len(pipe.chunks) >= pipe.capacity:
            await pipe.writable.park()
            self._check_send()
        if data:
            pipe.chunks.append(bytes(data))
        if eof:
            self._send_closed = True
            pipe.eof = True
        if data or eof:
            pipe.readable.unpark_all()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def send_all_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        """Queue ``data`` if the peer's buffer has room (``True``), else write
        nothing (``False``).  Raises like ``send_all``; not a checkpoint."""
        self._check_send()
        pipe = self._send
        if len(pipe.chunks) >= pipe.capacity:
            return False
        if data:
            pipe.chunks.append(bytes(data))
            pipe.readable.unpark_all()
        return True

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        while len(self._send.chunks) >= self._send.capacity:
            self._check_send()
            await self._send.writable.park()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        if not self._send_closed:
            self._send_closed = True
            self._send.eof = True
            self._send.readable.unpark_all()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        await trio.lowlevel.checkpoint_if_cancelled()
        pipe = self._recv
        while not self._pending:
            if self._closed:
                raise trio.ClosedResourceError("stream was closed")
            if pipe.chunks:
                self._pending = pipe.chunks.popleft()
                pipe.writable.unpark_all()
                break
            if pipe.reset_code is not None:
                raise _broken(f"peer reset stream {self.stream_id} (code {pipe.reset_code})",
                              pipe.reset_code)
            if pipe.eof:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return b""
            if self._conn._closed:
                raise _broken(f"connection closed: {self._conn._close_reason}",
                              self._conn._close_code)
            await pipe.readable.park()
        n = len(self._pending) if max_bytes is None else max_bytes
        data, self._pending = self._pending[:n], self._pending[n:]
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    async def abort(self, error_code: int, reason: str = "") -> None:
        """Reset our sending side and stop the peer's, with ``error_code``."""
        if not self._closed:
            self._closed = True
            if not self._send_closed:
                self._send.reset_code = error_code
            self._recv.stop_code = error_code
            self._send.wake()
            self._recv.wake()
            self._conn._streams.discard(self)
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if not self._send_closed:
                self._send.eof = True
            if not self._recv.eof:
                self._recv.stop_code = 1
            self._send.wake()
            self._recv.wake()
            self._conn._streams.discard(self)
        await trio.lowlevel.checkpoint()


class MemoryConnection:
    """One end of an in-memory connection (see :func:`memory_connection_pair`)."""

    def __init__(self, peer_identity: str | None, *, is_client: bool,
                 buffer_chunks: int) -> None:
        self.peer_identity = peer_identity
        self.is_client = is_client
        self._buffer_chunks = buffer_chunks
        self._peer: MemoryConnection | None = None
        self._accept: deque[MemoryStream] = deque()
        self._accept_lot = trio.lowlevel.ParkingLot()
        self._next_id = 0 if is_client else 1
        self._closed = False
        self._close_code: int | None = None
        self._close_reason = ""
        self._streams: set[MemoryStream] = set()
        self.session_resumed = False
        self.early_data_accepted = False
        self.handshake_complete = True
        self.remote_address = "memory"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def close_reason(self) -> tuple[int | None, str]:
        return self._close_code, self._close_reason

    async def open_stream(self) -> MemoryStream:
        """Open a stream; the peer's :meth:`accept_stream` returns its other end."""
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise ConnectionClosed(self._close_reason, self._close_code or 0)
        peer = self._peer
        assert peer is not None
        a_to_b, b_to_a = _Pipe(self._buffer_chunks), _Pipe(self._buffer_chunks)
        sid = self._next_id
        self._next_id += 4
        mine = MemoryStream(self, sid, a_to_b, b_to_a)
        theirs = MemoryStream(peer, sid, b_to_a, a_to_b)
        self._streams.add(mine)
        peer._streams.add(theirs)
        peer._accept.append(theirs)
        peer._accept_lot.unpark()
        return mine

    async def accept_stream(self) -> MemoryStream:
        """Wait for the next stream the peer opens; :class:`ConnectionClosed` once
        closed with none pending."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._accept:
            if self._closed:
                raise ConnectionClosed(self._close_reason, self._close_code or 0)
            await self._accept_lot.park()
        stream = self._accept.popleft()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return stream

    def accept_stream_nowait(self) -> MemoryStream:
        """A waiting peer-opened stream, else :class:`trio.WouldBlock`."""
        if self._accept:
            return self._accept.popleft()
        if self._closed:
            raise ConnectionClosed(self._close_reason, self._close_code or 0)
        raise trio.WouldBlock

    def close(self, error_code: int = 0, reason: str = "") -> None:
        """Close both ends: every waiter on every stream wakes and fails."""
        for conn in (self, self._peer):
            if conn is None or conn._closed:
                continue
            conn._closed = True
            conn._close_code = error_code
            conn._close_reason = reason
            conn._accept_lot.unpark_all()
            for stream in conn._streams:
                stream._send.wake()
                stream._recv.wake()
            conn._streams.clear()

    async def aclose(self, error_code: int = 0, reason: str = "") -> None:
        self.close(error_code, reason)
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> MemoryConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def memory_connection_pair(client_identity: str | None = None,
                           server_identity: str | None = "coordinator", *,
                           buffer_chunks: int = _DEFAULT_BUFFER_CHUNKS,
                           ) -> tuple[MemoryConnection, MemoryConnection]:
    """Return ``(client, server)``: two ends of one in-memory connection.

    ``client.peer_identity`` is ``server_identity`` and vice versa, standing in
    for the identities mutual TLS would give a QUIC connection.
    """
    if buffer_chunks < 1 or not math.isfinite(buffer_chunks):
        raise ValueError("buffer_chunks must be a positive integer")
    client = MemoryConnection(server_identity, is_client=True, buffer_chunks=buffer_chunks)
    server = MemoryConnection(client_identity, is_client=False, buffer_chunks=buffer_chunks)
    client._peer, server._peer = server, client
    return client, server
