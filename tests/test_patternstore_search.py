"""PatternStore: exact top-k against brute force, filters, deletes, upserts, reopening."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from midswarm.reasoning import Hit, PatternStore


def brute_force(vectors: dict[int, np.ndarray], q: np.ndarray, k: int, metric: str,
                keep=lambda i: True) -> list[tuple[int, float]]:
    """The reference answer: score everything in float64, sort (ties by id), take k."""
    ids = np.array([i for i in sorted(vectors) if keep(i)], np.int64)
    if len(ids) == 0:
        return []
    x = np.stack([vectors[i] for i in ids]).astype(np.float64)
    q64 = np.asarray(q, np.float64)
    if metric == "cosine":
        scores = x @ q64 / np.linalg.norm(x, axis=1) / np.linalg.norm(q64)
        order = np.lexsort((ids, -scores))[:k]
    else:
        scores = np.linalg.norm(x - q64, axis=1)
        order = np.lexsort((ids, scores))[:k]
    return [(int(ids[i]), float(scores[i])) for i in order]


def assert_matches(hits: list[Hit], expected: list[tuple[int, float]]) -> None:
    assert [h.id for h in hits] == [i for i, _ in expected]
    np.testing.assert_allclose([h.score for h in hits], [s for _, s in expected],
                               rtol=1e-5, atol=1e-5)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20250101)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_search_equals_brute_force(tmp_path, rng, metric):
    store = PatternStore(tmp_path / "p.db", 16, metric)
    vecs = rng.standard_normal((3000, 16)).astype(np.float32)
    ids = store.add(vecs)
    assert ids == list(range(3000))
    assert len(store) == 3000
    stored = dict(zip(ids, vecs, strict=True))
    for q in rng.standard_normal((20, 16)).astype(np.float32):
        assert_matches(store.search(q, 10), brute_force(stored, q, 10, metric))
    store.close()


def test_cosine_scores_are_similarities_l2_scores_are_distances(tmp_path):
    cos = PatternStore(tmp_path / "c.db", 2, "cosine")
    l2 = PatternStore(tmp_path / "l.db", 2, "l2")
    for store in (cos, l2):
        store.add(np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]))
    assert [(h.id, round(h.score, 6)) for h in cos.search([2.0, 0.0], 3)] == [
        (0, 1.0), (1, 0.0), (2, -1.0)]
    assert [(h.id, round(h.score, 6)) for h in l2.search([2.0, 0.0], 3)] == [
        (0, 1.0), (1, round(8 ** 0.5, 6)), (2, 5.0)]


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_random_adds_deletes_upserts_match_a_model(tmp_path_factory, data):
    """Any sequence of writes leaves search equal to brute force over a dict model.

    Half the runs force the int8-bounded scan (normally only used for large stores).
    """
    bounded = data.draw(st.booleans())
    with mock.patch("midswarm.reasoning._vectors._EXACT_BELOW", 0 if bounded else 4096):
        _model_run(tmp_path_factory, data)


def _model_run(tmp_path_factory, data) -> None:
    path = tmp_path_factory.mktemp("model") / "p.db"
    metric = data.draw(st.sampled_from(["cosine", "l2"]))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    store = PatternStore(path, 4, metric)
    model: dict[int, np.ndarray] = {}
    meta: dict[int, dict] = {}
    ops = data.draw(st.lists(st.sampled_from(["add", "delete", "upsert", "reopen"]),
                             min_size=1, max_size=12))
    for op in ops:
        if op == "add":
            n = int(rng.integers(1, 30))
            vecs = rng.standard_normal((n, 4)).astype(np.float32)
            mds = [{"g": int(rng.integers(0, 3))} for _ in range(n)]
            for i, v, m in zip(store.add(vecs, mds), vecs, mds, strict=True):
                model[i], meta[i] = v, m
        elif op == "delete" and model:
            victims = rng.choice(sorted(model), size=min(len(model), 7), replace=False).tolist()
            store.delete(victims)
            for i in victims:
                del model[i], meta[i]
        elif op == "upsert":
            ident = int(rng.integers(0, 60))
            v = rng.standard_normal(4).astype(np.float32)
            store.upsert(ident, v, {"g": 9})
            model[ident], meta[ident] = v, {"g": 9}
        elif op == "reopen":
            store.close()
            store = PatternStore(path, 4, metric)
    assert len(store) == len(model)
    assert sorted(store.ids()) == sorted(model)
    q = rng.standard_normal(4).astype(np.float32)
    k = int(rng.integers(1, 15))
    assert_matches(store.search(q, k), brute_force(model, q, k, metric))
    keep = [i for i in model if meta[i]["g"] == 1]
    hits = store.search(q, k, where={"g": 1})
    assert len(hits) == min(k, len(keep))
    assert_matches(hits, brute_force(model, q, k, metric, keep=lambda i: meta[i]["g"] == 1))
    for h in hits:
        assert h.metadata == meta[h.id]
    store.close()


def test_k_results_whenever_k_items_match_even_after_deletes(tmp_path, rng):
    store = PatternStore(tmp_path / "p.db", 8)
    ids = store.add(rng.standard_normal((500, 8)),
                    [{"sym": "A" if i % 5 == 0 else "B"} for i in range(500)])
    q = rng.standard_normal(8)
    # Delete the 400 nearest of the query: a tombstoning index would come back short.
    nearest = [h.id for h in store.search(q, 400)]
    store.delete(nearest)
    assert len(store) == 100
    hits = store.search(q, 10)
    assert len(hits) == 10 and not set(h.id for h in hits) & set(nearest)
    remaining_a = {i for i in ids if i % 5 == 0} - set(nearest)
    assert 0 < len(remaining_a) < 50
    hits = store.search(q, 50, where={"sym": "A"})
    assert {h.id for h in hits} == remaining_a
    hits = store.search(q, len(remaining_a) - 1, where={"sym": "A"})
    assert len(hits) == len(remaining_a) - 1
    assert len(store.search(q, 1000)) == 100


def test_filter_operators(tmp_path, rng):
    store = PatternStore(tmp_path / "p.db", 3)
    mds = [{"sym": s, "t": t, "live": t % 2 == 0} for t, s in enumerate("ABCABCABCA")]
    mds[3]["extra"] = 1.5
    store.add(rng.standard_normal((10, 3)), mds)
    q = rng.standard_normal(3)

    def ids(where):
        return sorted(h.id for h in store.search(q, 100, where=where))

    assert ids({"sym": "A"}) == [0, 3, 6, 9]
    assert ids({"sym": {"$eq": "A"}, "t": {"$gt": 3}}) == [6, 9]
    assert ids({"t": {"$gte": 2, "$lt": 5}}) == [2, 3, 4]
    assert ids({"t": {"$lte": 1.0}}) == [0, 1]
    assert ids({"sym": {"$in": ["B", "C"]}, "t": {"$lt": 4}}) == [1, 2]
    assert ids({"sym": {"$nin": ["A", "B"]}}) == [2, 5, 8]
    assert ids({"sym": {"$ne": "A"}, "live": True}) == [2, 4, 8]
    assert ids({"extra": {"$exists": True}}) == [3]
    assert ids({"extra": {"$exists": False}}) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert ids({"nokey": 1}) == []
    assert ids({"nokey": {"$ne": 1}}) == list(range(10))
    assert ids({"t": 4.0}) == [4]          # numbers compare by value
    assert ids({"live": 1}) == []          # a bool is not the number 1
    assert ids({"sym": "Z"}) == []
    assert ids({"t": np.int64(7)}) == [7]  # numpy scalars are accepted


def test_filtered_search_is_exact_at_every_selectivity(tmp_path, rng):
    store = PatternStore(tmp_path / "p.db", 8, "l2")
    vecs = rng.standard_normal((4000, 8)).astype(np.float32)
    groups = rng.integers(0, 100, size=4000)
    store.add(vecs, [{"g": int(g)} for g in groups])
    model = dict(enumerate(vecs))
    q = rng.standard_normal(8).astype(np.float32)
    for cut in (1, 10, 50, 90, 100):  # gather path and full-scan path
        hits = store.search(q, 10, where={"g": {"$lt": cut}})
        wanted = brute_force(model, q, 10, "l2", keep=lambda i, cut=cut: groups[i] < cut)
        assert_matches(hits, wanted)


def test_upsert_replaces_vector_and_metadata(tmp_path):
    store = PatternStore(tmp_path / "p.db", 2)
    store.add([[1.0, 0.0], [0.0, 1.0]], [{"a": 1}, {"a": 2}])
    store.upsert(0, [0.0, -1.0], {"b": "x"})
    got = store.get(0)
    assert got.vector.tolist() == [0.0, -1.0] and got.metadata == {"b": "x"}
    assert store.search([0.0, -1.0], 1)[0] == Hit(0, pytest.approx(1.0), {"b": "x"})
    assert store.search([0.0, 1.0], 5, where={"a": 1}) == []
    store.upsert(41, [1.0, 1.0])
    assert store.add([[2.0, 2.0]]) == [42]  # add never reuses an id below an upserted one


def test_reopen_restores_everything_ids_included(tmp_path, rng):
    path = tmp_path / "p.db"
    store = PatternStore(path, 6)
    vecs = rng.standard_normal((200, 6)).astype(np.float32)
    ids = store.add(vecs, [{"i": i, "s": f"n{i}"} for i in range(200)])
    store.delete(ids[50:120])
    store.upsert(7, vecs[0] * 3, {"s": "changed"})
    q = rng.standard_normal(6)
    before = store.search(q, 25)
    before_filtered = store.search(q, 5, where={"i": {"$gte": 150}})
    store.close()

    again = PatternStore(path, 6)
    assert len(again) == 130
    assert again.search(q, 25) == before
    assert again.search(q, 5, where={"i": {"$gte": 150}}) == before_filtered
    assert again.get(7).metadata == {"s": "changed"}
    np.testing.assert_array_equal(again.get(130).vector, vecs[130])
    # Deleted ids stay retired after a restart.
    assert again.add(vecs[:1]) == [200]
    with pytest.raises(KeyError):
        again.get(60)
    assert again.integrity_check() == ["ok"]


def test_empty_store_and_empty_batches(tmp_path):
    store = PatternStore(tmp_path / "p.db", 3)
    assert store.search([1, 2, 3], 5) == []
    assert store.search([1, 2, 3], 5, where={"x": 1}) == []
    assert store.add(np.zeros((0, 3))) == []
    store.delete([])
    assert len(store) == 0


def test_growth_past_initial_capacity_keeps_rows_and_metadata(tmp_path, rng):
    store = PatternStore(tmp_path / "p.db", 4)
    model = {}
    for _ in range(5):
        vecs = rng.standard_normal((700, 4)).astype(np.float32)
        for i, v in zip(store.add(vecs, [{"b": True}] * 700), vecs, strict=True):
            model[i] = v
    assert len(store) == 3500
    q = rng.standard_normal(4).astype(np.float32)
    assert_matches(store.search(q, 10, where={"b": True}), brute_force(model, q, 10, "cosine"))


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("data_kind", ["gaussian", "clustered", "spiky", "offset", "ties"])
def test_bounded_scan_is_exact_on_hard_data(tmp_path, metric, data_kind):
    """Large stores take the int8-bounded path; it must still return the exact top-k."""
    rng = np.random.default_rng(hash(data_kind) % 2**32)
    n, d = 12_000, 24
    if data_kind == "gaussian":
        vecs = rng.standard_normal((n, d))
    elif data_kind == "clustered":  # many near-duplicates: scores crowd the boundary
        vecs = rng.standard_normal((20, d))[rng.integers(0, 20, n)]
        vecs += 1e-3 * rng.standard_normal((n, d))
    elif data_kind == "spiky":  # one huge component makes the int8 grid coarse
        vecs = rng.standard_normal((n, d))
        vecs[:, 0] *= 1000
    elif data_kind == "offset":  # large norms: L2 keys cancel heavily
        vecs = 1000 + rng.standard_normal((n, d))
    else:  # exact duplicates: ties broken by id
        vecs = np.repeat(rng.standard_normal((n // 100, d)), 100, axis=0)
    vecs = vecs.astype(np.float32)
    store = PatternStore(tmp_path / "p.db", d, metric)
    groups = rng.integers(0, 3, n)
    store.add(vecs, [{"g": int(g)} for g in groups])
    model = dict(enumerate(vecs))
    queries = list(rng.standard_normal((6, d)).astype(np.float32)) + [vecs[5], vecs[77] + 1e-4]
    for q in queries:
        for k, where in ((1, None), (10, None), (50, None), (10, {"g": {"$ne": 0}})):
            bounded = store.search(q, k, where=where)
            with mock.patch("midswarm.reasoning._vectors._EXACT_BELOW", 10**9):
                exhaustive = store.search(q, k, where=where)
            # The bounded scan returns exactly what scoring every row returns...
            assert bounded == exhaustive
            # ...which is the float64 answer up to the float32 storage of the vectors.
            keep = (lambda i: True) if where is None else (lambda i: groups[i] != 0)
            expected = brute_force(model, q, k, metric, keep=keep)
            np.testing.assert_allclose([h.score for h in bounded], [s for _, s in expected],
                                       rtol=1e-5, atol=1e-5)
            assert where is None or all(groups[h.id] != 0 for h in bounded)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("d", [3, 64, 700])
def test_int8_bounds_hold_for_every_row(metric, d):
    """The scan's per-row upper bounds and k-th lower bound enclose the exact keys."""
    from midswarm.reasoning._kernels import exact_keys, scan_bounds
    from midswarm.reasoning._vectors import VectorMatrix

    rng = np.random.default_rng(d)
    n = 3000
    rows = rng.standard_normal((n, d)) * rng.lognormal(0, 2, (n, 1))  # very mixed scales
    rows[:100, 0] *= 1e4  # spiky rows: coarse codes
    if metric == "l2":
        rows[100:200] += 300.0  # far from the origin: heavy cancellation in 2x.q - |x|^2
    matrix = VectorMatrix(d, metric)
    matrix.append(np.arange(n), matrix.prepare(rows.astype(np.float32)))
    upper = np.empty(n, np.float32)
    for trial in range(5):
        q = matrix.prepare_query(rng.standard_normal(d) * 10.0 ** (trial - 2))
        exact = np.empty(n)
        exact_keys(matrix._data, np.arange(n), q, metric == "l2", exact)
        if metric == "l2":  # the scan bounds 2 x.q - |x|^2 = exact + |q|^2
            exact = exact + float(q.astype(np.float64) @ q)
        for k in (1, 10, 100):
            floor = scan_bounds(matrix._codes, matrix._scales, matrix._sqnorm, n, q,
                                metric == "l2", k, matrix._no_mask, False, upper)
            assert np.all(upper.astype(np.float64) >= exact)
            assert floor <= np.sort(exact)[-k]
