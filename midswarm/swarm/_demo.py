"""The demo: a market replayed through a live swarm, learning as it goes.

Theory of operation
-------------------
:func:`run_demo` starts a swarm (:func:`open_swarm`; by default every agent
is its own process, talking QUIC over loopback) and replays a market, bar by
bar, every asset in its own task, for ``duration`` seconds.  At bar ``t`` of
an asset, with ``L`` the pattern length and ``H`` the horizon:

1. the window of log closes ending at ``s = t - H`` now has a known outcome,
   the log return ``log c[t] - log c[s]``: it joins the pattern library
   (:meth:`Coordinator.add_patterns`, sharded across the pattern matchers);
2. the forecasts made at ``s`` are judged against that outcome.  The
   "learning on" arm's actionable forecast goes to
   :meth:`Coordinator.report_outcome`: the ReasoningBank judges it and may
   send the matchers an adaptation command (new thresholds);
3. a feature engineer computes the features of the last 64 bars; their last
   row is the MLP's input and the source of simple strategies' signals;
4. the window ending at ``t`` is matched twice, as two arms of one
   experiment on the same library at the same moment: "learning on" with the
   matchers' own (adapted) parameters, "learning off" with the initial
   parameters pinned in the task.

Meanwhile the MLP is trained online: every 32 new (features, outcome)
samples, a :class:`ParameterServer` step over the latest 128 is spread over
the neural trainers; and a correlator compares the strategies' recent signals
(LCSS) and ranks their influence (PageRank) -- first as soon as 32 bars of
signals are in, then every ``correlation_interval`` seconds (by default a
fifth of the duration, at least 2 s), and once more at the end of the data.
A status line is printed every ``status_interval`` seconds, and a
:class:`DemoSummary` at the end: each arm's forecasts, direction hit-rate and
error, reported as they come out.

Timing is honest about start-up: the agents warm their kernels up before they
connect, so the reported start-up time includes that, and the replay's
latencies are those of a warm swarm.  Agent processes log to
``agents.log`` in the store directory (kept, and named at the end); their
warnings and errors still reach stderr.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import aclosing
from typing import Any

import attrs
import numpy as np
import trio

from ._agent_matcher import MATCHER_LIMITS, check_matcher_parameters
from ._config import DEFAULT_COMPOSITION, SwarmConfig, check_composition
from ._demo_stats import (
    ARM_OFF,
    ARM_ON,
    ArmStats,
    DemoSummary,
    LatencyWindow,
    status_line,
    summarise_replay,
)
from ._embed import Swarm, open_swarm
from ._market import MarketData, load_csv, synthetic_market
from ._protocol import (
    CorrelationTask,
    FeatureBlock,
    FeatureTask,
    PatternMatchResult,
    PatternMatchTask,
    TrainStep,
)
from ._training import ParameterServer

__all__ = ["DEMO_MATCHER_PARAMETERS", "DemoOptions", "STRATEGIES", "run_demo"]

#: The pattern matchers' initial parameters in the demo (a config file's
#: ``[parameters.pattern_matcher]`` overrides them).
DEMO_MATCHER_PARAMETERS: dict[str, float | int] = {
    "k": 10, "window": 4, "similarity_threshold": 0.6, "confidence_threshold": 0.4}
#: Strategies whose signals the correlator compares.
STRATEGIES = ("momentum", "mean_reversion", "rsi", "macd", "pattern", "mlp")
FEATURE_BARS = 64
MLP_LAYERS = [7, 16, 1]
TRAIN_EVERY = 32
TRAIN_BATCH = 128
SIGNAL_HISTORY = 128
#: Bars of signals the first correlation waits for.
SIGNALS_NEEDED = 32
AGENT_LOG = "agents.log"
# Agents warm their kernels up before they connect; after a change to the
# kernels numba compiles them all, in every agent process at once.
_READY_TIMEOUT = 900.0


@attrs.frozen(kw_only=True)
class DemoOptions:
    """How :func:`run_demo` runs.

    ``duration`` bounds the replay (seconds after every agent connected;
    starting and stopping the swarm come on top).  ``data`` is a CSV file
    (see :func:`load_csv`), else a synthetic market of ``assets`` assets and
    ``bars`` bars from ``seed``.  ``agents`` is the composition (default: the
    config's, else :data:`DEFAULT_COMPOSITION`); ``learning=False`` runs the
    "learning off" arm only and reports no outcomes.  ``correlation_interval``
    is the time between strategy correlations (default: ``duration / 5``, at
    least 2 s; the first runs as soon as there are signals to compare).
    ``store_dir`` keeps the pattern library, the ReasoningBank and (agent
    processes) the agents' log; by default a temporary directory, kept after
    a ``spawn="process"`` demo for its log.  ``verbose`` passes every line of
    the agent processes' logs to stderr, not just warnings and errors.
    """

    duration: float = 20.0
    seed: int = 0
    data: str | None = None
    skip_bad_rows: bool = False
    agents: Mapping[str, int] | None = None
    learning: bool = True
    spawn: str = "process"
    config: SwarmConfig | None = None
    status_interval: float = 1.0
    correlation_interval: float | None = None
    pattern_length: int = 24
    horizon: int = 8
    assets: int = 3
    bars: int = 6000
    store_dir: str | None = None
    verbose: bool = False

    def __attrs_post_init__(self) -> None:
        for name in ("duration", "status_interval", "correlation_interval"):
            value = getattr(self, name)
            if value is None and name == "correlation_interval":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
        for name, least in (("pattern_length", 4), ("horizon", 1), ("assets", 1), ("bars", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        if self.spawn not in ("task", "process"):
            raise ValueError(f"spawn must be 'task' or 'process', got {self.spawn!r}")

    @property
    def correlation_every(self) -> float:
        """Seconds between correlations (see ``correlation_interval``)."""
        if self.correlation_interval is not None:
            return float(self.correlation_interval)
        return max(2.0, self.duration / 5.0)


def mlp_inputs(block: FeatureBlock, close: float) -> np.ndarray | None:
    """The MLP's inputs from the last row of a feature block (scaled to order
    one), or ``None`` while a column still lacks history."""
    row = dict(zip(block.names, np.asarray(block.values)[-1].tolist(), strict=True))
    x = np.array([
        100.0 * row["log_return"], row["zscore"], (row["rsi"] - 50.0) / 50.0,
        100.0 * row["macd_hist"] / close, row["bollinger_pctb"] - 0.5,
        100.0 * row["atr"] / close, 10.0 * row["realized_vol"]])
    return x if np.isfinite(x).all() else None


class _Pending:
    __slots__ = ("results", "x", "mlp")

    def __init__(self) -> None:
        self.results: dict[str, PatternMatchResult] = {}
        self.x: np.ndarray | None = None
        self.mlp: float | None = None


class _Replay:
    """One replay of a market through a running swarm (see the module docstring)."""

    def __init__(self, swarm: Swarm, market: MarketData, options: DemoOptions,
                 composition: dict[str, int], matcher_params: dict[str, Any],
                 out: Callable[[str], None]) -> None:
        self.swarm = swarm
        self.market = market
        self.options = options
        self.composition = composition
        self.out = out
        self.learning = options.learning and composition.get("reasoning_bank", 0) > 0
        self.fixed = {k: v for k, v in matcher_params.items() if k in MATCHER_LIMITS}
        self.arms = {ARM_OFF: ArmStats(ARM_OFF, parameters=dict(self.fixed))}
        if self.learning:
            self.arms = {ARM_ON: ArmStats(ARM_ON), **self.arms}
        self.use_features = composition.get("feature_engineer", 0) > 0
        self.training = self.use_features and composition.get("neural_trainer", 0) > 0
        self.correlating = self.use_features and composition.get("correlator", 0) > 0
        self.latency = LatencyWindow()
        self.pending: dict[str, dict[int, _Pending]] = {a: {} for a in market.bars}
        self.bars_done = dict.fromkeys(market.bars, 0)
        self.judged = 0
        self.up = 0
        self.mlp_hits = 0
        self.mlp_forecasts = 0
        self.samples: deque[tuple[np.ndarray, float]] = deque(maxlen=4 * TRAIN_BATCH)
        self.new_samples = 0
        self.enough_samples = trio.Event()
        self.training_lock = trio.Lock()
        self.server = ParameterServer(self._scatter, MLP_LAYERS, seed=options.seed, lr=0.01,
                                      shards=max(1, composition.get("neural_trainer", 1)))
        #: Per training step: the loss of always predicting zero, for scale.
        self.zero_losses: list[float] = []
        self.signals: deque[np.ndarray] = deque(maxlen=SIGNAL_HISTORY)
        self.signals_recorded = 0
        self.enough_signals = trio.Event()
        self.influence: list[tuple[str, float]] = []
        self.correlations = 0
        #: ``signals_recorded`` at the last correlation.
        self.correlated_at = 0
        self.correlation_lock = trio.Lock()
        self.finished = 0

    # -- timing -------------------------------------------------------------------

    async def _timed(self, call: Callable[[], Any]) -> Any:
        started = trio.current_time()
        result = await call()
        self.latency.add(trio.current_time() - started)
        return result

    async def _submit(self, task: Any) -> Any:
        return await self._timed(functools.partial(self.swarm.submit, task))

    async def _scatter(self, tasks: list[TrainStep]) -> list[Any]:
        started = trio.current_time()
        async with aclosing(self.swarm.map(tasks, ordered=True)) as results:
            out = [r async for r in results]
        elapsed = trio.current_time() - started
        for _ in out:
            self.latency.add(elapsed)
        return out

    # -- one asset ------------------------------------------------------------------

    async def asset_loop(self, asset: str) -> None:
        bars = self.market.bars[asset]
        log_close = np.log(bars[:, 3])
        length, horizon = self.options.pattern_length, self.options.horizon
        start = max(FEATURE_BARS, length + horizon)
        pending = self.pending[asset]
        for t in range(start, bars.shape[0] - horizon):
            s = t - horizon
            actual = float(log_close[t] - log_close[s])
            if s - length + 1 >= 0:
                await self.swarm.add_patterns(log_close[None, s - length + 1:s + 1],
                                              np.array([actual]))
            entry = _Pending()
            window = log_close[t - length + 1:t + 1]
            async with trio.open_nursery() as nursery:
                if s in pending:
                    nursery.start_soon(self._settle, pending.pop(s), actual)
                if self.use_features:
                    nursery.start_soon(self._features, entry, bars[t - FEATURE_BARS + 1:t + 1])
                for arm in self.arms:
                    nursery.start_soon(self._match, entry, arm, window, horizon, asset, t)
            if entry.x is not None:
                entry.mlp = float(self.server.predict(entry.x[None, :])[0, 0])
                if asset == self.market.assets[0]:
                    self._record_signals(entry, log_close, t)
            pending[t] = entry
            self.bars_done[asset] = t - start + 1
        self.finished += 1

    async def _features(self, entry: _Pending, chunk: np.ndarray) -> None:
        block = await self._submit(FeatureTask(ohlcv=chunk))
        entry.x = mlp_inputs(block, float(chunk[-1, 3]))

    async def _match(self, entry: _Pending, arm: str, window: np.ndarray, horizon: int,
                     asset: str, t: int) -> None:
        params = self.fixed if arm == ARM_OFF else {}
        entry.results[arm] = await self._submit(PatternMatchTask(
            window=window, horizon=horizon, params=dict(params),
            context={"asset": asset, "arm": arm}))

    async def _settle(self, entry: _Pending, actual: float) -> None:
        # Count everything first: the deadline may cancel the report below.
        self.judged += 1
        self.up += actual > 0
        report = None
        for arm, result in entry.results.items():
            if self.arms[arm].record(result, actual) and arm == ARM_ON:
                report = result
        if entry.mlp is not None:
            self.mlp_forecasts += 1
            self.mlp_hits += int(np.sign(entry.mlp) == np.sign(actual))
        if entry.x is not None and self.training and entry.x[6] > 0:
            # The target is the move in units of its expected size (realised
            # volatility scaled to the horizon), so every regime weighs alike.
            scale = entry.x[6] / 10.0 * math.sqrt(self.options.horizon / 20.0)
            self.samples.append((entry.x, actual / scale))
            self.new_samples += 1
            if self.new_samples >= TRAIN_EVERY and len(self.samples) >= TRAIN_BATCH // 2:
                self.enough_samples.set()
        if report is not None:
            await self._timed(functools.partial(self.swarm.report_outcome, report, actual))

    def _record_signals(self, entry: _Pending, log_close: np.ndarray, t: int) -> None:
        assert entry.x is not None and entry.mlp is not None
        x = entry.x
        result = entry.results.get(ARM_ON) or entry.results[ARM_OFF]
        pattern = (np.sign(result.expected_outcome)
                   if result.market_context.get("actionable") else 0.0)
        rsi = (x[2] + 1.0) * 50.0
        self.signals.append(np.array([
            np.sign(log_close[t] - log_close[t - 10]), -np.sign(x[1]),
            1.0 if rsi < 30 else -1.0 if rsi > 70 else 0.0, np.sign(x[3]), pattern,
            np.sign(entry.mlp)]))
        self.signals_recorded += 1
        if len(self.signals) >= SIGNALS_NEEDED:
            self.enough_signals.set()

    # -- background work ----------------------------------------------------------

    async def trainer_loop(self) -> None:
        while True:
            await self.enough_samples.wait()
            await self.train_step()

    async def train_step(self) -> None:
        """One step over the latest samples (the lock keeps steps in sequence)."""
        async with self.training_lock:
            self.enough_samples = trio.Event()
            if not self.new_samples:
                return
            self.new_samples = 0
            batch = list(self.samples)[-TRAIN_BATCH:]
            x = np.stack([b[0] for b in batch])
            y = np.array([b[1] for b in batch])
            await self.server.step(x, y)
            self.zero_losses.append(float(np.mean(y * y)))

    async def correlation_loop(self) -> None:
        """Correlate as soon as there are enough signals, then every interval."""
        await self.enough_signals.wait()
        while True:
            await self.correlate()
            await trio.sleep(self.options.correlation_every)

    async def correlate(self) -> None:
        """Compare the strategies' recent signals and rank their influence."""
        async with self.correlation_lock:
            if len(self.signals) < SIGNALS_NEEDED or self.correlated_at == self.signals_recorded:
                return  # too few signals, or none new since the last run
            seen = self.signals_recorded
            signals = np.stack(list(self.signals)).T
            answer = await self._submit(CorrelationTask(
                strategies=signals, names=list(STRATEGIES), epsilon=0.5, window=16))
            self.correlations += 1
            self.correlated_at = seen
            self.influence = sorted(zip(answer.names, answer.influence.tolist(), strict=True),
                                    key=lambda pair: -pair[1])

    def restarts(self) -> int:
        return sum(a.restarts + a.actor_restarts for a in self.swarm.agents.values())

    async def status_loop(self, started: float) -> None:
        last_completed = self.swarm.stats.completed
        last_time = started
        while True:
            await trio.sleep(self.options.status_interval)
            now = trio.current_time()
            stats = self.swarm.stats
            self.out(status_line(self, now - started, stats, stats.completed - last_completed,
                                 now - last_time))
            last_completed, last_time = stats.completed, now


