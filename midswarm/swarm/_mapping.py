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
from contextlib import aclosing
from typing import Any

import outcome
import trio

__all__ = ["TaskMapping", "map_tasks"]

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


class TaskMapping:
    """``map`` and ``gather`` over a class's ``submit``: shared by the embedded
    :class:`~midswarm.swarm.Coordinator` and the remote
    :class:`~midswarm.swarm.RemoteCoordinator`."""

    async def submit(self, task: Any, *, timeout: float | None = None,
                     agent: str | None = None) -> Any:
        raise NotImplementedError

    def _map_nursery(self) -> trio.Nursery:
        """Where ``map`` runs its feeder; raises if closed."""
        raise NotImplementedError

    async def map(self, tasks: Iterable[Any] | AsyncIterable[Any], *,
                  concurrency: int = 64, ordered: bool = False, timeout: float | None = None,
                  return_exceptions: bool = False) -> AsyncGenerator[Any, None]:
        """Submit every task and yield the results.

        At most ``concurrency`` tasks are submitted at once (and each waits for
        a credit, so the agents' credits bound what is really in flight); the
        iterable is read lazily.  Results come in completion order, or in
        input order with ``ordered=True`` (then up to ``concurrency`` finished
        results wait for an earlier one).  A task's error is raised from the
        iteration -- after which the remaining tasks are abandoned -- or, with
        ``return_exceptions=True``, yielded in place of its result.
        ``timeout`` applies to each task.  Leaving the loop early abandons the
        tasks not yet done: close the iterator promptly (``async with
        contextlib.aclosing(coord.map(...))``) to stop submitting at once.
        """
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        nursery = self._map_nursery()

        def submit(task: Any, limit: float | None) -> Awaitable[Any]:
            return self.submit(task, timeout=limit)

        async with aclosing(map_tasks(submit, nursery, tasks, concurrency=concurrency,
                                      ordered=ordered, timeout=timeout,
                                      return_exceptions=return_exceptions)) as results:
            async for result in results:
                yield result

    async def gather(self, tasks: Iterable[Any] | AsyncIterable[Any], *,
                     timeout: float | None = None, concurrency: int = 64) -> list[Any]:
        """Every task's result, in task order (``map(..., ordered=True)`` into a
        list); raises the first task error.  Shaped like the ``scatter`` a
        :class:`~midswarm.swarm.ParameterServer` takes."""
        return [result async for result in self.map(tasks, ordered=True, timeout=timeout,
                                                    concurrency=concurrency)]
