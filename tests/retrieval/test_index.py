"""Search indexes: exact numpy search, the optional faiss HNSW graph, the automatic choice and its cache."""

from __future__ import annotations

import numpy as np
import pytest

import backend.retrieval.index as index_mod
from backend.retrieval.build import normalise
from backend.retrieval.index import ExactIndex, make_index


def clustered(n: int, dim: int = 32, centres: int = 20, seed: int = 0) -> np.ndarray:
    """Unit vectors around a few centres (structured like real embeddings, unlike uniform noise)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim))
    return normalise(c[rng.integers(0, centres, n)] + 0.3 * rng.standard_normal((n, dim)))


def brute_force(x: np.ndarray, q: np.ndarray, k: int, exclude=()) -> list[int]:
    s = x @ q
    order = [int(i) for i in np.argsort(-s, kind="stable") if int(i) not in set(exclude)]
    return order[:k]


def test_exact_index_matches_brute_force_and_honours_exclusions():
    x = clustered(300)
    queries = clustered(5, seed=1)
    index = ExactIndex(x)
    excl = [None, np.array([brute_force(x, queries[1], 1)[0]]), np.arange(0, 300, 2), None, np.arange(295)]
    sims, rows = index.search(queries, 7, excl)
    for i, q in enumerate(queries):
        gone = [] if excl[i] is None else excl[i].tolist()
        want = brute_force(x, q, 7, gone)
        got = [r for r in rows[i].tolist() if r >= 0]
        assert got == want
        np.testing.assert_allclose(sims[i, : len(got)], x[got] @ q, atol=1e-5)
    assert rows[4].tolist()[5:] == [-1, -1] and np.isneginf(sims[4, 5:]).all()  # only 5 rows were left


def test_auto_uses_exact_search_without_faiss(monkeypatch):
    monkeypatch.setattr(index_mod, "faiss_available", lambda: False)
    assert isinstance(make_index(clustered(50), exact_max=10), ExactIndex)
    with pytest.raises(ValueError, match="unknown index kind"):
        make_index(clustered(5), kind="annoy")


def test_hnsw_agrees_with_exact_search_and_caches_its_graph(tmp_path, monkeypatch):
    pytest.importorskip("faiss", reason="faiss-cpu is optional (pip install -e .[retrieval])")
    x = clustered(2000, dim=48)
    queries = clustered(50, dim=48, seed=3)
    index = make_index(x, exact_max=100, cache_dir=tmp_path, cache_key="build-1")
    assert index.kind == "faiss-hnsw" and (tmp_path / "ann_hnsw.faiss").is_file()
    exact = ExactIndex(x)
    _, want = exact.search(queries, 10)
    sims, got = index.search(queries, 10)
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got.tolist(), want.tolist(), strict=True)])
    assert recall >= 0.9
    np.testing.assert_allclose(sims[0], x[got[0]] @ queries[0], atol=1e-4)
    # Excluding the 40 true nearest neighbours still returns 10 rows, none of them excluded.
    _, near = exact.search(queries[:1], 40)
    _, rows = index.search(queries[:1], 10, [near[0]])
    assert len(rows[0]) == 10 and (rows[0] >= 0).all() and not set(rows[0].tolist()) & set(near[0].tolist())
    # The same build reuses the cached graph; another build id rebuilds it.
    built = []
    real_init = index_mod.HNSWIndex.__init__
    monkeypatch.setattr(index_mod.HNSWIndex, "__init__",
                        lambda self, emb, graph=None, **kw: built.append(graph is None) or real_init(self, emb, graph,
                                                                                                    **kw))
    again = make_index(x, exact_max=100, cache_dir=tmp_path, cache_key="build-1")
    assert built == [False] and np.array_equal(again.search(queries, 10)[1], got)
    make_index(x, exact_max=100, cache_dir=tmp_path, cache_key="build-2")
    assert built == [False, True]


def test_a_cached_graph_that_does_not_fit_the_embeddings_is_rebuilt(tmp_path):
    """The stamp and the graph share one file; a graph of another size is never searched."""
    pytest.importorskip("faiss", reason="faiss-cpu is optional (pip install -e .[retrieval])")
    import json

    old, new = clustered(400, dim=16), clustered(300, dim=16, seed=5)
    make_index(old, kind="hnsw", cache_dir=tmp_path, cache_key="build-1")
    stale = (tmp_path / "ann_hnsw.faiss").read_bytes().partition(b"\n")[2]  # the old build's graph
    stamp = json.dumps({"build_id": "build-2", "rows": 300, "dim": 16, "m": index_mod.HNSW_M,
                        "ef_construction": index_mod.HNSW_EF_CONSTRUCTION}).encode()
    (tmp_path / "ann_hnsw.faiss").write_bytes(stamp + b"\n" + stale)  # whatever wrote it, it does not fit
    index = make_index(new, kind="hnsw", cache_dir=tmp_path, cache_key="build-2")
    assert len(index) == 300
    _, rows = index.search(new[:5], 10)
    assert (rows < 300).all() and (rows[:, 0] == np.arange(5)).all()