def _load_market(options: DemoOptions) -> MarketData:
    if options.data is not None:
        return load_csv(options.data, skip_bad=options.skip_bad_rows)
    return synthetic_market(options.seed, assets=options.assets, bars=options.bars,
                            motif_length=options.pattern_length, horizon=options.horizon)


def _print(line: str) -> None:
    print(line, flush=True)


async def run_demo(options: DemoOptions | None = None,
                   out: Callable[[str], None] = _print) -> DemoSummary:
    """Run the demo (see the module docstring); print status lines and the
    summary through ``out``; return the summary.

    Raises :class:`~midswarm.swarm.MarketDataError` for a bad CSV file,
    :class:`ValueError`/:class:`ConfigError` for a bad composition or
    parameters (a composition without a pattern matcher included), and what
    the swarm raises if it cannot start.  Cancellation stops the replay and
    the swarm.
    """
    options = options or DemoOptions()
    config = options.config
    composition = check_composition(
        options.agents if options.agents is not None else
        config.agents if config is not None else DEFAULT_COMPOSITION)
    if composition.get("pattern_matcher", 0) < 1:
        raise ValueError("agents: the demo needs at least one pattern_matcher")
    matcher_params: dict[str, Any] = dict(DEMO_MATCHER_PARAMETERS)
    if config is not None:
        matcher_params.update(config.parameters.get("pattern_matcher", {}))
    check_matcher_parameters({k: v for k, v in matcher_params.items() if k in MATCHER_LIMITS})
    market = _load_market(options)
    needed = max(FEATURE_BARS, options.pattern_length + options.horizon) + options.horizon + 1
    if len(market) < needed:
        raise ValueError(f"{market.source}: {len(market)} bars per asset; the demo needs at "
                         f"least {needed} (pattern length {options.pattern_length}, horizon "
                         f"{options.horizon}, {FEATURE_BARS} bars of feature history)")
    for row in market.skipped[:20]:
        out(f"skipped line {row.line}: {row.reason}")
    if len(market.skipped) > 20:
        out(f"... and {len(market.skipped) - 20} more skipped lines")
    out(f"market: {market.source}; {len(market.assets)} asset(s), {len(market)} bars; "
        f"agents: {', '.join(f'{t}={n}' for t, n in composition.items() if n)} "
        f"(spawn={options.spawn})")
    store_dir = options.store_dir
    if store_dir is None and config is not None:
        store_dir = config.store_dir
    agent_log = None
    agents = sum(composition.values())
    if options.spawn == "process":
        if store_dir is None:
            # Kept (unlike a task demo's): it holds the agents' log.
            store_dir = tempfile.mkdtemp(prefix="midswarm-demo-")
        os.makedirs(store_dir, exist_ok=True)
        agent_log = os.path.join(store_dir, AGENT_LOG)
        includes = (f"dev certificates, coordinator, {agents} agent processes: Python imports, "
                    f"kernel warm-up, QUIC+TLS connect")
        out(f"starting {agents} agent processes: each loads its modules and warms its kernels "
            f"up (numba loads them from its cache; the first run after a change compiles them, "
            f"which takes minutes), then connects; agent logs: {agent_log}")
    else:
        includes = f"coordinator, {agents} agent tasks: kernel warm-up, in-memory connect"
    wall = time.monotonic()
    async with open_swarm(composition, spawn=options.spawn,  # type: ignore[arg-type]
                          config=config, parameters={"pattern_matcher": matcher_params},
                          store_dir=store_dir, agent_log=agent_log,
                          agent_log_echo=logging.DEBUG if options.verbose else logging.WARNING,
                          ready_timeout=_READY_TIMEOUT) as swarm:
        startup = time.monotonic() - wall
        out(f"swarm up in {startup:.2f} s: {len(swarm.agents)} agents connected, kernels "
            f"warmed up")
        replay = _Replay(swarm, market, options, composition, matcher_params, out)
        started = trio.current_time()
        stopped_by = "duration"
        with trio.move_on_after(options.duration):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(replay.status_loop, started)
                if replay.training:
                    nursery.start_soon(replay.trainer_loop)
                if replay.correlating:
                    nursery.start_soon(replay.correlation_loop)
                async with trio.open_nursery() as assets:
                    for asset in market.assets:
                        assets.start_soon(replay.asset_loop, asset)
                stopped_by = "end of data"
                if replay.training and len(replay.samples) >= TRAIN_BATCH // 2:
                    await replay.train_step()  # the samples that came in since the last
                if replay.correlating:
                    await replay.correlate()  # the signals that came in since the last
                nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - started
        summary = summarise_replay(replay, swarm, options, composition, startup, elapsed,
                                   stopped_by)
        summary.startup_includes = includes
        summary.store_dir = store_dir
        summary.agent_log = agent_log
        stopping = time.monotonic()
    summary.shutdown_s = time.monotonic() - stopping
    for line in summary.lines():
        out(line)
    return summary

