"""ReasoningBank.judge: the scoring rule, the verdict flags, and refusing bad data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from midswarm.reasoning import Experience, ReasoningBank, Verdict


def exp(expected=0.01, actual=0.01, **kw) -> Experience:
    fields = dict(agent_id="pm-1", action="predict", expected=expected, actual=actual,
                  similarity=0.9, confidence=0.8, context={"symbol": "AAPL"})
    fields.update(kw)
    return Experience(**fields)


@pytest.fixture
def bank(tmp_path):
    b = ReasoningBank(tmp_path / "bank.db")
    yield b
    b.close()


@pytest.mark.parametrize("expected, actual, score", [
    (0.02, 0.02, 1.0),          # exact: m = 0
    (0.01, 0.02, 0.75),         # right direction, half the move: m = 0.5
    (0.5, 0.25, 0.5),           # right direction, overshoot capped: m = 1
    (-0.01, 0.02, 0.0),         # wrong direction, material move
    (-0.0001, 0.0001, 0.4),     # wrong direction within the 0.001 floor: m = 0.2
    (0.0, 0.0, 1.0),            # flat predicted flat: zero is its own sign
    (0.0005, 0.0, 0.25),        # up predicted, flat happened: a miss, m = 0.5
    (0.0, 0.0005, 0.25),        # flat predicted, up happened: a miss, m = 0.5
    (-3.0, -4.0, 0.875),        # both down: m = 0.25
    (1e308, -1e308, 0.0),       # the difference overflows to inf: still a plain 0
])
def test_scoring_rule(bank, expected, actual, score):
    verdict = bank.judge(exp(expected, actual))
    assert verdict.score == pytest.approx(score)


def test_verdict_flags_and_confidence(bank):
    hit = bank.judge(exp(0.02, 0.02))
    assert hit == Verdict(score=1.0, should_adapt=False, learn=True, distill=True,
                          suggested_changes=[], confidence=1.0)
    half = bank.judge(exp(0.01, 0.02))  # 0.75: learn, not distill
    assert (half.learn, half.distill, half.should_adapt) == (True, False, False)
    assert half.confidence == pytest.approx(0.5)
    edge = bank.judge(exp(0.5, 0.25))   # 0.5 exactly: undecided
    assert (edge.learn, edge.distill, edge.should_adapt, edge.confidence) == (
        False, False, False, 0.0)
    miss = bank.judge(exp(-0.01, 0.02))
    assert (miss.learn, miss.distill, miss.should_adapt) == (False, False, True)
    assert miss.confidence == 1.0
    assert miss.suggested_changes == []  # no history for this agent yet


finite = st.floats(allow_nan=False, allow_infinity=False)


@pytest.fixture(scope="module")
def module_bank(tmp_path_factory):
    b = ReasoningBank(tmp_path_factory.mktemp("judge") / "b.db")
    yield b
    b.close()


@settings(max_examples=300, deadline=None)
@given(expected=finite, actual=finite)
def test_score_is_bounded_and_direction_decides_the_half(module_bank, expected, actual):
    v = module_bank.judge(exp(expected, actual))
    assert 0.0 <= v.score <= 1.0 and math.isfinite(v.score)
    if np.sign(expected) == np.sign(actual):
        assert v.score >= 0.5
    else:
        # Below 0.5 in exact arithmetic; a miss smaller than float rounding can give 0.5.
        assert v.score <= 0.5
        assert v.score < 0.5 or abs(expected - actual) < 1e-12
    assert v.learn == (v.score > 0.7)
    assert v.should_adapt == (v.score < 0.3)
    assert v.distill == (v.score > 0.8)
    assert v.confidence == pytest.approx(abs(2 * v.score - 1))


def test_judging_writes_nothing(bank):
    bank.record(exp())
    for _ in range(3):
        bank.judge(exp(-1.0, 1.0))
    assert len(bank) == 1


@pytest.mark.parametrize("experience, error, message", [
    (exp(actual=None), ValueError, "actual is None: cannot judge"),
    (exp(expected=None), ValueError, "expected is None: cannot judge"),
    (exp(actual=float("nan")), ValueError, "actual is nan: cannot judge"),
    (exp(expected=float("inf")), ValueError, "expected is inf"),
    (exp(actual=True), TypeError, "actual must be a real number"),
    (exp(actual="0.1"), TypeError, "actual must be a real number, got str"),
    (exp(similarity=float("nan")), ValueError, "similarity is nan"),
    (exp(confidence=None), ValueError, "confidence is None"),
    (exp(agent_id=""), ValueError, "agent_id must be a non-empty str"),
    (exp(action=3), ValueError, "action must be a non-empty str"),
    (exp(context={"symbol": ["AAPL"]}), TypeError, r"Experience.context\['symbol'\]"),
    (exp(context="symbol=AAPL"), TypeError, "Experience.context must be a mapping"),
    (exp(vector=np.array([1.0, np.nan])), ValueError, "vector contains NaN"),
    (exp(vector=np.zeros(3)), ValueError, "all zeros"),
    (exp(vector=np.ones((2, 2))), ValueError, "1-d array"),
    (exp(vector=np.array([], float)), ValueError, "non-empty"),
    (exp(timestamp=float("nan")), ValueError, "timestamp is nan"),
    ({"agent_id": "x"}, TypeError, "expected an Experience, got dict"),
])
def test_bad_experiences_are_refused_by_judge_and_record(bank, experience, error, message):
    with pytest.raises(error, match=message):
        bank.judge(experience)
    with pytest.raises(error, match=message):
        bank.record(experience)
    assert len(bank) == 0


def test_numpy_scalars_are_fine(bank):
    v = bank.judge(exp(np.float32(0.01), np.float64(0.02), similarity=np.float32(0.5)))
    assert v.score == pytest.approx(0.75)
