"""Index choice by size and merged top-k search across brands."""

from __future__ import annotations

import numpy as np
import pytest

from index.search import Levels, PooledFlat, FLAT_MAX, HNSW_MAX, HNSW_WIDE_FROM, PQ_MIN, build_faiss_index, choose_index_kind, effective_kind, hnsw_ef_search, ivf_lists, search_brands


def unit(rng, n, d=32):
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_rule_is_flat_then_hnsw_then_ivf_and_pq_over_the_memory_budget():
    assert choose_index_kind(1) == "flat"
    assert choose_index_kind(FLAT_MAX) == "flat"
    assert choose_index_kind(FLAT_MAX + 1) == "hnsw"
    assert choose_index_kind(HNSW_MAX) == "hnsw"
    assert choose_index_kind(HNSW_MAX + 1) == "ivf"
    # 100,000 vectors of 1280 floats are 512 MB
    assert choose_index_kind(100_000, 1280, memory_budget=600 * 2**20) == "hnsw"
    assert choose_index_kind(100_000, 1280, memory_budget=400 * 2**20) == "ivfpq"
    assert effective_kind("ivfpq", PQ_MIN - 1) == "flat" and effective_kind("ivfpq", PQ_MIN) == "ivfpq"
    assert [ivf_lists(n) for n in (100, 10_000, 1_000_000)] == [2, 128, 1024]
    # bigger graphs search wider, or recall falls (0.905 at efSearch 128 against 0.96 at 1024, 1M vectors)
    assert hnsw_ef_search(HNSW_WIDE_FROM) == 128 and hnsw_ef_search(HNSW_WIDE_FROM + 1) == 1024


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_every_kind_finds_a_stored_vector_first(kind):
    rng = np.random.default_rng(0)
    vectors = unit(rng, 2000)
    index = build_faiss_index(vectors, kind)
    sims, rows = index.search(vectors[:50], 1)
    assert (rows[:, 0] == np.arange(50)).mean() >= 0.95
    assert np.allclose(sims[:, 0][rows[:, 0] == np.arange(50)], 1.0, atol=1e-4)


def test_compressed_index_finds_most_stored_vectors_in_32x_less_memory():
    import faiss

    rng = np.random.default_rng(0)
    vectors = unit(rng, PQ_MIN, d=256)
    index = build_faiss_index(vectors, "ivfpq")
    _, rows = index.search(vectors[:100], 1)
    assert (rows[:, 0] == np.arange(100)).mean() >= 0.8
    flat_bytes = faiss.serialize_index(build_faiss_index(vectors, "flat")).nbytes
    assert faiss.serialize_index(index).nbytes < flat_bytes / 8


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown index kind"):
        build_faiss_index(np.zeros((1, 4), np.float32), "lsh")


def test_search_merges_brands_by_similarity():
    rng = np.random.default_rng(1)
    a, b = unit(rng, 5), unit(rng, 3)
    indexes = {"A": build_faiss_index(a, "flat"), "B": build_faiss_index(b, "flat"),
               "Empty": build_faiss_index(np.zeros((0, 32), np.float32), "flat")}
    query = (0.6 * a[2] + 0.8 * b[1])
    query /= np.linalg.norm(query)
    hits = search_brands(indexes, query[None], k=4)[0]
    assert len(hits) == 4
    assert hits[0].brand == "B" and hits[0].row == 1
    assert {(h.brand, h.row) for h in hits[:2]} == {("B", 1), ("A", 2)}
    assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)
    assert search_brands(indexes, np.zeros((0, 32), np.float32), k=3) == []


