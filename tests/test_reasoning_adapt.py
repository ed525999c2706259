"""ReasoningBank.suggest: when it adapts, by how much, within which limits."""

from __future__ import annotations

import random

import pytest

from midswarm.reasoning import (
    DEFAULT_PARAMETERS,
    PARAMETER_LIMITS,
    THRESHOLD_STEP,
    AdaptationCommand,
    Experience,
    ParameterChange,
    ReasoningBank,
)


def outcome(hit: bool, agent: str = "pm-1", **context) -> Experience:
    return Experience(agent, "predict", 0.01, 0.02 if hit else -0.02, 0.9, 0.8, context)


def record(bank, hits: int, misses: int, agent: str = "pm-1", **context) -> None:
    # Interleaved, so no window boundary happens to see only one kind.
    pattern = [True] * hits + [False] * misses
    random.Random(hits * 1000 + misses).shuffle(pattern)
    for hit in pattern:
        bank.record(outcome(hit, agent, **context))


def changes(cmd: AdaptationCommand | None) -> dict[str, tuple[float, float]]:
    assert cmd is not None
    return {c.parameter: (c.current, c.suggested) for c in cmd.changes}


def test_needs_twenty_outcomes(bank):
    record(bank, 0, 19)
    assert bank.suggest("pm-1") is None
    record(bank, 0, 1)
    assert bank.suggest("pm-1") is not None


def test_low_success_raises_thresholds_by_one_step(bank, clock):
    record(bank, 10, 20)  # 33 % direction hits
    cmd = bank.suggest("pm-1")
    assert cmd is not None and cmd.agent_id == "pm-1"
    assert cmd.success_rate == pytest.approx(10 / 30) and cmd.outcomes == 30
    assert cmd.issued_at == clock.now
    sim, conf = DEFAULT_PARAMETERS["similarity_threshold"], DEFAULT_PARAMETERS[
        "confidence_threshold"]
    assert changes(cmd) == {
        "similarity_threshold": (sim, pytest.approx(sim + THRESHOLD_STEP)),
        "confidence_threshold": (conf, pytest.approx(conf + THRESHOLD_STEP)),
    }
    for change in cmd.changes:
        assert isinstance(change, ParameterChange)
        assert change.reason.startswith(f"raise {change.parameter}")
        assert "below 0.55" in change.reason
    assert "0.33" in cmd.reason


def test_high_success_lowers_thresholds(bank):
    record(bank, 40, 5)  # 89 %
    cmd = bank.suggest("pm-1", current={"similarity_threshold": 0.9,
                                        "confidence_threshold": 0.7})
    assert changes(cmd) == {"similarity_threshold": (0.9, pytest.approx(0.88)),
                            "confidence_threshold": (0.7, pytest.approx(0.68))}
    assert all(c.reason.startswith("lower") for c in cmd.changes)


@pytest.mark.parametrize("hits, misses", [(11, 9), (15, 5), (30, 20)])
def test_middle_band_changes_nothing(bank, hits, misses):
    # 55 %, 75 % and 60 %: the hysteresis band, bounds included.
    record(bank, hits, misses)
    assert bank.suggest("pm-1") is None


def test_only_the_last_hundred_outcomes_count(bank):
    record(bank, 0, 50)
    record(bank, 100, 0)
    cmd = bank.suggest("pm-1")
    assert cmd is not None and cmd.outcomes == 100 and cmd.success_rate == 1.0
    assert all(c.suggested < c.current for c in cmd.changes)


def test_next_command_waits_for_twenty_fresh_outcomes_and_builds_on_the_last(tmp_path, clock):
    path = tmp_path / "bank.db"
    bank = ReasoningBank(path, clock=clock)
    record(bank, 5, 25)
    first = bank.suggest("pm-1")
    assert first is not None
    assert bank.suggest("pm-1") is None  # nothing new since
    record(bank, 0, 19)
    assert bank.suggest("pm-1") is None
    bank.close()
    bank = ReasoningBank(path, clock=clock)  # the log is durable
    record(bank, 0, 1)
    second = bank.suggest("pm-1")
    assert second is not None and second.id > first.id
    assert second.outcomes == 20  # only outcomes after the first command
    # The agent reported no values, so the bank builds on its own last suggestion.
    assert changes(second)["similarity_threshold"] == (
        pytest.approx(DEFAULT_PARAMETERS["similarity_threshold"] + THRESHOLD_STEP),
        pytest.approx(DEFAULT_PARAMETERS["similarity_threshold"] + 2 * THRESHOLD_STEP))
    bank.close()


def test_values_reported_in_context_are_adapted_from(bank):
    record(bank, 2, 10, similarity_threshold=0.7, confidence_threshold=0.5, window=30, k=7)
    record(bank, 2, 10, similarity_threshold=0.75)  # newest report wins, per parameter
    cmd = bank.suggest("pm-1")
    assert changes(cmd) == {"similarity_threshold": (0.75, pytest.approx(0.77)),
                            "confidence_threshold": (0.5, pytest.approx(0.52))}


