"""An asyncio application using the swarm through trio-asyncio.

The swarm runs on Trio; the application is ordinary asyncio code (an
``asyncio.Queue`` of work, ``asyncio.gather``, ``asyncio.wait_for``).
``trio_asyncio.open_loop()`` gives the Trio program an asyncio event loop,
``aio_as_trio`` runs the asyncio application on it, and :class:`AsyncioSwarm`
wraps the swarm's methods with ``trio_as_aio`` so asyncio code can await them.

Run it with ``python examples/asyncio_app.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import trio
import trio_asyncio

from midswarm.swarm import PatternMatchResult, PatternMatchTask, Swarm, open_swarm, synthetic_market

LENGTH, HORIZON = 24, 8


class AsyncioSwarm:
    """The swarm's work methods, awaitable from asyncio code."""

    def __init__(self, swarm: Swarm) -> None:
        self._swarm = swarm

    async def submit(self, task: Any) -> Any:
        return await trio_asyncio.trio_as_aio(self._swarm.submit)(task)

    async def add_patterns(self, vectors: np.ndarray, outcomes: np.ndarray) -> list[int]:
        return await trio_asyncio.trio_as_aio(self._swarm.add_patterns)(vectors, outcomes)

    async def report_outcome(self, result: PatternMatchResult, actual: float) -> list[Any]:
        return await trio_asyncio.trio_as_aio(self._swarm.report_outcome)(result, actual)


# --- the asyncio application -------------------------------------------------------


async def forecaster(swarm: AsyncioSwarm, close: np.ndarray, queue: asyncio.Queue[int | None],
                     tally: dict[str, int]) -> None:
    while (t := await queue.get()) is not None:
        window = close[t - LENGTH + 1:t + 1]
        result = await asyncio.wait_for(swarm.submit(PatternMatchTask(window=window)), 30)
        actual = float(close[t + HORIZON] - close[t])
        tally["windows"] += 1
        if result.market_context["actionable"]:
            tally["forecasts"] += 1
            tally["hits"] += int(np.sign(result.expected_outcome) == np.sign(actual))
            await swarm.report_outcome(result, actual)


async def application(swarm: AsyncioSwarm) -> None:
    close = np.log(synthetic_market(seed=2, assets=1, bars=800).bars["A0"][:, 3])
    starts = np.arange(0, 600 - LENGTH - HORIZON)
    windows = np.stack([close[s:s + LENGTH] for s in starts])
    outcomes = close[starts + LENGTH - 1 + HORIZON] - close[starts + LENGTH - 1]
    ids = await swarm.add_patterns(windows, outcomes)
    print(f"asyncio app: added {len(ids)} patterns")

    queue: asyncio.Queue[int | None] = asyncio.Queue(maxsize=16)
    tally = {"windows": 0, "forecasts": 0, "hits": 0}
    workers = [asyncio.ensure_future(forecaster(swarm, close, queue, tally)) for _ in range(4)]
    for t in range(600, 800 - HORIZON):
        await queue.put(t)
    for _ in workers:
        await queue.put(None)
    await asyncio.gather(*workers)
    rate = tally["hits"] / tally["forecasts"] if tally["forecasts"] else float("nan")
    print(f"asyncio app: {tally['forecasts']} forecasts over {tally['windows']} windows, "
          f"direction hit-rate {rate:.1%}")


# --- the Trio side: the swarm, and an asyncio loop for the application ---------------


async def main() -> None:
    composition = {"pattern_matcher": 2, "reasoning_bank": 1}
    params = {"pattern_matcher": {"k": 10, "window": 4, "similarity_threshold": 0.6,
                                  "confidence_threshold": 0.4}}
    async with open_swarm(composition, spawn="task", parameters=params) as swarm:
        async with trio_asyncio.open_loop():
            await trio_asyncio.aio_as_trio(application)(AsyncioSwarm(swarm))
        print(f"swarm: {swarm.stats.completed} tasks, {swarm.stats.verdicts} verdicts, "
              f"{swarm.stats.adaptations_acked} adaptations")


if __name__ == "__main__":
    trio.run(main)
