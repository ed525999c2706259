"""run_kernel: a kernel goes to a worker thread unless its previous call was short."""

from __future__ import annotations

import functools
import threading
import time

import numba
import pytest
import trio

from midswarm.swarm._agent_util import _kernel_key, _last_took, run_kernel
from midswarm.swarm._agent_warmup import warm_up_agent

#: Generous bounds, so that a loaded machine cannot flip a decision.
FAST = 0.5
SLOW_LIMIT = 0.01
MAX_THREADS = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]


def _here() -> int:
    return threading.get_ident()


async def test_a_short_kernel_runs_in_place_after_its_first_call() -> None:
    def kernel() -> int:
        return threading.get_ident()

    loop_thread = threading.get_ident()
    assert await run_kernel(1, kernel, inline_below=FAST) != loop_thread  # not timed yet
    assert await run_kernel(1, kernel, inline_below=FAST) == loop_thread
    assert await run_kernel(1, kernel, inline_below=FAST) == loop_thread


async def test_a_long_kernel_stays_in_a_worker_thread() -> None:
    def kernel() -> int:
        time.sleep(2 * SLOW_LIMIT)
        return threading.get_ident()

    loop_thread = threading.get_ident()
    for _ in range(3):
        assert await run_kernel(1, kernel, inline_below=SLOW_LIMIT) != loop_thread


async def test_a_kernel_that_grew_slow_goes_back_to_a_worker_thread() -> None:
    delay = [0.0]

    def kernel() -> int:
        time.sleep(delay[0])
        return threading.get_ident()

    loop_thread = threading.get_ident()
    await run_kernel(1, kernel, inline_below=SLOW_LIMIT)
    assert await run_kernel(1, kernel, inline_below=SLOW_LIMIT) == loop_thread
    delay[0] = 2 * SLOW_LIMIT
    # This call cannot know it will be slow; the next one goes to a thread.
    assert await run_kernel(1, kernel, inline_below=SLOW_LIMIT) == loop_thread
    assert await run_kernel(1, kernel, inline_below=SLOW_LIMIT) != loop_thread
    delay[0] = 0.0
    await run_kernel(1, kernel, inline_below=SLOW_LIMIT)
    assert await run_kernel(1, kernel, inline_below=SLOW_LIMIT) == loop_thread


async def test_zero_limit_always_uses_a_worker_thread() -> None:
    def kernel() -> int:
        return threading.get_ident()

    loop_thread = threading.get_ident()
    for _ in range(3):
        assert await run_kernel(1, kernel, inline_below=0) != loop_thread


@pytest.mark.skipif(MAX_THREADS < 2, reason="numba allows one thread here: nothing to tell apart")
async def test_in_place_call_uses_the_thread_count_and_restores_the_loops() -> None:
    def kernel() -> int:
        return numba.get_num_threads()

    numba.set_num_threads(MAX_THREADS)  # the loop thread's own setting differs from 1
    try:
        await run_kernel(1, kernel, inline_below=FAST)
        assert await run_kernel(1, kernel, inline_below=FAST) == 1
        assert numba.get_num_threads() == MAX_THREADS
    finally:
        numba.set_num_threads(MAX_THREADS)


async def test_in_place_call_is_a_checkpoint_and_an_error_propagates() -> None:
    calls: list[int] = []

    def kernel(fail: bool) -> int:
        calls.append(1)
        if fail:
            raise ValueError("bad input")
        return threading.get_ident()

    await run_kernel(1, kernel, False, inline_below=FAST)
    with trio.CancelScope() as scope:
        scope.cancel()
        await run_kernel(1, kernel, False, inline_below=FAST)
    assert scope.cancelled_caught and len(calls) == 1  # cancelled before it started
    with pytest.raises(ValueError, match="^bad input$"):
        await run_kernel(1, kernel, True, inline_below=FAST)
    assert await run_kernel(1, kernel, False, inline_below=FAST) == threading.get_ident()


class _Actor:
    def kernel(self, x: int) -> int:
        return x


def test_timings_are_filed_under_the_function_not_its_wrappers() -> None:
    a, b = _Actor(), _Actor()
    assert _kernel_key(a.kernel) is _Actor.kernel
    assert _kernel_key(b.kernel) is _Actor.kernel
    assert _kernel_key(functools.partial(functools.partial(_here))) is _here
    assert _kernel_key(_here) is _here


async def test_warm_up_forgets_the_timings() -> None:
    def kernel() -> int:
        return threading.get_ident()

    loop_thread = threading.get_ident()
    await run_kernel(1, kernel, inline_below=FAST)
    assert await run_kernel(1, kernel, inline_below=FAST) == loop_thread
    await warm_up_agent("a", [], {})
    assert kernel not in _last_took
    assert await run_kernel(1, kernel, inline_below=FAST) != loop_thread
