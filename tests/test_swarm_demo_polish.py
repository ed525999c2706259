"""How the demo reads: the correlation cadence."""

from __future__ import annotations

import math

import pytest

from midswarm.swarm._demo import DemoOptions


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

