"""What the behaviours share: running a kernel (in a worker thread or in place), and
warm-up samples."""

from __future__ import annotations

import functools
import numbers
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numba
import trio

from .._util import use_batch_scheduling
from ..transport import decode, encode

__all__ = ["INLINE_BELOW", "check_threads", "forget_kernel_timings", "run_kernel", "wire_copy"]

T = TypeVar("T")


def check_threads(value: Any, name: str = "parameters['threads']") -> int:
    """A kernel thread count: an int from 1 to numba's configured maximum."""
    limit = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or not 1 <= int(value) <= limit:
        raise ValueError(f"{name} must be an int from 1 to {limit}, got {value!r}")
    return int(value)


#: A kernel whose previous call took less than this many seconds runs on the
#: event loop's own thread.  Handing a call to a worker thread and back costs
#: two cross-thread wake-ups -- about 0.3 ms on a 2-core VM, with the event
#: loop's thread idle (and slower to wake) meanwhile -- more than a small
#: kernel itself; blocking the loop for under a millisecond delays its other
#: streams less than that.
INLINE_BELOW = 0.001

#: Seconds the previous call of each kernel took (see :func:`_kernel_key`).
_last_took: dict[Any, float] = {}

#: Worker threads already put under batch scheduling.
_batch = threading.local()


def _kernel_key(fn: Callable[..., Any]) -> Any:
    """What the timings of ``fn`` are filed under: the function itself, not a
    bound method or a partial of it (those are new objects at every call, and
    a bound method would keep its actor alive)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__func__", fn)


def _call_with_threads(threads: int, key: Any, fn: Callable[..., T], *args: Any) -> T:
    if not getattr(_batch, "done", False):
        # A kernel is throughput work: waking it must not preempt the event
        # loops of this agent or of a coordinator on the same machine.
        _batch.done = True
        use_batch_scheduling()
    numba.set_num_threads(threads)  # thread-local: affects this worker thread only
    return _timed(key, fn, *args)


def _timed(key: Any, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, its duration filed under ``key`` (raise or return)."""
    started = time.perf_counter()
    try:
        return fn(*args)
    finally:
        _last_took[key] = time.perf_counter() - started


async def run_kernel(threads: int, fn: Callable[..., T], *args: Any,
                     inline_below: float = INLINE_BELOW) -> T:
    """``fn(*args)`` with numba's parallel kernels using ``threads`` threads,
    in a Trio worker thread -- or, when ``fn``'s previous call took less than
    ``inline_below`` seconds, on the calling (event loop's) thread.

    The numba kernels release the GIL, so while a kernel runs in a worker
    thread the agent's event loop keeps serving its streams.  A short kernel
    is not worth the two thread hand-offs (see :data:`INLINE_BELOW`): it runs
    in place, blocking the loop for about as long as it took before.  The
    first call of a kernel, and every call after one that took
    ``inline_below`` or longer, goes to a worker thread.  ``inline_below=0``
    always uses a worker thread.  One thread per call is the behaviours'
    default: a swarm gets its parallelism from many agents, and on a busy
    machine a parallel region over small work mostly waits for descheduled
    threads.  A checkpoint before ``fn`` starts; not cancellable once
    started (the kernels cannot be interrupted): the caller's cancellation
    takes effect when it returns.
    """
    key = _kernel_key(fn)
    took = _last_took.get(key)
    if took is None or took >= inline_below:
        return await trio.to_thread.run_sync(functools.partial(
            _call_with_threads, threads, key, fn, *args))
    await trio.lowlevel.checkpoint()
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        return _timed(key, fn, *args)
    finally:
        numba.set_num_threads(before)


def forget_kernel_timings() -> None:
    """Send every kernel's next call to a worker thread (after a warm-up,
    whose small samples say nothing of the real tasks' size)."""
    _last_took.clear()


def wire_copy(msg: T) -> T:
    """``msg`` encoded and decoded again: what an agent receives from the wire.

    Warm-up tasks go through this so that the kernels see the dtypes and
    array layouts of real tasks -- numba compiles (or loads) one version of a
    kernel per combination of argument types.
    """
    return decode(encode(msg))  # type: ignore[no-any-return]
