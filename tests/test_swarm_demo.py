"""The demo end to end: a short replay through a live swarm, and its CLI."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from midswarm.cli import main
from midswarm.swarm._demo import ARM_OFF, ARM_ON, DemoOptions, run_demo
from midswarm.swarm._demo_cli import parse_agents
from midswarm.swarm._market import synthetic_market

SUMMARY_FIELDS = ("=== midswarm demo summary ===", "data: ", "agents (", "startup: ",
                  "tasks: ", "latency p50", "restarts: ", "verdicts: ", "adaptations: ",
                  "judged windows: ", "direction hit-rate", "forecast MAE", "MLP (online",
                  "strategy influence")


def check_arm_counts(arm: object, judged: int) -> None:
    from midswarm.swarm._demo_stats import ArmStats

    assert isinstance(arm, ArmStats)
    assert arm.windows == judged
    assert 0 <= arm.hits <= arm.forecasts <= arm.windows
    if arm.forecasts:
        assert arm.hit_rate == arm.hits / arm.forecasts and arm.mae >= 0
    else:
        assert math.isnan(arm.hit_rate)


async def test_demo_replays_through_the_swarm_and_summarises(tmp_path: Path) -> None:
    lines: list[str] = []
    summary = await run_demo(DemoOptions(
        duration=4.0, spawn="task", bars=3000, status_interval=0.5, correlation_interval=0.5,
        store_dir=str(tmp_path)), out=lines.append)
    text = "\n".join(lines)
    assert any(line.startswith("[") and "tasks/s" in line and "p99" in line for line in lines)
    for field in SUMMARY_FIELDS:
        assert field in text, field
    assert "learning on" in text and "learning off" in text
    assert summary.stopped_by == "duration"
    assert summary.judged_windows > 0 and summary.bars > 0 and summary.tasks_completed > 0
    assert summary.patterns >= summary.judged_windows  # every judged window joined the library
    assert [arm.name for arm in summary.arms] == [ARM_ON, ARM_OFF]
    for arm in summary.arms:
        check_arm_counts(arm, summary.judged_windows)
    on = summary.arms[0]
    # every learning-on forecast was reported, except those cut off by the deadline
    assert summary.verdicts >= on.forecasts - summary.assets
    assert summary.arms[1].parameters == {"k": 10, "window": 4, "similarity_threshold": 0.6,
                                          "confidence_threshold": 0.4}
    # one set of parameters, or one per matcher when they were adapted apart
    assert {key.rsplit(".", 1)[-1] for key in on.parameters} == set(summary.arms[1].parameters)
    assert summary.mlp_forecasts > 0 and summary.restarts == 0
    # the ReasoningBank kept its experiences in a real SQLite file
    assert (tmp_path / "reasoning-reasoning_bank-1.sqlite").stat().st_size > 0


async def test_demo_without_learning_stops_at_the_end_of_the_data() -> None:
    lines: list[str] = []
    summary = await run_demo(DemoOptions(
        duration=60.0, spawn="task", bars=140, learning=False,
        agents={"pattern_matcher": 2, "feature_engineer": 1}), out=lines.append)
    assert summary.stopped_by == "end of data"
    assert summary.replay_s < 60.0
    assert [arm.name for arm in summary.arms] == [ARM_OFF]
    # bars 64 .. 131 are queried (64 bars of feature history first; the last 8
    # have no outcome in the data); those up to 123 are judged 8 bars later
    assert summary.bars == 132 - 64 and summary.judged_windows == 3 * (124 - 64)
    check_arm_counts(summary.arms[0], summary.judged_windows)
    assert summary.verdicts == 0 and summary.mlp_steps == 0
    assert any("skipped: MLP training" in line for line in lines)
    assert any("skipped: strategy correlation" in line for line in lines)


async def test_demo_refuses_bad_options() -> None:
    with pytest.raises(ValueError, match="pattern_matcher"):
        await run_demo(DemoOptions(spawn="task", agents={"feature_engineer": 1}))
    with pytest.raises(ValueError, match="duration"):
        DemoOptions(duration=0)
    with pytest.raises(ValueError, match="needs at least"):
        await run_demo(DemoOptions(spawn="task", bars=50), out=lambda line: None)


def test_parse_agents() -> None:
    assert parse_agents("pattern_matcher=3, reasoning_bank=1") == {
        "pattern_matcher": 3, "correlator": 0, "feature_engineer": 0, "neural_trainer": 0,
        "reasoning_bank": 1}
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="unknown agent type 'x'"):
        parse_agents("x=1")
    with pytest.raises(argparse.ArgumentTypeError, match="TYPE=COUNT"):
        parse_agents("pattern_matcher")


def write_market_csv(path: Path, bad_line_after: int) -> int:
    """One asset of synthetic bars as CSV, with one bad row; returns its line number."""
    bars = synthetic_market(5, assets=1, bars=300).bars["A0"]
    rows = ["timestamp,open,high,low,close,volume"]
    bad_line = 0
    for i, (o, h, lo, c, v) in enumerate(bars.tolist()):
        rows.append(f"{60 * i},{o!r},{h!r},{lo!r},{c!r},{v!r}")
        if i == bad_line_after:
            rows.append(f"{60 * i + 30},{o},{h},{lo},not-a-price,{v}")
            bad_line = len(rows)
    path.write_text("\n".join(rows) + "\n")
    return bad_line


def test_cli_demo_on_a_csv_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bars.csv"
    bad_line = write_market_csv(path, 100)
    args = ["demo", "--data", str(path), "--duration", "2", "--spawn", "task",
            "--agents", "pattern_matcher=1,feature_engineer=1,reasoning_bank=1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"line {bad_line}: close 'not-a-price' is not a number" in err
    assert main([*args, "--skip-bad-rows"]) == 0
    out = capsys.readouterr().out
    assert f"skipped line {bad_line}" in out
    assert f"data: {path}" in out and "judged windows: " in out


def test_cli_demo_with_agent_processes_over_quic(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "midswarm", "demo", "--duration", "2", "--bars", "600",
         "--agents", "pattern_matcher=2,feature_engineer=1,reasoning_bank=1",
         "--store-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=180, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "agents (process): pattern_matcher=2, feature_engineer=1, reasoning_bank=1" in out
    for field in SUMMARY_FIELDS:
        assert field in out, field
    judged = int(out.split("judged windows: ")[1].split(";")[0])
    assert judged > 0
    assert np.isfinite(float(out.split("latency p50 ")[1].split(" ms")[0]))
