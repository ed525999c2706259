"""Errors raised by the actor runtime.

Every error a caller of :meth:`ActorRef.tell` / :meth:`ActorRef.ask` can see is an
:class:`ActorError`, so ``except ActorError`` catches "the actor could not give me
an answer" whatever the reason.  Failures are *boxed*: :class:`ActorFailed`
carries the actor's name, the exception's type name, its message and the
traceback text as plain strings, so the same object can be rebuilt on the other
side of a stream.
"""

from __future__ import annotations

import traceback as _traceback

__all__ = [
    "ActorError",
    "ActorFailed",
    "ActorStopped",
    "ActorUnreachable",
    "AskTimeout",
    "RestartIntensityExceeded",
    "exception_type_name",
]


class ActorError(Exception):
    """Base class of the errors the actor runtime raises to callers."""


def exception_type_name(exc: BaseException) -> str:
    """``ValueError`` for builtins, ``package.module.Name`` for everything else."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


class ActorFailed(ActorError):
    """An actor raised while handling a message (or while starting or stopping).

    Attributes, all plain strings so they can cross a stream unchanged:

    ``actor``
        the name of the actor that failed;
    ``exc_type``
        the exception's type (``"ValueError"``, ``"mypkg.errors.Oops"``);
    ``message``
        ``str()`` of the exception;
    ``traceback``
        the formatted traceback text, from the process where it happened.

    The runtime raises a fresh instance in every task that needs to see a failure,
    so one failure reported to several callers never shares a ``__traceback__``.
    """

    def __init__(self, actor: str, exc_type: str, message: str, traceback: str = "") -> None:
        super().__init__(actor, exc_type, message, traceback)
        self.actor = actor
        self.exc_type = exc_type
        self.message = message
        self.traceback = traceback

    @classmethod
    def from_exception(cls, actor: str, exc: BaseException) -> ActorFailed:
        """Box ``exc``, raised by the actor called ``actor``."""
        text = "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(actor, exception_type_name(exc), str(exc), text)

    def copy(self) -> ActorFailed:
        """A fresh instance with the same fields (to raise in another task)."""
        return type(self)(self.actor, self.exc_type, self.message, self.traceback)

    def __str__(self) -> str:
        if self.message:
            return f"actor {self.actor!r} failed: {self.exc_type}: {self.message}"
        return f"actor {self.actor!r} failed: {self.exc_type}"

    def __repr__(self) -> str:
        return (f"ActorFailed(actor={self.actor!r}, exc_type={self.exc_type!r}, "
                f"message={self.message!r})")


class ActorStopped(ActorError):
    """The actor is not running and will not handle the message.

    Raised by ``tell``/``ask`` on a ref whose actor was removed from its
    supervisor (a temporary child that ended, a transient child that finished
    normally, a supervisor that shut down), and delivered to every ``ask`` that
    was still queued, or still being handled, when that happened.
    """

    def __init__(self, actor: str, reason: str = "the actor has stopped") -> None:
        super().__init__(actor, reason)
        self.actor = actor
        self.reason = reason

    def __str__(self) -> str:
        return f"actor {self.actor!r} cannot handle the message: {self.reason}"


class ActorUnreachable(ActorError):
    """The stream to a remote actor broke or was closed.

    Every ``ask`` waiting for a reply on that stream gets this error at once, and
    every later ``tell``/``ask`` on the ref raises it.  Whether a message sent
    before the break was handled on the other side is unknown.
    """

    def __init__(self, actor: str, reason: str) -> None:
        super().__init__(actor, reason)
        self.actor = actor
        self.reason = reason

    def __str__(self) -> str:
        return f"remote actor {self.actor!r} is unreachable: {self.reason}"


class AskTimeout(ActorError, TimeoutError):
    """No reply to an ``ask`` arrived within its ``timeout``.

    The message itself is not withdrawn: if it was delivered, the actor still
    handles it, and its reply is discarded.
    """

    def __init__(self, actor: str, timeout: float) -> None:
        super().__init__(actor, timeout)
        self.actor = actor
        self.timeout = timeout

    def __str__(self) -> str:
        return f"no reply from actor {self.actor!r} within {self.timeout:g} s"


class RestartIntensityExceeded(ActorError):
    """A supervisor saw more than ``max_restarts`` restarts within ``within`` seconds.

    It has stopped all its children (in reverse start order) and fails to its
    parent: a nested supervisor's parent handles this like any child failure; the
    outermost ``open_supervisor`` block raises it.  ``last_failure`` is the boxed
    failure (or ``None`` for a normal exit of a permanent child) that tipped the
    count over.
    """

    def __init__(self, supervisor: str, child: str, max_restarts: int, within: float,
                 last_failure: ActorFailed | None) -> None:
        super().__init__(supervisor, child, max_restarts, within, last_failure)
        self.supervisor = supervisor
        self.child = child
        self.max_restarts = max_restarts
        self.within = within
        self.last_failure = last_failure

    def __str__(self) -> str:
        cause = f"; last: {self.last_failure}" if self.last_failure is not None else ""
        return (f"supervisor {self.supervisor!r} gave up: more than {self.max_restarts} "
                f"restarts within {self.within:g} s (child {self.child!r}{cause})")
