"""PatternStore's optional approximate (hnswlib) index."""

from __future__ import annotations

import builtins
import importlib.util

import numpy as np
import pytest

from midswarm.reasoning import PatternStore

needs_hnswlib = pytest.mark.skipif(
    importlib.util.find_spec("hnswlib") is None,
    reason="hnswlib is not installed (optional extra midswarm[ann]); the exact path is "
           "tested everywhere else")


def test_missing_hnswlib_is_a_clear_error(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_hnswlib(name, *args, **kwargs):
        if name == "hnswlib":
            raise ImportError("No module named 'hnswlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_hnswlib)
    with pytest.raises(ImportError, match=r"approximate=True needs the hnswlib package.*"
                                          r"midswarm\[ann\]"):
        PatternStore(tmp_path / "p.db", 4, approximate=True)
    # The exact store never imports it.
    PatternStore(tmp_path / "q.db", 4).close()


def test_recall_needs_the_index(tmp_path):
    store = PatternStore(tmp_path / "p.db", 4)
    with pytest.raises(ValueError, match="no approximate index"):
        store.ann_recall(np.ones((1, 4)))


@needs_hnswlib
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_approximate_search_has_high_recall_and_exact_scores(tmp_path, metric):
    rng = np.random.default_rng(5)
    store = PatternStore(tmp_path / "p.db", 16, metric, approximate=True)
    store.add(rng.standard_normal((3000, 16)), [{"g": i % 4} for i in range(3000)])
    queries = rng.standard_normal((30, 16))
    assert store.ann_recall(queries, 10) >= 0.9
    for q in queries[:5]:
        approx = store.search(q, 10)
        exact = {h.id: h.score for h in store.search(q, 10, exact=True)}
        assert len(approx) == 10
        for h in approx:  # every returned score is the exact score of that id
            if h.id in exact:
                assert h.score == pytest.approx(exact[h.id])
        # Filtered searches are answered exactly.
        assert store.search(q, 10, where={"g": 1}) == store.search(q, 10, where={"g": 1},
                                                                   exact=True)


@needs_hnswlib
def test_approximate_index_follows_deletes_upserts_and_reopen(tmp_path):
    rng = np.random.default_rng(6)
    path = tmp_path / "p.db"
    store = PatternStore(path, 8, approximate=True)
    ids = store.add(rng.standard_normal((500, 8)))
    store.delete(ids[:490])
    q = rng.standard_normal(8)
    hits = store.search(q, 10)
    assert sorted(h.id for h in hits) == sorted(ids[490:])
    store.upsert(ids[0], q * 2)  # a deleted id comes back, nearest of all
    assert store.search(q, 1)[0].id == ids[0]
    store.close()
    again = PatternStore(path, 8, approximate=True)
    assert again.search(q, 1)[0].id == ids[0]
    assert len(again.search(q, 20)) == 11
