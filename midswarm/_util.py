"""Small Trio helpers shared by the subpackages (transport, actors, swarm)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["open_service_nursery", "flatten_errors"]


@asynccontextmanager
async def open_service_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery whose body's own exception comes out as itself, not in a group.

    Only for nurseries whose tasks never raise anything but
    :class:`trio.Cancelled`: then a one-exception group at exit can only hold
    what the body raised, and unwrapping it hides nothing.  Any other group
    passes through untouched.
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
        if (body_exc is None or len(group.exceptions) != 1 or group.exceptions[0] is not body_exc
                or isinstance(body_exc, trio.Cancelled)):
            raise
        unwrapped = body_exc
    if unwrapped is not None:
        # Raised outside the except block, so the group does not become its
        # __context__ and its own cause/context stay as the body left them.
        raise unwrapped


def flatten_errors(exc: BaseException) -> list[BaseException]:
    """The leaf exceptions of ``exc`` (itself, when it is not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for sub in exc.exceptions:
            out.extend(flatten_errors(sub))
        return out
    return [exc]
