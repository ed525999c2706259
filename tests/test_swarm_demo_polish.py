"""How the demo reads: agent logs to a file with errors still shown, status lines
before the first results, the correlation cadence."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import trio

from midswarm.swarm._demo import DemoOptions, _Replay
from midswarm.swarm._demo_stats import status_line
from midswarm.swarm._market import synthetic_market
from midswarm.swarm._spawn import pump_agent_output

# Logs like `midswarm agent` does (its own logging set-up), then crashes.
_NOISY_AGENT = textwrap.dedent("""
    import logging, sys
    from midswarm.swarm._cli import _setup_logging
    _setup_logging("info")
    log = logging.getLogger("midswarm.swarm.agent")
    log.info("agent a1: connected, hosting feature_engineer")
    log.warning("agent a1: no heartbeat from the coordinator for 5 s")
    log.info("agent a1: draining")
    sys.stderr.write("midswarm agent: a line that is not a log record\\n")
    log.error("agent a1: protocol error")
    sys.stderr.write("a last line without its newline")
    sys.stderr.flush()
    raise RuntimeError("the agent crashed")
""")


async def test_agent_output_goes_to_the_file_and_only_what_matters_is_echoed() -> None:
    process = await trio.lowlevel.open_process([sys.executable, "-c", _NOISY_AGENT],
                                               stderr=subprocess.PIPE)
    assert process.stderr is not None
    log_file = io.StringIO()
    echoed: list[str] = []
    await pump_agent_output(process.stderr, "a1", log_file, echo=echoed.append)
    assert await process.wait() == 1
    logged = log_file.getvalue().splitlines()
    assert all(line.startswith("a1 | ") for line in logged)
    text = "\n".join(logged)
    for fragment in ("INFO agent a1: connected", "WARNING agent a1: no heartbeat",
                     "INFO agent a1: draining", "not a log record", "ERROR agent a1: protocol",
                     "a last line without its newline",
                     "Traceback (most recent call last):", "RuntimeError: the agent crashed"):
        assert fragment in text, fragment
    shown = "\n".join(echoed)
    assert " INFO " not in shown  # INFO records stay in the file
    for fragment in ("WARNING agent a1: no heartbeat", "not a log record",
                     "ERROR agent a1: protocol", "Traceback (most recent call last):",
                     "RuntimeError: the agent crashed"):
        assert fragment in shown, fragment
    # verbose: every line
    everything: list[str] = []
    again = await trio.lowlevel.open_process([sys.executable, "-c", _NOISY_AGENT],
                                             stderr=subprocess.PIPE)
    assert again.stderr is not None
    await pump_agent_output(again.stderr, "a1", io.StringIO(), echo_level=0,
                            echo=everything.append)
    await again.wait()
    assert len(everything) == len(logged)


def fake_replay() -> tuple[_Replay, SimpleNamespace]:
    swarm = SimpleNamespace(agents={"pattern_matcher-1": SimpleNamespace(
        state="connected", restarts=0, actor_restarts=0)})
    stats = SimpleNamespace(in_flight=3, verdicts=0, adaptations_acked=0)
    market = synthetic_market(0, assets=1, bars=100)
    replay = _Replay(swarm, market, DemoOptions(spawn="task"),  # type: ignore[arg-type]
                     {"pattern_matcher": 1, "feature_engineer": 1, "neural_trainer": 1}, {},
                     lambda line: None)
    return replay, stats


def test_status_lines_before_and_after_the_first_results() -> None:
    replay, stats = fake_replay()
    line = status_line(replay, 1.0, stats, 0, 1.0)
    assert "waiting for first results (3 tasks in flight)" in line
    assert "nan" not in line and "loss n/a (no step yet)" in line
    replay.latency.add(0.004)
    replay.latency.add(0.006)
    line = status_line(replay, 2.0, stats, 2, 1.0)
    assert "tasks/s     2.0 | p50   5.00 ms p99   5.98 ms" in line
    line = status_line(replay, 3.0, stats, 0, 1.0)
    assert "no demo task finished in the last 1.0 s (3 in flight)" in line
    assert "nan" not in line
    replay.training = False  # no trainer in the swarm: no loss to speak of
    assert "loss" not in status_line(replay, 4.0, stats, 0, 1.0)


def test_correlation_cadence_follows_the_duration() -> None:
    assert DemoOptions().correlation_every == 4.0  # 20 s: every 4 s
    assert DemoOptions(duration=10).correlation_every == 2.0
    assert DemoOptions(duration=3).correlation_every == 2.0
    assert DemoOptions(duration=300).correlation_every == 60.0
    assert DemoOptions(duration=3, correlation_interval=0.5).correlation_every == 0.5
    with pytest.raises(ValueError, match="correlation_interval"):
        DemoOptions(correlation_interval=0)


async def test_a_short_demo_correlates_and_prints_the_ranking() -> None:
    from midswarm.swarm._demo import STRATEGIES, run_demo

    lines: list[str] = []
    summary = await run_demo(DemoOptions(duration=2.5, spawn="task", bars=6000),
                             out=lines.append)
    assert summary.stopped_by == "duration"
    assert summary.correlations >= 1 and summary.correlation_every == 2.0
    assert sorted(name for name, _ in summary.influence) == sorted(STRATEGIES)
    assert math.fsum(score for _, score in summary.influence) == pytest.approx(1.0)
    ranking = [line for line in lines if line.startswith("strategy influence (")]
    assert len(ranking) == 1 and "every 2 s" in ranking[0]
    assert not any("nan" in line for line in lines if line.startswith("["))
    startup = next(line for line in lines if line.startswith("startup: "))
    assert "kernel warm-up" in startup

