"""The demo end to end: a short replay through a live swarm, and its CLI."""

from __future__ import annotations

import math
import os
import re
import sqlite3
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


async def test_demo_replays_a_market_to_its_end(tmp_path: Path) -> None:
    lines: list[str] = []
    summary = await run_demo(DemoOptions(
        duration=300.0, spawn="task", bars=200, correlation_interval=0.1,
        store_dir=str(tmp_path)), out=lines.append)
    text = "\n".join(lines)
    for field in SUMMARY_FIELDS:
        assert field in text, field
    assert "learning on" in text and "learning off" in text
    assert summary.stopped_by == "end of data"
    # bars 64 .. 191 are queried (64 bars of feature history first; the last 8
    # have no outcome in the data); those up to 183 are judged 8 bars later
    assert summary.bars == 192 - 64 and summary.judged_windows == 3 * (192 - 72)
    assert summary.patterns == 3 * (192 - 64 - 8 + 8)  # windows ending at 56 .. 183
    assert [arm.name for arm in summary.arms] == [ARM_ON, ARM_OFF]
    for arm in summary.arms:
        check_arm_counts(arm, summary.judged_windows)
    on = summary.arms[0]
    # every learning-on forecast was reported: one verdict per credited matcher
    assert on.forecasts <= summary.verdicts <= 2 * on.forecasts
    assert summary.arms[1].parameters == {"k": 10, "window": 4, "similarity_threshold": 0.6,
                                          "confidence_threshold": 0.4}
    # one set of parameters, or one per matcher when they were adapted apart
    assert {key.rsplit(".", 1)[-1] for key in on.parameters} == set(summary.arms[1].parameters)
    assert summary.mlp_forecasts == summary.judged_windows and summary.mlp_steps >= 1
    assert math.isfinite(summary.mlp_loss) and summary.mlp_stale_rejected == 0
    assert summary.restarts == 0
    # the ReasoningBank kept its experiences in a real SQLite file
    with sqlite3.connect(tmp_path / "reasoning-reasoning_bank-1.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM experiences").fetchone()[0] == \
            summary.verdicts


async def test_demo_is_bounded_by_its_duration() -> None:
    lines: list[str] = []
    summary = await run_demo(DemoOptions(
        duration=2.0, spawn="task", bars=6000, status_interval=0.5), out=lines.append)
    assert summary.stopped_by == "duration"
    assert 2.0 <= summary.replay_s < 10.0
    assert summary.bars < 6000 - 72
    assert any(line.startswith("[") and "tasks/s" in line and "p99" in line for line in lines)
    for arm in summary.arms:
        check_arm_counts(arm, summary.judged_windows)


async def test_demo_without_learning_runs_one_arm() -> None:
    lines: list[str] = []
    summary = await run_demo(DemoOptions(
        duration=300.0, spawn="task", bars=140, learning=False,
        agents={"pattern_matcher": 2, "feature_engineer": 1}), out=lines.append)
    assert summary.stopped_by == "end of data"
    assert [arm.name for arm in summary.arms] == [ARM_OFF]
    assert summary.judged_windows == 3 * (132 - 72)
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
        [sys.executable, "-m", "midswarm", "demo", "--duration", "300", "--bars", "100",
         "--agents", "pattern_matcher=2,reasoning_bank=1", "--store-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "agents (process): pattern_matcher=2, reasoning_bank=1" in out
    for field in SUMMARY_FIELDS:
        assert field in out, field
    assert "(stopped by end of data); bars replayed: 28 per asset x 3 asset(s)" in out
    assert "judged windows: 60;" in out
    assert re.search(r"learning on: forecasts \d+/60 ", out)
    assert np.isfinite(float(out.split("latency p50 ")[1].split(" ms")[0]))
    # the agents logged to a file in the store; only warnings and errors reach stderr
    log = tmp_path / "agents.log"
    assert f"agent logs: {log} " in out
    lines = log.read_text().splitlines()
    for agent in ("pattern_matcher-1", "pattern_matcher-2", "reasoning_bank-1"):
        assert any(line.startswith(f"{agent} | ") and f"agent {agent}: connected, hosting"
                   in line for line in lines), agent
    assert not re.search(r" (DEBUG|INFO) ", proc.stderr), proc.stderr[-2000:]


def test_cli_demo_takes_composition_and_parameters_from_a_config_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "swarm.toml"
    config.write_text('[agents]\npattern_matcher = 1\nreasoning_bank = 1\n\n'
                      '[parameters.pattern_matcher]\nk = 5\nsimilarity_threshold = 0.7\n')
    assert main(["demo", "--config", str(config), "--spawn", "task", "--bars", "120",
                 "--duration", "300"]) == 0
    out = capsys.readouterr().out
    assert "agents (task): pattern_matcher=1, reasoning_bank=1" in out
    assert ("learning off: forecasts" in out and "parameters at the end: "
            "confidence_threshold=0.4, k=5, similarity_threshold=0.7, window=4" in out)
    config.write_text("[agents]\npattern_matcher = -1\n")
    assert main(["demo", "--config", str(config), "--spawn", "task"]) == 2
    assert "pattern_matcher" in capsys.readouterr().err
