"""What the demo measures and how it prints it: arms, latencies, the summary."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from ._agent_matcher import MATCHER_LIMITS
from ._protocol import PatternMatchResult

if TYPE_CHECKING:
    from ._demo import DemoOptions, _Replay
    from ._embed import Swarm

__all__ = ["ARM_OFF", "ARM_ON", "ArmStats", "DemoSummary", "LatencyWindow", "percentile",
           "status_line", "summarise_replay"]

ARM_ON = "learning on"
ARM_OFF = "learning off"


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100, linear interpolation); NaN for no values."""
    arr = np.fromiter(values, dtype=np.float64)
    return float(np.percentile(arr, q)) if arr.size else math.nan


class LatencyWindow:
    """Task latencies in seconds: all of them, and those since the last status line."""

    def __init__(self) -> None:
        self.all: list[float] = []
        self.since_status: list[float] = []

    def add(self, seconds: float) -> None:
        self.all.append(seconds)
        self.since_status.append(seconds)

    def take_interval(self) -> list[float]:
        """The latencies recorded since the last call."""
        out, self.since_status = self.since_status, []
        return out


@attrs.define
class ArmStats:
    """One arm's pattern-matcher forecasts, judged against what happened.

    A forecast counts when the matcher called it actionable (a qualifying
    match and enough confidence).  ``hits`` are forecasts whose sign matched
    the actual move's (zero is its own sign, as the ReasoningBank judges);
    ``abs_error`` sums ``|expected - actual|`` over the forecasts.
    """

    name: str
    windows: int = 0
    forecasts: int = 0
    hits: int = 0
    abs_error: float = 0.0
    parameters: dict[str, Any] = attrs.Factory(dict)

    def record(self, result: PatternMatchResult, actual: float) -> bool:
        """Judge one answer; returns whether it was an actionable forecast."""
        self.windows += 1
        if not result.market_context.get("actionable", False):
            return False
        self.forecasts += 1
        expected = float(result.expected_outcome)
        self.hits += int(np.sign(expected) == np.sign(actual))
        self.abs_error += abs(expected - actual)
        return True

    @property
    def hit_rate(self) -> float:
        return self.hits / self.forecasts if self.forecasts else math.nan

    @property
    def mae(self) -> float:
        return self.abs_error / self.forecasts if self.forecasts else math.nan

    @property
    def coverage(self) -> float:
        return self.forecasts / self.windows if self.windows else math.nan


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"


def _num(x: float, fmt: str = ".4f") -> str:
    return "n/a" if x is None or math.isnan(x) else format(x, fmt)


@attrs.define
class DemoSummary:
    """Everything the demo's final summary reports (see :meth:`lines`)."""

    source: str
    spawn: str
    agents: dict[str, int]
    startup_s: float
    replay_s: float
    bars: int
    assets: int
    tasks_completed: int
    latency_p50_ms: float
    latency_p99_ms: float
    restarts: int
    verdicts: int
    adaptations_issued: int
    adaptations_acked: int
    patterns: int
    arms: list[ArmStats]
    up_share: float
    judged_windows: int
    mlp_steps: int
    mlp_loss: float
    mlp_zero_loss: float
    mlp_stale_rejected: int
    mlp_hit_rate: float
    mlp_forecasts: int
    influence: list[tuple[str, float]]
    correlations: int
    #: Seconds between correlations (NaN: no correlator).
    correlation_every: float = math.nan
    skipped: list[str] = attrs.Factory(list)
    stopped_by: str = "duration"
    #: What ``startup_s`` covers, in words.
    startup_includes: str = ""
    shutdown_s: float = math.nan
    store_dir: str | None = None
    agent_log: str | None = None

    def lines(self) -> list[str]:
        """The summary, one line per string, with every field labelled."""
        composition = ", ".join(f"{t}={n}" for t, n in self.agents.items() if n)
        rate = self.tasks_completed / self.replay_s if self.replay_s > 0 else math.nan
        out = [
            "=== midswarm demo summary ===",
            f"data: {self.source}",
            f"agents ({self.spawn}): {composition}",
            f"startup: {self.startup_s:.2f} s"
            + (f" ({self.startup_includes})" if self.startup_includes else ""),
            f"replay: {self.replay_s:.2f} s (stopped by {self.stopped_by}); bars replayed: "
            f"{self.bars} per asset x {self.assets} asset(s); shutdown: "
            f"{_num(self.shutdown_s, '.2f')} s",
            f"tasks: {self.tasks_completed} completed ({_num(rate, '.1f')}/s); latency p50 "
            f"{_num(self.latency_p50_ms, '.2f')} ms, p99 {_num(self.latency_p99_ms, '.2f')} ms; "
            f"restarts: {self.restarts}",
            f"pattern library: {self.patterns} patterns; verdicts: {self.verdicts}; "
            f"adaptations: {self.adaptations_issued} issued, {self.adaptations_acked} applied",
            f"judged windows: {self.judged_windows}; share of up moves: {_pct(self.up_share)}",
        ]
        for arm in self.arms:
            params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in sorted(arm.parameters.items()))
            out.append(
                f"pattern matcher, {arm.name}: forecasts {arm.forecasts}/{arm.windows} "
                f"(coverage {_pct(arm.coverage)}); direction hit-rate {_pct(arm.hit_rate)}; "
                f"forecast MAE {_num(arm.mae, '.5f')}; parameters at the end: {params}")
        if len(self.arms) == 2:
            a, b = self.arms
            if a.forecasts and b.forecasts:
                out.append(f"learning loop effect: hit-rate {100 * (a.hit_rate - b.hit_rate):+.1f} "
                           f"points, MAE {a.mae - b.mae:+.5f} ({a.name} minus {b.name})")
            else:
                out.append("learning loop effect: not measurable (an arm made no forecasts)")
        out.append(
            f"MLP (online, data-parallel): {self.mlp_steps} steps; loss over the last 10 steps "
            f"{_num(self.mlp_loss)} (predicting zero: {_num(self.mlp_zero_loss)}); stale "
            f"gradients rejected: {self.mlp_stale_rejected}; direction hit-rate "
            f"{_pct(self.mlp_hit_rate)} over {self.mlp_forecasts} forecasts")
        cadence = ("" if math.isnan(self.correlation_every)
                   else f", first at 32 bars of signals, then every {self.correlation_every:g} s")
        if self.influence:
            ranking = ", ".join(f"{name} {score:.3f}" for name, score in self.influence)
            out.append(f"strategy influence ({self.correlations} correlation runs{cadence}; "
                       f"the last one): {ranking}")
        else:
            out.append(f"strategy influence: none computed ({self.correlations} runs{cadence})")
        for note in self.skipped:
            out.append(f"skipped: {note}")
        if self.store_dir is not None:
            out.append(f"store: {self.store_dir} (pattern library, ReasoningBank)")
        if self.agent_log is not None:
            out.append(f"agent logs: {self.agent_log} (warnings and errors are also shown "
                       f"above; --verbose shows every line)")
        return out


