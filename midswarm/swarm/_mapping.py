"""``Coordinator.map``: many tasks in, results out as they complete.

A *feeder* task, started in the coordinator's nursery (not in the caller's
async generator, which must not hold a nursery open across ``yield``), reads
the task iterable lazily and submits each task in its own task, at most
``concurrency`` at once.  Outcomes travel to the generator over a memory
channel of that capacity, so a slow consumer stops the feeder: nothing
accumulates without bound.  Closing the generator cancels the feeder.
"""

from __future__ import annotations

from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
)
from typing import Any

import outcome
import trio

__all__ = ["map_tasks"]

Submit = Callable[[Any, float | None], Awaitable[Any]]


class _SourceFailed:
    """The task iterable itself raised (always re-raised, never yielded)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


async def _aiter(tasks: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(tasks, AsyncIterable):
        async for task in tasks:
            yield task
    else:
        for task in tasks:
            yield task
            await trio.lowlevel.checkpoint()


async def _feed(submit: Submit, tasks: Iterable[Any] | AsyncIterable[Any], concurrency: int,
                timeout: float | None, send: trio.MemorySendChannel[tuple[int, Any]],
                scope: trio.CancelScope) -> None:
    slots = trio.Semaphore(concurrency)

    async def one(index: int, task: Any) -> None:
        try:
            result: outcome.Outcome[Any] = outcome.Value(await submit(task, timeout))
        except Exception as exc:
            result = outcome.Error(exc)
        try:
            await send.send((index, result))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            scope.cancel()  # the consumer is gone
        slots.release()

    with scope:
        async with send:
            failure: BaseException | None = None
            index = 0
            async with trio.open_nursery() as nursery:
                source = _aiter(tasks)
                while True:
                    await slots.acquire()
                    try:
                        task = await source.__anext__()
                    except StopAsyncIteration:
                        break
                    except Exception as exc:
                        failure = exc
                        break
                    nursery.start_soon(one, index, task)
                    index += 1
            if failure is not None:
                try:
                    await send.send((index, _SourceFailed(failure)))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass


async def map_tasks(submit: Submit, nursery: trio.Nursery,
                    tasks: Iterable[Any] | AsyncIterable[Any], *, concurrency: int,
                    ordered: bool, timeout: float | None, return_exceptions: bool
                    ) -> AsyncGenerator[Any, None]:
    """See :meth:`Coordinator.map`; ``submit(task, timeout)`` does one task."""
    send, receive = trio.open_memory_channel[tuple[int, Any]](concurrency)
    scope = trio.CancelScope()
    nursery.start_soon(_feed, submit, tasks, concurrency, timeout, send, scope)
    pending: dict[int, Any] = {}
    next_index = 0
    try:
        async with receive:
            async for index, result in receive:
                if ordered:
                    pending[index] = result
                else:
                    pending = {index: result}
                    next_index = index
                while next_index in pending:
                    item = pending.pop(next_index)
                    next_index += 1
                    if isinstance(item, _SourceFailed):
                        raise item.error
                    if isinstance(item, outcome.Error):
                        if not return_exceptions:
                            raise item.error
                        yield item.error
                    else:
                        yield item.unwrap()
    finally:
        scope.cancel()
