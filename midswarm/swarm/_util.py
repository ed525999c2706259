"""Small Trio helpers of the swarm."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["open_service_nursery", "flatten_errors"]


@asynccontextmanager
async def open_service_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery whose body's own exception leaves as itself, not in a group.

    Meant for nurseries of background services that do not raise (they
    handle their own errors): then a one-member group at exit can only hold
    what the body raised.  Any other group passes through untouched.
    """
    body_exc: BaseException | None = None
    unwrapped: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            except BaseException as exc:
                body_exc = exc
                raise
    except BaseExceptionGroup as group:
        if (body_exc is None or len(group.exceptions) != 1
                or group.exceptions[0] is not body_exc or isinstance(body_exc, trio.Cancelled)):
            raise
        unwrapped = body_exc
    if unwrapped is not None:
        raise unwrapped


def flatten_errors(exc: BaseException) -> list[BaseException]:
    """The leaf exceptions of ``exc`` (itself, when it is not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for sub in exc.exceptions:
            out.extend(flatten_errors(sub))
        return out
    return [exc]