def test_limits_bound_every_step(bank):
    hi_sim = PARAMETER_LIMITS["similarity_threshold"][1]
    hi_conf = PARAMETER_LIMITS["confidence_threshold"][1]
    record(bank, 0, 20)
    cmd = bank.suggest("pm-1", current={"similarity_threshold": hi_sim - 0.005,
                                        "confidence_threshold": hi_conf})
    # Similarity stops at its limit; confidence, already there, is left out.
    assert changes(cmd) == {"similarity_threshold": (hi_sim - 0.005, hi_sim)}
    record(bank, 0, 20)
    assert bank.suggest("pm-1", current={"similarity_threshold": hi_sim,
                                         "confidence_threshold": hi_conf}) is None
    record(bank, 0, 20)
    cmd = bank.suggest("pm-1", current={"similarity_threshold": 1.5,
                                        "confidence_threshold": hi_conf})
    assert changes(cmd) == {"similarity_threshold": (1.5, hi_sim)}
    assert cmd.changes[0].reason.startswith("bring similarity_threshold back inside")


def test_repeated_failure_cannot_run_away(bank):
    """However long an agent fails, thresholds end at their limits, one step per 20."""
    seen = []
    for _ in range(40):
        record(bank, 0, 20)
        cmd = bank.suggest("pm-1")
        if cmd is not None:
            seen.append(changes(cmd))
    lo, hi = PARAMETER_LIMITS["similarity_threshold"]
    sims = [c["similarity_threshold"][1] for c in seen if "similarity_threshold" in c]
    assert sims == sorted(sims) and sims[-1] == hi
    steps = [b - a for a, b in zip(sims, sims[1:], strict=False)]
    # One step each time; the last may be shorter, where the limit cuts it off.
    assert all(s == pytest.approx(THRESHOLD_STEP) for s in steps[:-1])
    assert 0 < steps[-1] <= THRESHOLD_STEP + 1e-9
    assert bank.suggest("pm-1") is None


def test_agents_are_judged_separately(bank):
    record(bank, 0, 30, agent="bad")
    record(bank, 30, 0, agent="good")
    assert all(c.suggested > c.current for c in bank.suggest("bad").changes)
    assert all(c.suggested < c.current for c in bank.suggest("good").changes)
    assert bank.suggest("other") is None


def test_verdict_of_a_miss_carries_the_suggestion_without_issuing_it(bank):
    miss = outcome(False)
    assert bank.judge(miss).suggested_changes == []  # too little history yet
    record(bank, 3, 20)
    verdict = bank.judge(miss)
    assert verdict.should_adapt
    assert len(bank) == 23  # judging recorded nothing
    cmd = bank.suggest("pm-1")  # judging logged no command either
    assert cmd is not None and verdict.suggested_changes == cmd.changes
    assert bank.judge(outcome(True)).suggested_changes == []  # hits suggest nothing


def test_bad_arguments(bank):
    with pytest.raises(ValueError, match="unknown parameter 'ef'"):
        bank.suggest("pm-1", current={"ef": 3})
    with pytest.raises(ValueError, match="'k'.*whole number"):
        bank.suggest("pm-1", current={"k": 2.5})
    with pytest.raises(ValueError, match="finite number"):
        bank.suggest("pm-1", current={"window": float("nan")})
    with pytest.raises(ValueError, match="agent_id must be a non-empty str"):
        bank.suggest("")


def test_readonly_bank_cannot_issue_commands(tmp_path, bank):
    record(bank, 0, 20)
    reader = ReasoningBank(bank.path, readonly=True)
    with pytest.raises(PermissionError, match="read-only"):
        reader.suggest("pm-1")
    assert reader.judge(outcome(False)).suggested_changes  # reading the history is fine
    reader.close()


def test_cached_history_agrees_with_a_fresh_read_of_the_file(tmp_path, clock):
    """The writer keeps agent histories in memory; a reader rebuilds them from SQLite.

    Over a random run of outcomes, reports and commands, both propose the same.
    """
    rnd = random.Random(77)
    writer = ReasoningBank(tmp_path / "bank.db", clock=clock)
    reader = ReasoningBank(tmp_path / "bank.db", clock=clock, readonly=True)
    miss = outcome(False)
    issued = 0
    for step in range(400):
        context = {}
        if rnd.random() < 0.05:
            context["similarity_threshold"] = rnd.choice([0.6, 0.7, 0.9])
        if rnd.random() < 0.05:
            context["k"] = rnd.choice([5, 10])
        hit_rate = 0.2 if (step // 100) % 2 == 0 else 0.9
        writer.record(outcome(rnd.random() < hit_rate, **context))
        assert writer.judge(miss).suggested_changes == reader.judge(miss).suggested_changes
        if rnd.random() < 0.1:
            issued += writer.suggest("pm-1") is not None
    assert issued >= 5
    reader.close()
    writer.close()
