"""Small helpers shared by the subpackages (transport, actors, swarm)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["flatten_errors", "open_service_nursery", "use_batch_scheduling"]


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


def use_batch_scheduling() -> bool:
    """Put the calling thread under Linux's ``SCHED_BATCH`` policy (threads it
    starts later inherit it); ``False`` where that is not available.

    A batch thread gets its fair share of the CPU but never preempts a running
    thread when it wakes up.  Agents use it for their kernels, and spawned
    agent processes for everything: a coordinator on the same machine then
    keeps its core until it waits by itself, instead of being descheduled
    between the sends of one scatter by the agent its first send woke.
    """
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None:
        return False
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError:
        return False
    return True
