"""Embed a swarm in a Trio program: every agent is a task of this process.

``spawn="task"`` connects the agents to the coordinator over the in-memory
transport: the same sessions, delivery and supervision as over QUIC, without
sockets or certificates.  This program

1. fills the pattern library with windows of a synthetic market whose
   outcomes are known,
2. matches new windows (each query is scattered to both pattern matchers and
   their top-k merged) and reports what actually happened, closing the
   learning loop,
3. trains a small MLP on features computed by a feature engineer, with the
   gradients computed by two neural trainers,
4. ranks three simple strategies by influence.

Run it with ``python examples/embed_trio.py``.
"""

from __future__ import annotations

import numpy as np
import trio

from midswarm.swarm import (
    CorrelationTask,
    FeatureTask,
    ParameterServer,
    PatternMatchTask,
    TrainStep,
    open_swarm,
    synthetic_market,
)

LENGTH, HORIZON = 24, 8


async def main() -> None:
    market = synthetic_market(seed=1, assets=1, bars=1200)
    close = np.log(market.bars["A0"][:, 3])
    starts = np.arange(0, 900 - LENGTH - HORIZON)
    windows = np.stack([close[s:s + LENGTH] for s in starts])
    outcomes = close[starts + LENGTH - 1 + HORIZON] - close[starts + LENGTH - 1]

    composition = {"pattern_matcher": 2, "feature_engineer": 1, "neural_trainer": 2,
                   "correlator": 1, "reasoning_bank": 1}
    params = {"pattern_matcher": {"k": 10, "window": 4, "similarity_threshold": 0.6,
                                  "confidence_threshold": 0.4}}
    async with open_swarm(composition, spawn="task", parameters=params) as swarm:
        ids = await swarm.add_patterns(windows, outcomes)
        print(f"library: {len(ids)} patterns over shards {swarm.coordinator.shard_sizes()}")

        # Match the windows after the library, as they would arrive live.
        queries = list(range(900, 1200 - HORIZON))
        tasks = [PatternMatchTask(window=close[t - LENGTH + 1:t + 1], horizon=HORIZON,
                                  context={"bar": t}) for t in queries]
        hits = forecasts = 0
        async for result in swarm.map(tasks, ordered=True):
            t = result.market_context["bar"]
            actual = float(close[t + HORIZON] - close[t])
            if result.market_context["actionable"]:
                forecasts += 1
                hits += int(np.sign(result.expected_outcome) == np.sign(actual))
                await swarm.report_outcome(result, actual)
        stats = swarm.stats
        print(f"forecasts: {forecasts} of {len(queries)} windows, direction hit-rate "
              f"{hits / max(forecasts, 1):.1%}; verdicts {stats.verdicts}, adaptations "
              f"{stats.adaptations_acked}")

        # Features, then a few synchronous data-parallel Adam steps.
        block = await swarm.submit(FeatureTask(ohlcv=market.bars["A0"]))
        frame = np.asarray(block.values)
        usable = np.isfinite(frame).all(axis=1)
        usable[-HORIZON:] = False
        x = frame[usable][:, [block.names.index(n) for n in ("zscore", "rsi", "macd_hist")]]
        x = (x - x.mean(axis=0)) / x.std(axis=0)
        rows = np.flatnonzero(usable)
        y = 100 * (close[rows + HORIZON] - close[rows])

        async def scatter(steps: list[TrainStep]) -> list[object]:
            return [g async for g in swarm.map(steps, ordered=True)]

        server = ParameterServer(scatter, [3, 8, 1], seed=0, lr=0.01, shards=2)
        for _ in range(20):
            await server.step(x, y)
        print(f"MLP: {server.version} steps, loss {server.losses[0]:.3f} -> "
              f"{server.losses[-1]:.3f}")

        # Influence of three strategies' signals over the last 200 bars.
        recent = close[-200:]
        momentum = np.sign(recent - np.roll(recent, 10))
        reversion = -np.sign(recent - np.convolve(recent, np.ones(20) / 20, mode="same"))
        signals = np.stack([momentum, reversion, np.sign(np.diff(recent, prepend=recent[0]))])
        ranking = await swarm.submit(CorrelationTask(
            strategies=signals, names=["momentum", "reversion", "last_move"], epsilon=0.5))
        ranked = sorted(zip(ranking.names, ranking.influence, strict=True), key=lambda p: -p[1])
        for name, score in ranked:
            print(f"influence {name}: {score:.3f}")


if __name__ == "__main__":
    trio.run(main)