def summarise_replay(replay: _Replay, swarm: Swarm, options: DemoOptions,
                     composition: dict[str, int], startup: float, elapsed: float,
                     stopped_by: str) -> DemoSummary:
    """The :class:`DemoSummary` of a replay that ran ``elapsed`` seconds."""
    if ARM_ON in replay.arms:
        # The matchers' own parameters, as the coordinator last saw them; each
        # matcher is adapted on its own, so name them when they differ.
        seen = {agent_id: {k: v for k, v in info.parameters.get("pattern_matcher", {}).items()
                           if k in MATCHER_LIMITS}
                for agent_id, info in sorted(swarm.agents.items())
                if "pattern_matcher" in info.types}
        distinct = {tuple(sorted(p.items())) for p in seen.values()}
        if len(distinct) == 1:
            replay.arms[ARM_ON].parameters = next(iter(seen.values()))
        else:
            replay.arms[ARM_ON].parameters = {f"{agent_id}.{k}": v for agent_id, p in seen.items()
                                              for k, v in p.items()}
    skipped = []
    if options.learning and not replay.learning:
        skipped.append("learning loop (no reasoning_bank agent)")
    if not replay.use_features:
        skipped.append("features, MLP training and strategy correlation (no feature_engineer)")
    elif not replay.training:
        skipped.append("MLP training (no neural_trainer agent)")
    if replay.use_features and not replay.correlating:
        skipped.append("strategy correlation (no correlator agent)")
    stats = swarm.stats
    losses = replay.server.losses
    return DemoSummary(
        source=replay.market.source, spawn=options.spawn, agents=composition,
        startup_s=startup, replay_s=elapsed, bars=min(replay.bars_done.values()),
        assets=len(replay.market.assets), tasks_completed=stats.completed,
        latency_p50_ms=1000 * percentile(replay.latency.all, 50),
        latency_p99_ms=1000 * percentile(replay.latency.all, 99),
        restarts=replay.restarts(), verdicts=stats.verdicts,
        adaptations_issued=stats.adaptations_issued, adaptations_acked=stats.adaptations_acked,
        patterns=stats.patterns, arms=list(replay.arms.values()),
        up_share=replay.up / replay.judged if replay.judged else math.nan,
        judged_windows=replay.judged, mlp_steps=len(losses),
        mlp_loss=float(np.mean(losses[-10:])) if losses else math.nan,
        mlp_zero_loss=(float(np.mean(replay.zero_losses[-10:])) if replay.zero_losses
                       else math.nan),
        mlp_stale_rejected=replay.server.stale_rejected,
        mlp_hit_rate=(replay.mlp_hits / replay.mlp_forecasts if replay.mlp_forecasts
                      else math.nan),
        mlp_forecasts=replay.mlp_forecasts, influence=replay.influence,
        correlations=replay.correlations,
        correlation_every=options.correlation_every if replay.correlating else math.nan,
        skipped=skipped, stopped_by=stopped_by)


def status_line(replay: _Replay, elapsed: float, stats: Any, completed: int,
                interval: float) -> str:
    """One status line of ``replay``: ``completed`` tasks finished in the last
    ``interval`` s."""
    latencies = replay.latency.take_interval()
    agents = replay.swarm.agents.values()
    live = sum(1 for a in agents if a.state == "connected")
    if latencies:
        work = (f"tasks/s {completed / max(interval, 1e-9):7.1f} | "
                f"p50 {1000 * percentile(latencies, 50):6.2f} ms p99 "
                f"{1000 * percentile(latencies, 99):6.2f} ms")
    elif not replay.latency.all:
        work = f"waiting for first results ({stats.in_flight} tasks in flight)"
    else:
        work = (f"tasks/s {completed / max(interval, 1e-9):7.1f} | no demo task finished "
                f"in the last {interval:.1f} s ({stats.in_flight} in flight)")
    loss = ""
    if replay.training:
        loss = ("loss " + (f"{replay.server.losses[-1]:.4f}" if replay.server.losses
                           else "n/a (no step yet)") + " | ")
    return (f"[{elapsed:6.1f}s] agents {live}/{len(agents)} | {work} | "
            f"restarts {replay.restarts()} | verdicts {stats.verdicts} | "
            f"adaptations {stats.adaptations_acked} | {loss}"
            f"bars {min(replay.bars_done.values())}")
