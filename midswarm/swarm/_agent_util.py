"""What the behaviours share: running a kernel in a worker thread, and warm-up samples."""

from __future__ import annotations

import functools
import numbers
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import numba
import trio

from .._util import use_batch_scheduling
from ..transport import decode, encode

__all__ = ["check_threads", "run_kernel", "wire_copy"]

T = TypeVar("T")


def check_threads(value: Any, name: str = "parameters['threads']") -> int:
    """A kernel thread count: an int from 1 to numba's configured maximum."""
    limit = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or not 1 <= int(value) <= limit:
        raise ValueError(f"{name} must be an int from 1 to {limit}, got {value!r}")
    return int(value)


#: Worker threads already put under batch scheduling.
_batch = threading.local()


def _call_with_threads(threads: int, fn: Callable[..., T], *args: Any) -> T:
    if not getattr(_batch, "done", False):
        # A kernel is throughput work: waking it must not preempt the event
        # loops of this agent or of a coordinator on the same machine.
        _batch.done = True
        use_batch_scheduling()
    numba.set_num_threads(threads)  # thread-local: affects this worker thread only
    return fn(*args)


async def run_kernel(threads: int, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a Trio worker thread whose numba parallel kernels use
    ``threads`` threads.

    The numba kernels release the GIL, so the agent's event loop keeps serving
    its streams meanwhile.  One thread per call is the behaviours' default: a
    swarm gets its parallelism from many agents, and on a busy machine a
    parallel region over small work mostly waits for descheduled threads.
    Not cancellable once started (the kernels cannot be interrupted); the
    caller's cancellation takes effect when it returns.
    """
    return await trio.to_thread.run_sync(functools.partial(_call_with_threads, threads, fn,
                                                           *args))


def wire_copy(msg: T) -> T:
    """``msg`` encoded and decoded again: what an agent receives from the wire.

    Warm-up tasks go through this so that the kernels see the dtypes and
    array layouts of real tasks -- numba compiles (or loads) one version of a
    kernel per combination of argument types.
    """
    return decode(encode(msg))  # type: ignore[no-any-return]
