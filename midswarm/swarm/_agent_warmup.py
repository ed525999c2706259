"""Warming an agent's kernels up before it says hello.

numba keeps compiled kernels on disk, but a process still loads each one (or
compiles it, after the kernels changed) on its first call: about 0.2 s per
behaviour on an idle machine, seconds on a busy one, and minutes for a first
compilation.  An agent that connected first would make its first tasks pay
for that, and a swarm's first latencies would measure numba, not the swarm.
So :func:`run_agent` calls :func:`warm_up_agent` before it connects: the
agent is announced ready only once its kernels are.

A behaviour takes part by giving its factory an ``async warm_up()`` (a
classmethod on the actor classes of :data:`AGENT_FACTORIES`): it runs one
small, throwaway task through the codec and the kernels.  Factories without
one (the ReasoningBank's, whose work is SQLite and a little numpy; test
actors) are skipped.  The warm-up's timings are forgotten afterwards, so
that the first real call of each kernel goes to a worker thread (see
:func:`~._agent_util.run_kernel`): a small sample's speed says nothing of a
real task's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._agent_util import forget_kernel_timings

__all__ = ["warm_up_agent"]

log = logging.getLogger("midswarm.swarm.agent")


async def warm_up_agent(agent_id: str, types: Iterable[str],
                        factories: Mapping[str, Callable[..., Any]]) -> dict[str, float]:
    """Run the ``warm_up()`` of each hosted type's factory that has one.

    Returns ``{agent_type: seconds}`` for those that ran.  A warm-up that
    raises is logged (WARNING, with the error) and skipped: the agent still
    connects, and its first real task of that type meets the problem and
    reports it to the caller.  Cancellation propagates once the running
    kernel returns (kernels cannot be interrupted).
    """
    took: dict[str, float] = {}
    for agent_type in types:
        warm_up = getattr(factories[agent_type], "warm_up", None)
        if warm_up is None:
            continue
        started = time.perf_counter()
        try:
            await warm_up()
        except Exception as exc:
            log.warning("agent %s: warming up %s failed (its first task will load the "
                        "kernels instead): %r", agent_id, agent_type, exc)
            continue
        took[agent_type] = time.perf_counter() - started
    forget_kernel_timings()
    if took:
        log.info("agent %s: kernels warmed up in %.2f s (%s)", agent_id, sum(took.values()),
                 ", ".join(f"{t} {s:.2f} s" for t, s in took.items()))
    return took
