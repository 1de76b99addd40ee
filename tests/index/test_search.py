"""Index choice by size and merged top-k search across brands."""

from __future__ import annotations

import numpy as np
import pytest

from index.search import FLAT_MAX, build_faiss_index, choose_index_kind, search_brands


def unit(rng, n, d=32):
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_rule_is_flat_for_small_brands_and_hnsw_for_large():
    assert choose_index_kind(1) == "flat"
    assert choose_index_kind(FLAT_MAX) == "flat"
    assert choose_index_kind(FLAT_MAX + 1) == "hnsw"


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_every_kind_finds_a_stored_vector_first(kind):
    rng = np.random.default_rng(0)
    vectors = unit(rng, 2000)
    index = build_faiss_index(vectors, kind)
    sims, rows = index.search(vectors[:50], 1)
    assert (rows[:, 0] == np.arange(50)).mean() >= 0.95
    assert np.allclose(sims[:, 0][rows[:, 0] == np.arange(50)], 1.0, atol=1e-4)


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
