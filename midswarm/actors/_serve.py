"""Serving an actor's mailbox from a message stream (:func:`serve_actor`).

Theory of operation
-------------------
Requests on the stream (see ``_wire.py``) are read in order by whoever holds
the stream's *read role*: the server's reader task, or the served actor's own
task.

The reader task puts what it reads into the actor's mailbox, so a full mailbox
stops the reading, the stream's flow control fills up, and the remote teller
waits: backpressure end to end.

That costs the actor a scheduling round per request (the reader task runs,
then the actor), so an idle actor with an empty mailbox takes the role over
and reads the stream itself: it is then the task the transport wakes when a
request arrives, and it handles the request at once (:meth:`next_item`).  It
takes the role only from an idle reader task (one waiting on the stream with
nothing in hand, which it cancels: receiving is cancel-safe, no bytes are
lost), so requests are still handled in stream order; and it keeps the role
until its instance ends, when it hands it back.  Anything put into the mailbox
(a local tell, another stream's request) interrupts the actor's read of the
stream first, so mailbox items are never stuck behind a quiet stream.  What
the actor meets on the stream that is not a request -- its end, a break,
garbage -- it hands back to the reader task, which deals with it as if it had
read it itself.  One stream per actor at a time (the first one served) can be
read this way; others always go through the reader task.

An ask's reply slot gets a callback that runs in the actor's task when it
answers: it writes the reply itself when the stream takes it without waiting,
else hands it to a writer task.  At most ``max_pending_asks`` asks are
outstanding per stream (more stop the reading too), so nothing here grows
without bound.  Because the ref behind the stream is the supervisor's ref, a
restarted actor keeps serving the same stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import outcome
import trio

from ..transport import MessageStream, ProtocolError, encode
from ._actor import Actor, ActorRef, LocalActorRef, _Ask, _Reply
from ._errors import ActorStopped, exception_type_name
from ._spec import ChildSpec
from ._supervisor import open_supervisor
from ._wire import ActorReply, BoxedError, parse_request, reply_bytes

__all__ = ["serve_actor", "close_quietly"]

#: After a put into the mailbox interrupted the actor's read, it leaves the
#: stream to the reader task for this many messages at first; twice as many
#: after each interruption that follows, up to _COOLDOWN_MAX; back to the start
#: once it has read _COOLDOWN_RESET requests in a row itself.
_COOLDOWN = 16
_COOLDOWN_MAX = 256
_COOLDOWN_RESET = 64

#: What ends a stream for reading: the actor here hands the stream back to the
#: reader task when it meets one; a ref (``_remote.py``) breaks on one.
_STREAM_ENDS = (trio.EndOfChannel, ProtocolError, trio.BrokenResourceError,
                trio.ClosedResourceError)


async def close_quietly(stream: MessageStream) -> None:
    """Close ``stream``, ignoring that it is already broken or closed."""
    try:
        await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def serve_actor(target: ActorRef | ChildSpec | Callable[[], Actor],
                      stream: MessageStream, *, max_pending_asks: int = 256) -> None:
    """Serve an actor's mailbox from ``stream`` until the stream ends.

    ``target`` is a ref from :meth:`Supervisor.start_child` (the usual case: the
    binding survives restarts of that actor), or a :class:`ChildSpec` or actor
    factory, which is then run for the duration of the call under a private
    ``one_for_one`` supervisor with default settings.

    Requests are handled in stream order; asks are answered on the stream in
    the order they complete.  Returns after the peer closes its side (and every
    ask already accepted has been answered), or after the served actor is gone
    for good (the peer is told, then the stream closes).  Raises
    :class:`~midswarm.transport.ProtocolError` for garbage on the stream, after
    closing it, and :class:`trio.BrokenResourceError` /
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
    """One served stream: its reader and writer tasks, and the actor's side of
    the read role (the :class:`~midswarm.actors._actor.Feed` of its ref)."""

    def __init__(self, ref: LocalActorRef, stream: MessageStream, max_pending: int) -> None:
        self.ref = ref
        self.stream = stream
        self.done_send, self.done_recv = trio.open_memory_channel[
            tuple[int, outcome.Outcome[Any]]](max_pending)
        self.slots = trio.Semaphore(max_pending)
        self.max_pending = max_pending
        #: Replies handed to the writer task and not yet written.
        self.queued_replies = 0
        self.error: BaseException | None = None
        self.gone: ActorStopped | None = None
        #: Who reads the stream: the reader task or the actor's task.
        self.role: Literal["reader", "actor"] = "reader"
        #: Around the reader task's read while it waits with nothing in hand.
        self.idle_read: trio.CancelScope | None = None
        #: The actor's task while it waits to be handed the role.
        self.taker: trio.lowlevel.Task | None = None
        #: What the actor met on the stream, for the reader task to deal with.
        self.handed_back: BaseException | None = None
        self.role_back = trio.lowlevel.ParkingLot()
        #: Messages the actor leaves the stream to the reader task for, after
        #: an interruption; the next such pause; requests read since the
        #: actor last took the role.
        self.cooldown = 0
        self.backoff = _COOLDOWN
        self.pulled = 0
        #: The actor handled a request it read: it yields before the next read.
        self.yield_due = False

    async def run(self) -> None:
        if self.ref.feed is None:
            self.ref.feed = self
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_replies, nursery.cancel_scope)
                await self._read_requests(nursery.cancel_scope)
        finally:
            self._stop_feeding()
            await close_quietly(self.stream)
        if self.error is not None:
            raise self.error

    def _fail(self, exc: BaseException, scope: trio.CancelScope) -> None:
        if self.error is None:
            self.error = exc
        scope.cancel()

    def _stop_feeding(self) -> None:
        """The actor reads this stream no more (it is ending)."""
        if self.ref.feed is self:
            self.ref.feed = None
            self.ref.interrupt_pull()  # a pull in progress is ours

    # ------------------------------------------------- the actor's side (Feed)

    async def next_item(self, receive: trio.MemoryReceiveChannel[Any]) -> Any:
        """The actor's next message: from its mailbox if there is one, else read
        from the stream by the actor's own task when it holds the read role (or
        can take it over), else from the mailbox once something arrives.  A
        schedule point, like a mailbox receive.

        Runs in the actor's task, inside its ``ref.pull_scope``: while
        ``ref.pulling`` a put into the mailbox cancels that scope, and the
        :class:`trio.Cancelled` unwinds to the actor's loop (nothing was taken).
        The actor then hands the role back and leaves the stream to the reader
        task for a number of messages (see :data:`_COOLDOWN`): an actor that
        also gets messages from elsewhere does not pay for an interruption
        each time.
        """
        ref = self.ref
        if self.yield_due:
            # A schedule point per message, taken after the previous reply
            # went out: requests that arrive together must not let the actor
            # run without yielding.
            self.yield_due = False
            await trio.lowlevel.cancel_shielded_checkpoint()
        while True:
            if ref.feed is not self or (self.role == "reader" and (
                    self.cooldown > 0 or self.idle_read is None or self.slots.value == 0)):
                # This stream is ending, or the reader task has a request in
                # hand, or waits for an ask slot, or we were interrupted
                # lately: it reads, we wait on the mailbox.
                if self.cooldown > 0:
                    self.cooldown -= 1
                return await receive.receive()
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                item = receive.receive_nowait()
            except trio.WouldBlock:
                pass
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return item
            if self.role == "reader":
                await self._take_over()
                continue  # that was a schedule point: look at the mailbox again
            if self.slots.value == 0:
                # Every ask slot is taken: the reader task waits for one, and
                # the actor serves its mailbox meanwhile.
                self._hand_back(None)
                return await receive.receive()
            # (A put that interrupts us while the stream aborts itself over
            # an oversized frame leaves the reader task an ended stream
            # rather than the ProtocolError: the stream is closed either way.)
            ref.pulling = True
            try:
                raw = await self.stream.receive_message()
                ask_id, _, msg = parse_request(raw)
            except _STREAM_ENDS as exc:
                self._hand_back(exc)  # the actor reads its mailbox only from now on
                return await receive.receive()
            except trio.Cancelled:
                self._hand_back(None)
                self._interrupted()
                raise
            finally:
                ref.pulling = False
            self.yield_due = True
            self.pulled += 1
            if self.pulled == _COOLDOWN_RESET:
                self.backoff = _COOLDOWN
            if ask_id == 0:
                return msg
            self.slots.acquire_nowait()  # only the role's holder takes slots
            return _Ask(msg, _Reply(self._forward_reply, ask_id))

    async def _take_over(self) -> None:
        """Cancel the reader task's idle read and wait to be handed the role (or
        for the wait to be interrupted)."""
        assert self.idle_read is not None
        self.taker = trio.lowlevel.current_task()
        self.idle_read.cancel()

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            self.taker = None
            return trio.lowlevel.Abort.SUCCEEDED

        self.ref.pulling = True
        try:
            await trio.lowlevel.wait_task_rescheduled(abort)
        except trio.Cancelled:
            self._interrupted()
            raise
        finally:
            self.ref.pulling = False
        self.pulled = 0

    def _interrupted(self) -> None:
        """A put into the mailbox interrupted the actor's wait on the stream:
        leave the stream to the reader task for a while, longer each time the
        actor is interrupted again soon after taking the role back."""
        self.cooldown = self.backoff
        self.backoff = min(2 * self.backoff, _COOLDOWN_MAX)

    def actor_gone(self) -> None:
        """The actor's instance ended: the reader task reads again."""
        self.taker = None
        if self.role == "actor":
            self._hand_back(None)

    def _hand_back(self, exc: BaseException | None) -> None:
        if exc is not None:
            # The stream is finished (or unusable): read it no more.
            self.handed_back = exc
            if self.ref.feed is self:
                self.ref.feed = None
        self.role = "reader"
        self.role_back.unpark_all()

    # ------------------------------------------------- the reader task

    async def _read_requests(self, scope: trio.CancelScope) -> None:
        receive = self.stream.receive_message
        ref = self.ref
        try:
            while True:
                if self.role == "actor":
                    await self.role_back.park()
                    continue
                if self.handed_back is not None:
                    exc, self.handed_back = self.handed_back, None
                    raise exc
                if ref.feed is self and self.cooldown == 0:
                    # The actor may take the role while we wait for data.
                    raw = None
                    try:
                        with trio.CancelScope() as self.idle_read:
                            raw = await receive()
                    finally:
                        self.idle_read = None
                    if raw is None:
                        self._give_role()
                        continue
                else:
                    raw = await receive()
                ask_id, _, msg = parse_request(raw)
                if ask_id == 0:
                    item = msg
                else:
                    # The non-blocking forms first: each checkpoint we skip is
                    # a scheduling round off the reply's critical path.
                    try:
                        self.slots.acquire_nowait()
                    except trio.WouldBlock:
                        await self.slots.acquire()
                    item = _Ask(msg, _Reply(self._forward_reply, ask_id))
                try:
                    if not ref.put_nowait(item):
                        await ref.put(item)
                except ActorStopped as exc:
                    if type(item) is _Ask:
                        # Answered with the refusal: that also frees its slot,
                        # which the wait for outstanding replies below counts.
                        item.reply.resolve(outcome.Error(exc))
                    raise
        except trio.EndOfChannel:
            pass
        except ActorStopped as exc:
            self.gone = exc
        except ProtocolError as exc:
            self._fail(exc, scope)
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(exc, scope)
            return
        finally:
            self._stop_feeding()
        # No more requests: let the writer finish the outstanding replies.
        for _ in range(self.max_pending):
            await self.slots.acquire()
        self.done_send.close()

    def _give_role(self) -> None:
        """Our idle read was cancelled: hand the role to the actor if it still
        waits for it."""
        task, self.taker = self.taker, None
        if task is not None:
            self.role = "actor"
            trio.lowlevel.reschedule(task)

    # ------------------------------------------------- replies

    def _forward_reply(self, reply: _Reply, result: outcome.Outcome[Any]) -> None:
        # Runs inside the actor's loop when it answers: must never raise.
        # When no reply is queued ahead and the stream can take the frame
        # without waiting, write it from here: one scheduling hop less on the
        # reply's path.  Otherwise (or on any error) the writer task sends it.
        if self.queued_replies == 0:
            try:
                if self.stream.send_message_nowait(self._encode_reply(reply.tag, result)):
                    self.slots.release()
                    return
            except Exception:
                pass  # the writer task will meet the same condition and report it
        try:
            self.done_send.send_nowait((reply.tag, result))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the stream is gone; nobody is left to tell
        self.queued_replies += 1

    async def _write_replies(self, scope: trio.CancelScope) -> None:
        try:
            async for ask_id, result in self.done_recv:
                await self.stream.send_message(self._encode_reply(ask_id, result))
                self.queued_replies -= 1
                self.slots.release()
            if self.gone is not None:
                notice = ActorReply(0, False, error=BoxedError.box(self.gone, self.ref.name))
                await self.stream.send_message(encode(notice))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(exc, scope)

    def _encode_reply(self, ask_id: int, result: outcome.Outcome[Any]) -> bytes:
        if isinstance(result, outcome.Value):
            try:
                data = reply_bytes(ask_id, result.value)
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
