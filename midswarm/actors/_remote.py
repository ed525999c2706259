"""Binding an actor's mailbox to a message stream.

Wire protocol
-------------
Two message classes, registered with the transport codec under ``actor.*``
tags, travel over one :class:`~midswarm.transport.MessageStream`:

* :class:`ActorRequest` ``{id, kind, encoding, payload}``, client to server.
  ``kind`` is ``"tell"`` (``id`` 0, no reply) or ``"ask"`` (``id`` > 0, unique
  on the stream, answered exactly once unless the stream breaks).
* :class:`ActorReply` ``{id, ok, encoding, payload, error}``, server to client.
  ``ok`` false carries a :class:`BoxedError` instead of a payload.  A reply with
  ``id`` 0 is a notice that the served actor is gone for good; the server closes
  the stream after it.

A payload is either a registered message instance, sent as its own nested
envelope (``encoding="message"``, :func:`~midswarm.transport.encode`), or plain
msgpack data, numpy arrays included (``encoding="data"``,
:func:`~midswarm.transport.pack`).

Theory of operation
-------------------
*Serving* (:func:`serve_actor`): one task reads requests in order and puts
them into the actor's mailbox, so a full mailbox stops the reading, the stream's
flow control fills up, and the remote teller waits: backpressure end to end.
An ask's reply slot gets a callback that hands the outcome to a writer task; at
most ``max_pending_asks`` asks are outstanding per stream (more stop the
reading too), so nothing here grows without bound.  Because the ref behind the
stream is the supervisor's ref, a restarted actor keeps serving the same
stream.

*Calling* (:func:`remote_ref`): ``tell``/``ask`` encode the request and queue
it for one writer task; only that task writes to the stream, so cancelling a
caller (an ``ask`` timing out) never leaves half a frame on the wire.  A reader
task matches replies to pending asks by id.  When the stream ends, breaks or
carries garbage, every pending ask fails at once with
:class:`ActorUnreachable` and the ref refuses further messages.  A
:class:`~midswarm.transport.ProtocolError` closes that stream only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import attrs
import outcome
import trio

from .._util import open_service_nursery
from ..transport import MessageStream, ProtocolError, decode, encode, message, pack, unpack
from ._actor import Actor, ActorRef, LocalActorRef, _Ask, _Reply, check_timeout
from ._errors import (
    ActorError,
    ActorFailed,
    ActorStopped,
    ActorUnreachable,
    AskTimeout,
    exception_type_name,
)
from ._spec import ChildSpec
from ._supervisor import open_supervisor

__all__ = ["ActorRequest", "ActorReply", "BoxedError", "serve_actor", "remote_ref"]

_KINDS = ("tell", "ask")
#: Frames up to this size may be written by the calling task itself (shielded,
#: so they must be quick to write); larger ones always go through the writer.
_DIRECT_SEND_LIMIT = 64 * 1024
_ENCODINGS = ("message", "data", "")


@attrs.frozen
class BoxedError:
    """An :class:`ActorFailed` (``kind="failed"``) or :class:`ActorStopped`
    (``kind="stopped"``) on the wire."""

    kind: Literal["failed", "stopped"] = attrs.field(
        validator=attrs.validators.in_(("failed", "stopped")))
    actor: str
    exc_type: str = ""
    message: str = ""
    traceback: str = ""

    @classmethod
    def box(cls, error: BaseException, actor: str) -> BoxedError:
        if isinstance(error, ActorFailed):
            return cls("failed", error.actor, error.exc_type, error.message, error.traceback)
        if isinstance(error, ActorStopped):
            return cls("stopped", error.actor, "", error.reason)
        return cls("failed", actor, exception_type_name(error), str(error))

    def unbox(self) -> ActorError:
        if self.kind == "stopped":
            return ActorStopped(self.actor, self.message)
        return ActorFailed(self.actor, self.exc_type, self.message, self.traceback)


@message("actor.request")
@attrs.frozen
class ActorRequest:
    id: int
    kind: str = attrs.field(validator=attrs.validators.in_(_KINDS))
    encoding: str = attrs.field(validator=attrs.validators.in_(_ENCODINGS[:2]))
    payload: bytes


@message("actor.reply")
@attrs.frozen
class ActorReply:
    id: int
    ok: bool
    encoding: str = attrs.field(default="", validator=attrs.validators.in_(_ENCODINGS))
    payload: bytes = b""
    error: BoxedError | None = None


def encode_payload(obj: Any) -> tuple[str, bytes]:
    """``("message", envelope)`` for a registered message, else ``("data", msgpack)``.

    Raises :class:`TypeError` for what neither can carry.
    """
    if attrs.has(type(obj)):
        return "message", encode(obj)
    return "data", pack(obj)


def decode_payload(encoding: str, payload: bytes) -> Any:
    """Inverse of :func:`encode_payload`; raises :class:`ProtocolError`."""
    if encoding == "message":
        return decode(payload)
    return unpack(payload)


async def _close_quietly(stream: MessageStream) -> None:
    try:
        await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


# --------------------------------------------------------------------- serving

async def serve_actor(target: ActorRef | ChildSpec | Callable[[], Actor],
                      stream: MessageStream, *, max_pending_asks: int = 256) -> None:
    """Serve an actor's mailbox from ``stream`` until the stream ends.

    ``target`` is a ref from :meth:`Supervisor.start_child` (the usual case: the
    binding survives restarts of that actor), or a :class:`ChildSpec` or actor
    factory, which is then run for the duration of the call under a private
    ``one_for_one`` supervisor with default settings.

    Requests are put into the mailbox in stream order; asks are answered on
    the stream in the order they complete.  Returns after the peer closes its
    side (and every ask already accepted has been answered), or after the
    served actor is gone for good (the peer is told, then the stream closes).
    Raises :class:`~midswarm.transport.ProtocolError` for garbage on the
    stream, after closing it, and :class:`trio.BrokenResourceError` /
    :class:`trio.ClosedResourceError` if the stream broke.  A private
    supervisor that gives up raises :class:`RestartIntensityExceeded`.  The
    stream is closed when this returns or raises.
    """
    if isinstance(max_pending_asks, bool) or not isinstance(max_pending_asks, int) \
            or max_pending_asks < 1:
        raise ValueError(f"max_pending_asks must be a positive int; got {max_pending_asks!r}")
    if not isinstance(stream, MessageStream):
        raise TypeError(f"stream must be a MessageStream; got {type(stream).__name__}")
    if isinstance(target, LocalActorRef):
        await _StreamServer(target, stream, max_pending_asks).run()
        return
    if isinstance(target, ActorRef):
        raise TypeError("serve_actor() serves a local actor; got a ref to a remote one")
    spec = target if isinstance(target, ChildSpec) else ChildSpec(target)
    async with open_supervisor(name=f"serve_actor:{spec.name}") as sup:
        ref = await sup.start_child(spec)
        assert isinstance(ref, LocalActorRef)
        await _StreamServer(ref, stream, max_pending_asks).run()


class _StreamServer:
    def __init__(self, ref: LocalActorRef, stream: MessageStream, max_pending: int) -> None:
        self.ref = ref
        self.stream = stream
        self.done_send, self.done_recv = trio.open_memory_channel[
            tuple[int, outcome.Outcome[Any]]](max_pending)
        self.slots = trio.Semaphore(max_pending)
        self.max_pending = max_pending
        self.error: BaseException | None = None
        self.gone: ActorStopped | None = None

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_replies, nursery.cancel_scope)
                await self._read_requests(nursery.cancel_scope)
        finally:
            await _close_quietly(self.stream)
        if self.error is not None:
            raise self.error

    def _fail(self, exc: BaseException, scope: trio.CancelScope) -> None:
        if self.error is None:
            self.error = exc
        scope.cancel()

    def _forward_reply(self, reply: _Reply, result: outcome.Outcome[Any]) -> None:
        # Runs inside the actor's loop when it answers: must never raise.
        # When no reply is queued ahead and the stream can take the frame
        # without waiting, write it from here: one scheduling hop less on the
        # reply's path.  Otherwise (or on any error) the writer task sends it.
        if self.done_recv.statistics().current_buffer_used == 0:
            try:
                if self.stream.send_message_nowait(self._encode_reply(reply.tag, result)):
                    self.slots.release()
                    return
            except Exception:
                pass  # the writer task will meet the same condition and report it
        try:
            self.done_send.send_nowait((reply.tag, result))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the stream is gone; nobody is left to tell

    async def _read_requests(self, scope: trio.CancelScope) -> None:
        receive = self.stream.receive_message
        ref = self.ref
        try:
            while True:
                try:
                    raw = await receive()
                except trio.EndOfChannel:
                    break
                req = decode(raw, ActorRequest)
                if (req.kind == "tell") != (req.id == 0) or req.id < 0:
                    raise ProtocolError(f"actor.request: a {req.kind} cannot have id {req.id}")
                msg = decode_payload(req.encoding, req.payload)
                if req.kind == "tell":
                    item = msg
                else:
                    # The non-blocking forms first: each checkpoint we skip is
                    # a scheduling round off the reply's critical path.
                    try:
                        self.slots.acquire_nowait()
                    except trio.WouldBlock:
                        await self.slots.acquire()
                    item = _Ask(msg, _Reply(self._forward_reply, req.id))
                if not ref.put_nowait(item):
                    await ref.put(item)
        except ActorStopped as exc:
            self.gone = exc
        except ProtocolError as exc:
            self._fail(exc, scope)
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(exc, scope)
            return
        # No more requests: let the writer finish the outstanding replies.
        for _ in range(self.max_pending):
            await self.slots.acquire()
        self.done_send.close()

    async def _write_replies(self, scope: trio.CancelScope) -> None:
        try:
            async for ask_id, result in self.done_recv:
                await self.stream.send_message(self._encode_reply(ask_id, result))
                self.slots.release()
            if self.gone is not None:
                notice = ActorReply(0, False, error=BoxedError.box(self.gone, self.ref.name))
                await self.stream.send_message(encode(notice))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(exc, scope)

    def _encode_reply(self, ask_id: int, result: outcome.Outcome[Any]) -> bytes:
        if isinstance(result, outcome.Value):
            try:
                encoding, payload = encode_payload(result.value)
                data = encode(ActorReply(ask_id, True, encoding, payload))
                if len(data) <= self.stream.max_message_size:
                    return data
                why: BaseException = ValueError(
                    f"the reply ({len(data)} bytes) exceeds max_message_size="
                    f"{self.stream.max_message_size}")
            except (TypeError, ValueError) as exc:
                why = exc
            error = BoxedError("failed", self.ref.name, exception_type_name(why),
                               f"the reply could not be sent over the stream: {why}")
        else:
            assert isinstance(result, outcome.Error)
            error = BoxedError.box(result.error, self.ref.name)
        return encode(ActorReply(ask_id, False, error=error))


# --------------------------------------------------------------------- calling

class RemoteActorRef(ActorRef):
    """A ref whose messages travel over a stream; made by :func:`remote_ref`."""

    def __init__(self, stream: MessageStream, name: str) -> None:
        self.name = name
        self._stream = stream
        # Frames queued for the writer: only when a caller could not write
        # itself (another write in progress, or a large frame).
        self._requests_send, self._requests_recv = trio.open_memory_channel[bytes](16)
        self._queued = 0
        self._send_lock = trio.StrictFIFOLock()
        self._pending: dict[int, _Reply] = {}
        self._next_id = 1
        self._broken: Callable[[], ActorError] | None = None
        self._closing = False  # the block exited normally: flushing, then closing
        self._reader_scope = trio.CancelScope()

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
        for reply in pending.values():
            reply.resolve(outcome.Error(make_error()))
        self._requests_recv.close()

    async def _enqueue(self, data: bytes) -> None:
        if self._broken is not None or self._closing:
            await trio.lowlevel.checkpoint()
            raise self._refuse()
        if (self._queued == 0 and len(data) <= _DIRECT_SEND_LIMIT
                and not self._send_lock.locked()):
            # Fast path, one scheduling round shorter: nothing is queued ahead
            # of us, so we may write ourselves.  Wait for room while still
            # cancellable (nothing has been written yet), then write the frame
            # shielded, so a cancelled caller never leaves half a frame behind.
            self._send_lock.acquire_nowait()
            try:
                await self._stream.stream.wait_send_all_might_not_block()
                with trio.CancelScope(shield=True):
                    await self._stream.send_message(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._stream_broke(exc)
                raise self._refuse() from None
            finally:
                self._send_lock.release()
            return
        self._queued += 1
        try:
            await self._requests_send.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._refuse() from None
        except BaseException:
            self._queued -= 1
            raise

    def _stream_broke(self, exc: BaseException) -> None:
        reason = f"the stream broke while sending: {exc!r}"
        self._break(lambda: ActorUnreachable(self.name, reason))

    def _request(self, ask_id: int, kind: str, msg: Any) -> bytes:
        encoding, payload = encode_payload(msg)
        data = encode(ActorRequest(ask_id, kind, encoding, payload))
        if len(data) > self._stream.max_message_size:
            raise ValueError(f"message of {len(data)} bytes exceeds the stream's "
                             f"max_message_size={self._stream.max_message_size}")
        return data

    async def tell(self, msg: Any) -> None:
        await self._enqueue(self._request(0, "tell", msg))

    async def ask(self, msg: Any, timeout: float | None = None) -> Any:
        check_timeout(timeout)
        ask_id = self._next_id
        self._next_id += 1
        data = self._request(ask_id, "ask", msg)
        reply = _Reply()
        # Registered before the request can leave, so even an instant reply
        # finds it.
        self._pending[ask_id] = reply
        try:
            if timeout is None:
                await self._enqueue(data)
                return await reply.wait()
            with trio.move_on_after(timeout):
                await self._enqueue(data)
                return await reply.wait()
        finally:
            self._pending.pop(ask_id, None)
        raise AskTimeout(self.name, timeout)

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
            self._stream_broke(exc)
        self._reader_scope.cancel()

    async def _read_replies(self) -> None:
        reason = "the serving side closed the stream"
        receive = self._stream.receive_message
        try:
            while True:
                try:
                    raw = await receive()
                except trio.EndOfChannel:
                    break
                reply = decode(raw, ActorReply)
                if reply.id == 0:
                    gone = reply.error or BoxedError("stopped", self.name)
                    self._break(gone.unbox)
                    return
                if reply.id >= self._next_id or reply.id < 0:
                    raise ProtocolError(f"actor.reply for id {reply.id}, which was never asked")
                waiter = self._pending.pop(reply.id, None)
                if waiter is None:
                    continue  # the ask timed out or was cancelled; drop the late reply
                if reply.ok:
                    waiter.resolve(outcome.Value(decode_payload(reply.encoding, reply.payload)))
                else:
                    error = reply.error or BoxedError("failed", self.name, "", "no error given")
                    waiter.resolve(outcome.Error(error.unbox()))
        except ProtocolError as exc:
            reason = f"protocol error on the stream: {exc}"
            await _close_quietly(self._stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = f"the stream broke: {exc!r}"
        self._break(lambda: ActorUnreachable(self.name, reason))

    def __repr__(self) -> str:
        return f"<RemoteActorRef {self.name!r}>"


@asynccontextmanager
async def remote_ref(stream: MessageStream, name: str = "remote") -> AsyncIterator[ActorRef]:
    """An :class:`ActorRef` whose ``tell``/``ask`` travel over ``stream``.

    Use as ``async with remote_ref(stream, name="matcher") as ref:``; the block
    hosts the reader and writer tasks.  ``name`` is used in errors raised on
    this side.  The ref takes over the stream and closes it when the block
    exits: after a normal exit, requests already queued are sent first and the
    stream is half-closed; asks still waiting then fail with
    :class:`ActorUnreachable`.  Raises :class:`TypeError` if ``stream`` is not a
    :class:`~midswarm.transport.MessageStream`.
    """
    if not isinstance(stream, MessageStream):
        raise TypeError(f"stream must be a MessageStream; got {type(stream).__name__}")
    ref = RemoteActorRef(stream, name)
    try:
        async with open_service_nursery() as nursery:

            async def read() -> None:
                with ref._reader_scope:
                    await ref._read_replies()

            nursery.start_soon(read)
            nursery.start_soon(ref._write_requests)
            try:
                yield ref
            except BaseException:
                nursery.cancel_scope.cancel()
                raise
            # Normal exit: the writer sends what is queued, half-closes the
            # stream and then stops the reader.
            ref._closing = True
            ref._requests_send.close()
    finally:
        ref._break(lambda: ActorUnreachable(name, "the remote_ref block has exited"))
        await _close_quietly(stream)
