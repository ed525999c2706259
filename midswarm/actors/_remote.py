"""A ref to an actor at the other end of a message stream (:func:`remote_ref`).

The envelopes on the stream are described in ``_wire.py``, the serving side in
``_serve.py``.

Theory of operation
-------------------
``tell``/``ask`` encode the request and write it themselves when nothing is
queued ahead of them and the stream takes it without waiting; otherwise they
queue it for one writer task.  Either way a frame is written whole or not at
all, so cancelling a caller (an ``ask`` timing out) never leaves half a frame
on the wire, and frames leave in call order.

Replies are read by whoever holds the *read role* (``_reader``): an asker, or
the background reader task.  An asker that finds the role free takes it and
reads until its own reply arrives, handing every other reply to its asker on
the way; the transport then wakes the asker directly, one scheduling round
sooner than through a reader task.  When the holder lets go (its reply came,
it was cancelled), the role passes to the oldest asker still waiting, else to
the background reader, which keeps reading while nobody asks so that a closed
stream or a gone-for-good notice is seen at once.  An asker that needs the role
while the background reader holds it cancels that read (receiving is
cancel-safe: no bytes are lost) and is handed the role.  Over a QUIC stream
the background reader does not read at all: the stream calls back from the
connection's receive processing, and while the background reader holds the
role every whole reply is delivered right there -- one task switch less per
reply, which is how the coordinator's forwards (:meth:`RemoteActorRef.ask_nowait`)
are answered; the background reader only waits for the stream to end, break
or carry garbage, and breaks the ref then.  When the stream ends,
breaks or carries garbage, every pending ask fails at once with
:class:`ActorUnreachable` and the ref refuses further messages.  A
:class:`~midswarm.transport.ProtocolError` closes that stream only.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import outcome
import trio

from .._util import open_service_nursery
from ..transport import MessageStream, ProtocolError
from ._actor import ActorRef, check_timeout
from ._errors import ActorError, ActorUnreachable, AskTimeout
from ._serve import _STREAM_ENDS, close_quietly
from ._wire import BoxedError, decode_payload, parse_reply, request_bytes

__all__ = ["RemoteActorRef", "remote_ref"]

log = logging.getLogger("midswarm.actors")

#: Frames up to this size may be written by the calling task itself (shielded,
#: so they must be quick to write); larger ones always go through the writer.
_DIRECT_SEND_LIMIT = 64 * 1024


# --------------------------------------------------------------------- calling

#: Rescheduled into a waiting asker instead of its reply: it holds the read role now.
_TAKE_OVER: Any = object()
#: The read role's holder while the background reader task holds it.
_BACKGROUND: Any = object()


def _why_unusable(exc: BaseException) -> str:
    """The reason a ref breaks with, for one of ``_serve._STREAM_ENDS``."""
    if isinstance(exc, trio.EndOfChannel):
        return "the serving side closed the stream"
    if isinstance(exc, ProtocolError):
        return f"protocol error on the stream: {exc}"
    return f"the stream broke: {exc!r}"


class _Waiter:
    """One pending remote ask: its outcome once known, and the task parked on it
    (or, for :meth:`RemoteActorRef.ask_nowait`, the callback that takes it).

    A parked task is woken either with the outcome or with :data:`_TAKE_OVER`.
    """

    __slots__ = ("result", "task", "callback")

    def __init__(self, callback: Callable[[outcome.Outcome[Any]], None] | None = None
                 ) -> None:
        self.result: outcome.Outcome[Any] | None = None
        self.task: trio.lowlevel.Task | None = None
        self.callback = callback

    def resolve(self, result: outcome.Outcome[Any]) -> None:
        if self.result is not None:
            return
        self.result = result
        if self.callback is not None:
            self.callback(result)
            return
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task, result)


class RemoteActorRef(ActorRef):
    """A ref whose messages travel over a stream; made by :func:`remote_ref`."""

    def __init__(self, stream: MessageStream, name: str) -> None:
        self.name = name
        self._stream = stream
        # Frames queued for the writer: only when a caller could not write
        # itself (another write in progress, backpressure, or a large frame).
        self._requests_send, self._requests_recv = trio.open_memory_channel[bytes](16)
        self._queued = 0
        self._send_lock = trio.StrictFIFOLock()
        self._pending: dict[int, _Waiter] = {}
        self._next_id = 1
        self._broken: Callable[[], ActorError] | None = None
        self._closing = False  # the block exited normally: flushing, then closing
        self._reader_scope = trio.CancelScope()
        #: Who reads replies now: None, _BACKGROUND, or the _Waiter of an asker.
        self._reader: Any = None
        #: Around the background reader's reads while it holds the role:
        #: cancelled to take the role from it, and when the ref breaks.
        self._background_read: trio.CancelScope | None = None
        #: The background reader task while it waits for the role to be free.
        self._background_waiting: trio.lowlevel.Task | None = None
        #: The stream hands over what arrives from the connection's receive
        #: processing (a QUIC stream): then, while nobody asks, replies are
        #: delivered there and the background reader only waits for trouble.
        self._handed = (hasattr(stream.stream, "set_readable_callback")
                        and hasattr(stream, "receive_message_nowait"))
        #: What made the stream unusable, found while handing over: (why,
        #: the ProtocolError if the stream must be reset for it).
        self._trouble: tuple[str, ProtocolError | None] | None = None
        self._trouble_lot = trio.lowlevel.ParkingLot()

    def _refuse(self) -> ActorError:
        if self._broken is not None:
            return self._broken()
        return ActorUnreachable(self.name, "the remote_ref block has exited")

    def _break(self, make_error: Callable[[], ActorError]) -> None:
        """Stop for good: fail every pending ask and refuse further messages."""
        if self._broken is not None:
            return
        self._broken = make_error
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.resolve(outcome.Error(make_error()))
        self._requests_recv.close()
        # The background reader stops.  An asker holding the read role is
        # woken by the stream failing or being closed (see _stream_broke).
        if self._background_read is not None:
            self._background_read.cancel()
        self._wake_background()

    # ------------------------------------------------------------- sending

    async def _enqueue(self, data: bytes) -> bool:
        """Send ``data`` in call order; return whether this was a schedule point.

        Raises the refusal when the ref is broken or closing, and
        :class:`trio.Cancelled` only before anything was written.
        """
        if self._broken is not None or self._closing:
            await trio.lowlevel.checkpoint()
            raise self._refuse()
        if self._may_write_now(data):
            # Nothing is queued ahead of us, so we may write ourselves.
            # Cancellable only until something is written.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                # The frame goes out now, without a scheduling round first.
                if self._stream.send_message_nowait(data):
                    return False
                # The stream has no room (or no non-blocking write): wait for
                # room while still cancellable, then write the frame shielded.
                self._send_lock.acquire_nowait()
                try:
                    await self._stream.stream.wait_send_all_might_not_block()
                    with trio.CancelScope(shield=True):
                        await self._stream.send_message(data)
                finally:
                    self._send_lock.release()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                await self._stream_broke(exc)
                raise self._refuse() from None
            return True
        self._queued += 1
        try:
            await self._requests_send.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._refuse() from None
        except BaseException:
            self._queued -= 1
            raise
        return True

    def _may_write_now(self, data: bytes) -> bool:
        """Whether the caller may write ``data`` itself: nothing is queued or
        being written ahead of it, and it is small enough to write shielded."""
        return (self._queued == 0 and len(data) <= _DIRECT_SEND_LIMIT
                and not self._send_lock.locked())

    async def _stream_broke(self, exc: BaseException) -> None:
        """Break the ref after a failed send, and close the stream: an asker
        reading replies wakes up and finds its ask failed."""
        reason = f"the stream broke while sending: {exc!r}"
        self._break(lambda: ActorUnreachable(self.name, reason))
        with trio.CancelScope(shield=True):
            await close_quietly(self._stream)

    def _request(self, ask_id: int, kind: str, msg: Any,
                 encoded: tuple[str, bytes] | None = None) -> bytes:
        data = request_bytes(ask_id, kind, msg, encoded)
        if len(data) > self._stream.max_message_size:
            raise ValueError(f"message of {len(data)} bytes exceeds the stream's "
                             f"max_message_size={self._stream.max_message_size}")
        return data

    async def tell(self, msg: Any) -> None:
        if not await self._enqueue(self._request(0, "tell", msg)):
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def ask(self, msg: Any, timeout: float | None = None) -> Any:
        check_timeout(timeout)
        ask_id = self._next_id
        self._next_id += 1
        data = self._request(ask_id, "ask", msg)
        waiter = _Waiter()
        # Registered before the request can leave, so even an instant reply
        # finds it.
        self._pending[ask_id] = waiter
        try:
            if timeout is None:
                return await self._ask(data, waiter)
            with trio.move_on_after(timeout):
                return await self._ask(data, waiter)
        finally:
            self._pending.pop(ask_id, None)
        raise AskTimeout(self.name, timeout)

    def ask_nowait(self, msg: Any, on_reply: Callable[[outcome.Outcome[Any]], None],
                   encoded: tuple[str, bytes] | None = None) -> int | None:
        """Send an ask now, without waiting, if the stream takes its frame at once.

        Returns the ask's id, or ``None`` when the frame could not be written
        without waiting (a write in progress or queued, backpressure, a large
        frame, a stream that just failed): then nothing was sent, and
        :meth:`ask` is the way.  Once sent, ``on_reply`` is called exactly once
        with the outcome -- the reply's value, the actor's boxed error, or
        :class:`ActorUnreachable` when the ref breaks or its block exits --
        synchronously, from whichever task reads the reply or breaks the ref;
        it must not raise.  No task waits for the reply, so nothing times out:
        :meth:`forget` gives up on an ask.  Not a checkpoint.  Raises the
        ref's refusal (:class:`ActorUnreachable`) when it is broken or
        closing, and :class:`ValueError` for an oversized message.
        ``encoded`` is ``encode_payload(msg)`` when the caller has it already
        (one message asked of several actors is encoded once).
        """
        if self._broken is not None or self._closing:
            raise self._refuse()
        ask_id = self._next_id
        data = self._request(ask_id, "ask", msg, encoded)
        if not self._may_write_now(data):
            return None
        waiter = _Waiter(on_reply)
        self._pending[ask_id] = waiter
        try:
            sent = self._stream.send_message_nowait(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            sent = False  # ask() meets the failure again and breaks the ref
        if not sent:
            del self._pending[ask_id]
            return None
        self._next_id += 1
        return ask_id

    def forget(self, ask_id: int) -> bool:
        """Stop waiting for the reply to ``ask_nowait``'s ask ``ask_id`` (a late
        reply is dropped; its callback is not called).  Returns whether it was
        still pending."""
        return self._pending.pop(ask_id, None) is not None

    async def _ask(self, data: bytes, waiter: _Waiter) -> Any:
        await self._enqueue(data)
        # No schedule point is owed here: the reply cannot be in before a read
        # that parks, or before this task parks waiting for it.
        while waiter.result is None:
            if self._reader is None:
                self._reader = waiter
                await self._read_replies(waiter)
                continue
            if self._reader is _BACKGROUND and self._background_read is not None:
                self._background_read.cancel()  # it hands us the role as it lets go
            waiter.task = trio.lowlevel.current_task()

            def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
                waiter.task = None
                return trio.lowlevel.Abort.SUCCEEDED

            got = await trio.lowlevel.wait_task_rescheduled(abort)
            if got is not _TAKE_OVER:
                return got  # the reply (an error reply was raised just now)
            await self._read_replies(waiter)
        return waiter.result.unwrap()

    async def _write_requests(self) -> None:
        try:
            async for data in self._requests_recv:
                async with self._send_lock:
                    await self._stream.send_message(data)
                self._queued -= 1
            # The block exited normally and everything queued is sent.
            async with self._send_lock:
                try:
                    await self._stream.send_eof()
                except TypeError:
                    pass  # the stream cannot half-close; closing it will do
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await self._stream_broke(exc)
        self._reader_scope.cancel()

    # ------------------------------------------------------------- receiving

    def _let_go(self) -> None:
        """The holder of the read role lets go: pass it on (never raises)."""
        self._reader = None
        if self._broken is None and self._pending:
            for waiter in self._pending.values():
                task = waiter.task
                if task is not None:  # parked, reply still to come: oldest first
                    waiter.task = None
                    self._reader = waiter
                    trio.lowlevel.reschedule(task, outcome.Value(_TAKE_OVER))
                    return
        self._wake_background()

    def _wake_background(self) -> None:
        task, self._background_waiting = self._background_waiting, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    async def _read_in_background(self) -> None:
        """Hold the read role whenever no asker wants it, until the ref breaks."""
        while self._broken is None:
            if self._reader is not None:
                # Woken by whoever lets the role go (or breaks the ref).
                self._background_waiting = trio.lowlevel.current_task()

                def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
                    self._background_waiting = None
                    return trio.lowlevel.Abort.SUCCEEDED

                await trio.lowlevel.wait_task_rescheduled(abort)
                continue
            self._reader = _BACKGROUND
            try:
                with trio.CancelScope() as self._background_read:
                    if self._handed:
                        await self._await_trouble()
                    else:
                        await self._read_replies(None)
            finally:
                self._background_read = None
                self._let_go()

    def _on_readable(self) -> None:
        """The stream's callback: while the background reader holds the read
        role, deliver every whole reply that has arrived, here and now (one
        task switch less per reply).  What needs a task -- the stream ended,
        broke or carries garbage -- is left to the background reader."""
        if self._reader is not _BACKGROUND or self._trouble is not None:
            return
        receive = self._stream.receive_message_nowait
        try:
            while self._broken is None:
                self._deliver(receive())
            return
        except trio.WouldBlock:
            return
        except _STREAM_ENDS as exc:
            self._trouble = (_why_unusable(exc),
                             exc if isinstance(exc, ProtocolError) else None)
        except Exception as exc:  # never into the transport's receive processing
            log.exception("delivering a reply from %s failed", self.name)
            self._trouble = (f"delivering a reply failed: {exc!r}", None)
        self._trouble_lot.unpark_all()

    async def _await_trouble(self) -> None:
        """The background reader's part while replies are handed over: take
        what arrived while the role was elsewhere, then wait until the stream
        is unusable, and break the ref.  Raises only :class:`trio.Cancelled`."""
        self._on_readable()
        while self._broken is None:
            if self._trouble is None:
                await self._trouble_lot.park()
                continue
            reason, protocol_error = self._trouble
            if protocol_error is not None:
                with trio.CancelScope(shield=True):
                    await self._stream.abort_framing(str(protocol_error))
                    await close_quietly(self._stream)
            self._break(functools.partial(ActorUnreachable, self.name, reason))

    async def _read_replies(self, waiter: _Waiter | None) -> None:
        """Read and deliver replies until ``waiter`` is resolved (``None``: until
        cancelled) or the ref breaks.  An asker lets go of the read role on its
        way out; the background reader does so in its own loop.

        The caller holds the role.  Raises only :class:`trio.Cancelled`; a
        stream that ends, breaks or carries garbage breaks the ref.
        """
        try:
            reason = await self._read_until(waiter)
            if reason is not None:
                self._break(lambda: ActorUnreachable(self.name, reason))
        finally:
            if waiter is not None:
                self._let_go()

    async def _read_until(self, waiter: _Waiter | None) -> str | None:
        """The body of :meth:`_read_replies`: ``None`` when done, else why the
        stream is unusable."""
        receive = self._stream.receive_message
        try:
            while (waiter is None or waiter.result is None) and self._broken is None:
                self._deliver(await receive())
        except _STREAM_ENDS as exc:
            if isinstance(exc, ProtocolError):
                with trio.CancelScope(shield=True):
                    await close_quietly(self._stream)
            return _why_unusable(exc)
        return None

    def _deliver(self, raw: bytes) -> None:
        """Resolve the ask ``raw`` answers; raises :class:`ProtocolError`."""
        ask_id, ok, error, encoding, payload = parse_reply(raw)
        if ask_id == 0:
            gone = error or BoxedError("stopped", self.name)
            self._break(gone.unbox)
            return
        if ask_id >= self._next_id or ask_id < 0:
            raise ProtocolError(f"actor.reply for id {ask_id}, which was never asked")
        waiter = self._pending.pop(ask_id, None)
        if waiter is None:
            return  # the ask timed out or was cancelled; drop the late reply
        if ok:
            waiter.resolve(outcome.Value(decode_payload(encoding, payload)))
        else:
            error = error or BoxedError("failed", self.name, "", "no error given")
            waiter.resolve(outcome.Error(error.unbox()))

    def __repr__(self) -> str:
        return f"<RemoteActorRef {self.name!r}>"


@asynccontextmanager
async def remote_ref(stream: MessageStream, name: str = "remote") -> AsyncIterator[ActorRef]:
    """An :class:`ActorRef` whose ``tell``/``ask`` travel over ``stream``.

    Use as ``async with remote_ref(stream, name="matcher") as ref:``; the block
    hosts the background reader and the writer task.  ``name`` is used in
    errors raised on this side.  The ref takes over the stream and closes it
    when the block exits: after a normal exit, requests already queued are sent
    first and the stream is half-closed; asks still waiting then fail with
    :class:`ActorUnreachable`.  Raises :class:`TypeError` if ``stream`` is not a
    :class:`~midswarm.transport.MessageStream`.
    """
    if not isinstance(stream, MessageStream):
        raise TypeError(f"stream must be a MessageStream; got {type(stream).__name__}")
    ref = RemoteActorRef(stream, name)
    if ref._handed:
        stream.stream.set_readable_callback(ref._on_readable)  # type: ignore[attr-defined]
    try:
        async with open_service_nursery() as nursery:

            async def read() -> None:
                with ref._reader_scope:
                    await ref._read_in_background()

            nursery.start_soon(read)
            nursery.start_soon(ref._write_requests)
            try:
                yield ref
            except BaseException:
                nursery.cancel_scope.cancel()
                raise
            # Normal exit: the writer sends what is queued, half-closes the
            # stream and then stops the background reader.
            ref._closing = True
            ref._requests_send.close()
    finally:
        if ref._handed:
            stream.stream.set_readable_callback(None)  # type: ignore[attr-defined]
        ref._break(lambda: ActorUnreachable(name, "the remote_ref block has exited"))
        await close_quietly(stream)
