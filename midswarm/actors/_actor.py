"""Actors, references to them, and the local mailbox.

An actor's mailbox is the receive side of a bounded Trio memory channel that
belongs to its supervisor's child record, not to the actor instance: when the
supervisor replaces a crashed instance, the new one reads from the same
channel.  A :class:`ActorRef` holds the send side, so refs (and streams bound
to them) stay valid across restarts.

A ``tell`` puts the message itself in the channel; an ``ask`` puts an
:class:`_Ask` holding the message and a one-shot :class:`_Reply`.  The actor
loop resolves the reply with ``handle``'s return value, or with the boxed
failure if ``handle`` raised.  Whatever else happens to a message that was
accepted into a mailbox -- the actor is cancelled while handling it, the child
is removed while it is queued -- its reply is resolved with an error, so an
``ask`` never hangs on a message that will not be handled.

An idle actor may also read messages from one served stream itself (its
ref's ``feed``): see ``_child.py`` and ``_serve.py``.  Every put into the
mailbox first interrupts such a read, so mailbox messages never wait for the
stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import outcome
import trio

from ._errors import ActorStopped, AskTimeout

__all__ = ["Actor", "ActorRef", "Feed", "LocalActorRef", "check_timeout"]


class Actor:
    """Base class of actors.

    Subclasses implement :meth:`handle`; :meth:`on_start` and :meth:`on_stop`
    are optional.  The supervisor builds a fresh instance (through the child
    spec's factory) for every start and restart, so state kept on ``self`` is
    rebuilt from scratch after a crash.  One message is handled at a time.
    """

    _stop_requested: bool = False

    async def on_start(self) -> None:
        """Called before the first message.  Raising here fails the start."""

    async def handle(self, msg: Any) -> Any:
        """Handle one message.  The return value is the reply to an ``ask``.

        An exception escaping ``handle`` crashes this instance: the message's
        ``ask`` (if it was one) gets :class:`ActorFailed` and the supervisor
        decides what comes next.
        """
        raise NotImplementedError

    async def on_stop(self) -> None:
        """Called when the instance stops after a successful :meth:`on_start`.

        Runs after a graceful stop (within what is left of the child's
        ``shutdown`` grace), after :meth:`stop`, and after a crash (with a fresh
        ``shutdown`` grace).  Not called when the instance is cancelled outright:
        by its grace running out, or by cancellation of the supervisor.
        """

    def stop(self) -> None:
        """Finish the current message, then end this instance normally.

        Whether it is restarted then depends on its restart type: a permanent
        child is, a transient or temporary one is not.
        """
        self._stop_requested = True


class _Reply:
    """A one-shot slot for the answer to one ``ask``.

    At most one task waits on it.  ``callback``, if given, is called
    synchronously with the outcome when it is resolved (used to forward replies
    onto a stream without a task per ask).
    """

    __slots__ = ("_outcome", "_task", "_callback", "tag")

    def __init__(self, callback: Callable[[_Reply, outcome.Outcome[Any]], None] | None = None,
                 tag: Any = None) -> None:
        self._outcome: outcome.Outcome[Any] | None = None
        self._task: trio.lowlevel.Task | None = None
        self._callback = callback
        #: Whatever the creator wants the callback to see (an ask id).
        self.tag = tag

    @property
    def resolved(self) -> bool:
        return self._outcome is not None

    def resolve(self, result: outcome.Outcome[Any]) -> None:
        """Store the answer and wake the waiter.  Later calls are ignored."""
        if self._outcome is not None:
            return
        self._outcome = result
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task, result)
        if self._callback is not None:
            self._callback(self, result)

    def outcome(self) -> outcome.Outcome[Any] | None:
        return self._outcome

    async def wait(self) -> Any:
        """Wait for the answer; return it or raise the error it carries."""
        if self._outcome is not None:
            await trio.lowlevel.checkpoint()
            return self._outcome.unwrap()
        self._task = trio.lowlevel.current_task()

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)


class _Ask:
    """Mailbox item for an ``ask``: the message and where its answer goes."""

    __slots__ = ("msg", "reply")

    def __init__(self, msg: Any, reply: _Reply) -> None:
        self.msg = msg
        self.reply = reply


def check_timeout(timeout: float | None) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None; got {timeout!r}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds; got {timeout!r}")


class ActorRef:
    """A handle to send messages to an actor, wherever it runs.

    Local refs come from :meth:`Supervisor.start_child`; refs to actors at the
    other end of a stream come from :func:`remote_ref`.  A ref stays valid while
    its actor is restarted.
    """

    name: str

    async def tell(self, msg: Any) -> None:
        """Deliver ``msg`` without waiting for it to be handled.

        Waits while the mailbox (or the stream) is full.  Raises
        :class:`ActorStopped` if the actor is gone for good and
        :class:`ActorUnreachable` if the stream to it broke.
        """
        raise NotImplementedError

    async def ask(self, msg: Any, timeout: float | None = None) -> Any:
        """Deliver ``msg`` and return what the actor's ``handle`` returns.

        ``timeout`` (seconds, ``None`` for no limit) covers both waiting for
        room in the mailbox and waiting for the reply; on expiry
        :class:`AskTimeout` is raised.  Raises :class:`ActorFailed` if the actor
        crashed while handling this message, :class:`ActorStopped` if it was
        stopped or removed before handling it, and :class:`ActorUnreachable` if
        the stream to it broke.  Cancellation of the caller abandons the reply.
        """
        raise NotImplementedError


class Feed(Protocol):
    """A source an idle actor may read messages from itself, besides its mailbox
    (a stream served by ``serve_actor``): see ``_serve.py``."""

    async def next_item(self, receive: trio.MemoryReceiveChannel[Any]) -> Any:
        """The next message, from the mailbox ``receive`` or the feed.  A
        schedule point, and cancel-safe (nothing is taken when cancelled)."""
        ...

    def actor_gone(self) -> None:
        """The actor's instance has ended."""
        ...


class LocalActorRef(ActorRef):
    """A ref to an actor in this Trio run: the send side of its mailbox."""

    __slots__ = ("name", "_send", "closed_reason", "feed", "pull_scope", "pulling",
                 "interrupted")

    def __init__(self, name: str, send: trio.MemorySendChannel[Any]) -> None:
        self.name = name
        self._send = send
        #: Set by the supervisor when the mailbox is closed for good.
        self.closed_reason = "the actor has stopped"
        #: Where the idle actor also looks for messages (one served stream).
        self.feed: Feed | None = None
        #: While ``pulling`` (the actor waits on its feed), whatever enters the
        #: mailbox cancels ``pull_scope`` first, so the actor comes back for it.
        self.pull_scope: trio.CancelScope | None = None
        self.pulling = False
        #: ``pull_scope`` was cancelled (cheaper to test than ``cancel_called``).
        self.interrupted = False

    def interrupt_pull(self) -> None:
        """Make the actor stop waiting on its feed and look at its mailbox."""
        if self.pulling and self.pull_scope is not None:
            self.interrupted = True
            self.pull_scope.cancel()

    async def tell(self, msg: Any) -> None:
        if self.pulling:
            self.interrupt_pull()
        try:
            await self._send.send(msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorStopped(self.name, self.closed_reason) from None

    async def put(self, item: Any) -> None:
        """Enqueue a prepared mailbox item (used by the stream binding)."""
        await self.tell(item)

    def put_nowait(self, item: Any) -> bool:
        """Enqueue ``item`` if there is room at once; return whether it was.

        Raises :class:`ActorStopped` if the mailbox is closed for good.
        """
        if self.pulling:
            self.interrupt_pull()
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorStopped(self.name, self.closed_reason) from None
        return True

    async def ask(self, msg: Any, timeout: float | None = None) -> Any:
        check_timeout(timeout)
        reply = _Reply()
        if timeout is None:
            await self.tell(_Ask(msg, reply))
            return await reply.wait()
        with trio.move_on_after(timeout):
            await self.tell(_Ask(msg, reply))
            return await reply.wait()
        raise AskTimeout(self.name, timeout)

    def __repr__(self) -> str:
        return f"<LocalActorRef {self.name!r}>"
