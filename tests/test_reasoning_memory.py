"""ReasoningBank memory: distill, retrieve (weights, MMR, usage), consolidate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers import T0

from midswarm.reasoning import Experience, MemoryItem, ReasoningBank, RetrievalWeights

DAY = 86400.0


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, float)
    return v / np.linalg.norm(v)


def exp(hit: bool, vector=None, *, sim=0.9, conf=0.8, ts=T0, action="predict",
        agent="pm-1", **context) -> Experience:
    ctx = {"symbol": "AAPL", "window": 20, "k": 5}
    ctx.update(context)
    return Experience(agent, action, 0.01, 0.02 if hit else -0.02, sim, conf, ctx, vector, ts)


# -- distill ------------------------------------------------------------------------


def test_distill_writes_success_and_failure_lessons_in_words(bank):
    for hit in (True, True, True, False):
        bank.record(exp(hit, unit(1, 0, 0), regime="calm"))
    items = bank.distill()
    assert [i.source_outcome for i in items] == ["success", "failure"]
    success, failure = items
    assert success.description == ("In context regime=calm, symbol=AAPL, window 20 with k 5 "
                                   "predicted direction correctly 3 of 4 times.")
    assert failure.description == ("In context regime=calm, symbol=AAPL, window 20 with k 5 "
                                    "predicted direction wrongly 1 of 4 times.")
    assert success.title.startswith("predict: direction right in context regime=calm")
    assert (success.support, success.evidence, failure.evidence) == (4, 3, 1)
    assert success.confidence == pytest.approx(4 / 6)   # (3 + 1) / (4 + 2)
    assert failure.confidence == pytest.approx(2 / 6)
    assert "Direction right 3 of 4 times (75%)" in success.content
    assert success.usage_count == 0 and success.created == success.last_used == T0
    assert bank.memory_items() == items


def test_failure_lesson_names_the_threshold_that_would_have_helped(bank):
    for sim in (0.95, 0.93, 0.94):
        bank.record(exp(True, unit(1, 1), sim=sim, conf=0.7))
    for sim in (0.81, 0.83):
        bank.record(exp(False, unit(1, 1), sim=sim, conf=0.7))
    failure = bank.distill()[1]
    assert ("A similarity threshold of 0.880 would have kept 3 of 3 hits and dropped 2 of 2 "
            "misses.") in failure.content
    assert "Misses had confidence as high as hits" in failure.content


def test_distill_is_deterministic_and_incremental(tmp_path, clock):
    rng = np.random.default_rng(11)
    centers = rng.standard_normal((3, 8))
    data = [exp(bool(rng.random() < 0.6), centers[i % 3] + 0.05 * rng.standard_normal(8),
                ts=T0 + i, sim=float(rng.random()), regime="calm" if i % 2 else "wild")
            for i in range(90)]

    def build(name: str, batches: list[slice]) -> list[MemoryItem]:
        b = ReasoningBank(tmp_path / name, clock=clock)
        for part in batches:
            for e in data[part]:
                b.record(e)
            b.distill()
        items = b.memory_items()
        b.close()
        return items

    once = build("a.db", [slice(0, 90)])
    again = build("b.db", [slice(0, 90)])
    assert once == again and len(once) == 12  # 2 contexts x 3 regions x 2 outcomes
    # Distilling in steps gives the same lessons (ids and creation order may differ).
    stepped = build("c.db", [slice(0, 30), slice(30, 60), slice(60, 90)])

    def content(items):
        return sorted((i.description, i.content, i.confidence, i.support) for i in items)

    assert content(stepped) == content(once)


def test_redistilling_updates_counts_and_keeps_identity_and_usage(bank, clock):
    bank.record(exp(True, unit(1, 0)))
    [item] = bank.distill()
    assert bank.distill() == []  # nothing new
    bank.retrieve(unit(1, 0))
    clock.now += 10
    bank.record(exp(True, unit(1, 0.01), ts=T0 + 5))
    [updated] = [i for i in bank.distill() if i.source_outcome == "success"]
    assert updated.id == item.id and updated.usage_count == 1 and updated.created == T0
    assert updated.evidence == 2 and updated.updated == T0 + 5


def test_regions_separate_different_patterns_within_a_situation(bank):
    for _ in range(3):
        bank.record(exp(True, unit(1, 0, 0)))
        bank.record(exp(False, unit(0, 1, 0)))
    items = bank.distill()
    assert sorted((i.source_outcome, i.support) for i in items) == [("failure", 3),
                                                                   ("success", 3)]
    bank.record(exp(True, None))  # no vector: the situation's vector-less region
    bank.record(exp(True, None, symbol="MSFT"))
    assert len(bank.distill()) == 2
    assert len(bank.memory_items()) == 4


# -- retrieve ------------------------------------------------------------------------


def test_retrieve_finds_the_nearest_lesson_and_counts_use(bank, clock):
    bank.record(exp(True, unit(1, 0, 0)))
    bank.record(exp(True, unit(0, 1, 0), symbol="MSFT"))
    bank.distill()
    clock.now += 100
    [got] = bank.retrieve(unit(0.1, 1, 0))
    assert "symbol=MSFT" in got.description
    assert got.usage_count == 1 and got.last_used == T0 + 100
    [again] = bank.retrieve(unit(0.1, 1, 0))
    assert again.id == got.id and again.usage_count == 2
    stored = {i.id: i for i in bank.memory_items()}
    assert stored[got.id].usage_count == 2 and stored[got.id].last_used == T0 + 100


def test_usage_is_durable_and_readonly_retrieval_does_not_count(tmp_path, clock):
    path = tmp_path / "bank.db"
    bank = ReasoningBank(path, clock=clock)
    bank.record(exp(True, unit(1, 0)))
    bank.distill()
    bank.retrieve(unit(1, 0))
    reader = ReasoningBank(path, readonly=True, clock=clock)
    [seen] = reader.retrieve(unit(1, 0))
    assert seen.usage_count == 1
    reader.retrieve(unit(1, 0))
    bank.close()
    bank = ReasoningBank(path, clock=clock)
    assert bank.memory_items()[0].usage_count == 1
    # The reader notices the writer's later commits.
    bank.record(exp(False, unit(0, 1)))
    bank.distill()
    assert reader.retrieve(unit(0, 1), outcome="failure")[0].source_outcome == "failure"
    reader.close()
    bank.close()


def _items_with(bank, specs):
    """Record one single-experience region per spec (vector, hit, ts); distill."""
    for vector, hit, ts in specs:
        bank.record(exp(hit, vector, ts=ts))
    return bank.distill()


def test_relevance_weights(bank, clock):
    # Region A: 4 hits (confidence 5/6); region B: 1 hit, nearer the query, older.
    items_a = _items_with(bank, [(unit(1, 0.3), True, T0)] * 4)
    items_b = _items_with(bank, [(unit(1, -0.02), True, T0 - 90 * DAY)])
    a, b = items_a[0], items_b[0]
    q = unit(1, 0)
    only_similarity = RetrievalWeights(similarity=1, recency=0, reliability=0)
    only_reliability = RetrievalWeights(similarity=0, recency=0, reliability=1)
    only_recency = RetrievalWeights(similarity=0, recency=1, reliability=0)
    assert bank.retrieve(q, weights=only_similarity)[0].id == b.id
    assert bank.retrieve(q, weights=only_reliability)[0].id == a.id
    assert bank.retrieve(q, weights=only_recency)[0].id == a.id
    # Defaults: 0.65 * cos + 0.15 * exp(-age / 45 d) + 0.20 * confidence.
    cos_a, cos_b = float(unit(1, 0.3) @ q), float(unit(1, -0.02) @ q)
    rel_a = 0.65 * cos_a + 0.15 * 1.0 + 0.20 * (5 / 6)
    rel_b = 0.65 * cos_b + 0.15 * math.exp(-90 / 45) + 0.20 * (2 / 3)
    assert rel_a > rel_b
    assert bank.retrieve(q)[0].id == a.id


def test_mmr_trades_relevance_for_diversity_as_documented(tmp_path, clock):
    bank = ReasoningBank(tmp_path / "mmr.db", clock=clock, region_similarity=0.999)
    # One single-hit region each, so every item has confidence 2/3 and the same age.
    near, twin, other = unit(1, 0, 0), unit(1, 0.15, 0), unit(1, 0, 1)
    ids = {}
    for name, vector in (("near", near), ("twin", twin), ("other", other)):
        ids[name] = _items_with(bank, [(vector, True, T0)])[0].id
    q = unit(1, 0.05, 0)
    assert [i.id for i in bank.retrieve(q, k=3, mmr_lambda=1.0)] == [
        ids["near"], ids["twin"], ids["other"]]  # lambda 1: relevance order
    assert [i.id for i in bank.retrieve(q, k=2, mmr_lambda=0.3)] == [
        ids["near"], ids["other"]]  # the different one before the near-duplicate

    w = RetrievalWeights()

    def rel(v):
        return w.similarity * max(float(v @ q), 0) + w.recency * 1.0 + w.reliability * 2 / 3

    # The second pick follows lambda * relevance - (1 - lambda) * max similarity to picked.
    flips = set()
    for lam in np.linspace(0.0, 1.0, 21):
        value = {name: lam * rel(v) - (1 - lam) * max(float(v @ near), 0)
                 for name, v in (("twin", twin), ("other", other))}
        expected = max(value, key=value.get)
        flips.add(expected)
        assert bank.retrieve(q, k=2, mmr_lambda=float(lam))[1].id == ids[expected]
    assert flips == {"twin", "other"}  # the sweep crosses the trade-off point
    bank.close()


def test_retrieve_filters_and_edge_cases(tmp_path, bank):
    assert bank.retrieve(unit(1, 0)) == []  # nothing yet: any length accepted
    bank.record(exp(True, unit(1, 0)))
    bank.record(exp(False, unit(1, 0)))
    bank.distill()
    assert [i.source_outcome for i in bank.retrieve(unit(1, 0), outcome="failure")] == [
        "failure"]
    assert len(bank.retrieve(unit(1, 0), k=10)) == 2
    with pytest.raises(ValueError, match="length 2"):
        bank.retrieve(np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        bank.retrieve([np.nan, 1.0])
    with pytest.raises(ValueError, match="all zeros"):
        bank.retrieve([0.0, 0.0])
    with pytest.raises(ValueError, match="k must be a positive int"):
        bank.retrieve(unit(1, 0), k=0)
    with pytest.raises(ValueError, match="mmr_lambda"):
        bank.retrieve(unit(1, 0), mmr_lambda=1.5)
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        bank.retrieve(unit(1, 0), weights=RetrievalWeights(similarity=-1))
    with pytest.raises(ValueError, match="at least one retrieval weight"):
        bank.retrieve(unit(1, 0), weights=RetrievalWeights(0, 0, 0))
    with pytest.raises(ValueError, match="outcome must be"):
        bank.retrieve(unit(1, 0), outcome="meh")
    with pytest.raises(ValueError, match="dimension 2"):
        bank.record(exp(True, unit(1, 0, 0)))
    assert len(bank) == 2


# -- consolidate ------------------------------------------------------------------------


@pytest.fixture
def strict_bank(tmp_path, clock):
    """Regions only form from near-identical vectors, so consolidation has work to do."""
    b = ReasoningBank(tmp_path / "strict.db", clock=clock, region_similarity=0.999)
    yield b
    b.close()


def test_consolidate_merges_near_duplicates_into_the_better_supported(strict_bank):
    b = strict_bank
    strong, weak, far = unit(1, 0, 0), unit(1, 0.1, 0), unit(0, 0, 1)
    for _ in range(5):
        b.record(exp(True, strong))
    for _ in range(2):
        b.record(exp(True, weak))
    b.record(exp(False, weak))
    b.record(exp(True, far))
    b.record(exp(True, weak, symbol="MSFT"))  # same pattern, another situation
    b.distill()
    weak_items = [i for i in b.memory_items() if "of 3 times" in i.description]
    b.retrieve(weak, k=1, outcome="failure")
    assert len(b.memory_items()) == 5

    report = b.consolidate(merge_similarity=0.95)
    assert report.merged_regions == 1 and report.removed_items == len(weak_items) == 2
    assert report.pruned_items == 0 and report.remaining_items == 4
    items = b.memory_items()
    aapl = sorted((i.source_outcome, i.support, i.evidence, i.usage_count) for i in items
                  if "symbol=AAPL" in i.description and i.support > 1)
    # The keeper now holds 8 experiences: 7 hits and the 1 miss, whose item kept its use.
    assert aapl == [("failure", 8, 1, 1), ("success", 8, 7, 0)]
    assert any("symbol=MSFT" in i.description for i in items)
    assert any(i.support == 1 and "symbol=AAPL" in i.description for i in items)
    assert b.consolidate(merge_similarity=0.95).merged_regions == 0  # nothing left to do


def test_consolidate_is_not_transitive_and_plans_before_deleting(strict_bank):
    b = strict_bank
    a, m, c = unit(1, 0), unit(1, 0.45), unit(1, 0.95)  # a~m and m~c, but not a~c
    for vector, n in ((a, 3), (m, 2), (c, 1)):
        for _ in range(n):
            b.record(exp(True, vector))
    b.distill()
    assert float(a @ m) > 0.9 and float(m @ c) > 0.9 and float(a @ c) < 0.9
    report = b.consolidate(merge_similarity=0.9)
    assert report.merged_regions == 1
    assert sorted(i.support for i in b.memory_items()) == [1, 5]


def test_success_and_failure_items_of_one_situation_are_both_kept(strict_bank):
    b = strict_bank
    for hit in (True, False, True, False):
        b.record(exp(hit, unit(1, 0)))
    b.distill()
    report = b.consolidate(merge_similarity=-1.0, min_confidence=0.0)
    assert report.removed_items == 0 and report.pruned_items == 0
    assert sorted(i.source_outcome for i in b.memory_items()) == ["failure", "success"]


def test_prune_takes_only_stale_unused_low_confidence_items(strict_bank, clock):
    b = strict_bank
    for vector, hits, misses in ((unit(1, 0, 0), 1, 5), (unit(0, 1, 0), 1, 5),
                                 (unit(0, 0, 1), 1, 5)):
        for _ in range(hits):
            b.record(exp(True, vector, ts=T0))
        for _ in range(misses):
            b.record(exp(False, vector, ts=T0))
    b.distill()  # each region: a weak success item (2/8) and a strong failure item (6/8)
    clock.now = T0 + 200 * DAY
    b.retrieve(unit(0, 1, 0), outcome="success")  # one weak item gets used
    b.record(exp(True, unit(0, 0, 1), ts=clock.now))
    b.distill()  # another gets fresh evidence (confidence 3/9, still weak)
    report = b.consolidate(stale_days=90, min_confidence=0.35)
    assert report.pruned_items == 1
    left = b.memory_items()
    assert sorted(i.source_outcome for i in left) == ["failure"] * 3 + ["success"] * 2
    assert not any(i.source_outcome == "success" and "correctly 1 of 6" in i.description
                   and i.usage_count == 0 for i in left)
    # New evidence brings a pruned lesson back.
    b.record(exp(True, unit(1, 0, 0), ts=clock.now))
    b.distill()
    assert len(b.memory_items()) == 6


def test_consolidate_arguments(bank):
    with pytest.raises(ValueError, match="merge_similarity"):
        bank.consolidate(merge_similarity=2)
    with pytest.raises(ValueError, match="stale_days"):
        bank.consolidate(stale_days=-1)