def test_equal_similarities_are_ordered_by_brand_then_row_whatever_the_index_order():
    rng = np.random.default_rng(2)
    same = np.repeat(unit(rng, 1), 3, axis=0)
    queries = np.concatenate([same[:1], -same[:1]])
    indexes = {"Zed": build_faiss_index(same, "flat"), "Alpha": build_faiss_index(same[:2], "flat")}
    near, far = search_brands(indexes, queries, k=4)
    assert [(h.brand, h.row) for h in near] == [("Alpha", 0), ("Alpha", 1), ("Zed", 0), ("Zed", 1)]
    assert all(isinstance(h.row, int) and isinstance(h.similarity, float) for h in near)
    assert [round(h.similarity, 4) for h in near] == [1.0] * 4 and [round(h.similarity, 4) for h in far] == [-1.0] * 4


def test_brands_pooled_in_one_index_give_the_hits_of_one_index_per_brand():
    rng = np.random.default_rng(3)
    brands = {f"B{i:03d}": unit(rng, int(rng.integers(1, 5))) for i in range(120)}
    brands["Empty"] = np.zeros((0, 32), np.float32)
    queries = unit(rng, 20)
    queries[0] = brands["B007"][0]
    apart = search_brands({name: build_faiss_index(v, "flat") for name, v in brands.items()}, queries, k=10)
    pooled = search_brands({}, queries, k=10, pooled=PooledFlat(brands, 32))
    assert [[(h.brand, h.row) for h in hits] for hits in pooled] == [[(h.brand, h.row) for h in hits] for hits in apart]
    assert pooled[0][0].brand == "B007" and pooled[0][0].row == 0
    mixed = search_brands({"B007": build_faiss_index(brands["B007"], "flat")}, queries, k=10,
                          pooled=PooledFlat({n: v for n, v in brands.items() if n != "B007"}, 32))
    assert [[(h.brand, h.row) for h in hits] for hits in mixed] == [[(h.brand, h.row) for h in hits] for hits in apart]


def test_a_search_by_levels_keeps_the_hits_furthest_above_their_brands_level():
    rng = np.random.default_rng(5)
    brands = {f"B{i:03d}": unit(rng, int(rng.integers(1, 5))) for i in range(150)}
    levels = Levels({name: float(rng.uniform(0.2, 0.9)) for name in brands})
    queries = unit(rng, 12)
    found = search_brands({}, queries, k=5, pooled=PooledFlat(brands, 32), levels=levels)
    for query, hits in zip(queries, found):
        every = sorted((-(float(v @ query) - levels.by_brand[name]), name, row, float(v @ query))
                       for name, vs in brands.items() for row, v in enumerate(vs))[:5]
        assert [(h.brand, h.row) for h in hits] == [(name, row) for _, name, row, _ in every]
        assert np.allclose([h.similarity for h in hits], [sim for *_, sim in every], atol=1e-6)  # similarities, not margins
    apart = search_brands({name: build_faiss_index(v, "flat") for name, v in list(brands.items())[:60]}, queries, k=5,
                          pooled=PooledFlat(dict(list(brands.items())[60:]), 32), levels=levels)
    assert [[(h.brand, h.row) for h in hits] for hits in apart] == [[(h.brand, h.row) for h in hits] for hits in found]


def test_a_brand_with_a_low_level_is_not_crowded_out_by_closer_products_of_brands_far_below_theirs():
    rng = np.random.default_rng(6)
    query = unit(rng, 1)[0]
    crowd = {f"Crowd {i:03d}": unit(rng, 3) * 0.3 + query * 0.7 for i in range(300)}  # all closer than the product
    crowd = {name: v / np.linalg.norm(v, axis=1, keepdims=True) for name, v in crowd.items()}
    mine = unit(rng, 1) * 0.5 + query * 0.5
    brands = {**crowd, "Mine": mine / np.linalg.norm(mine)}
    closest = float(max(v @ query for vs in crowd.values() for v in vs))
    assert float(brands["Mine"][0] @ query) < closest
    pooled = PooledFlat(brands, 32)
    levels = Levels({**{name: 0.95 for name in crowd}, "Mine": 0.5})
    assert "Mine" not in {h.brand for h in search_brands({}, query[None], k=5, pooled=pooled)[0]}
    assert search_brands({}, query[None], k=5, pooled=pooled, levels=levels)[0][0].brand == "Mine"
