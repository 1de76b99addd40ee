"""FAISS index choice by size, construction, and top-k search merged across per-brand indexes.

The rule (see docs/index.md):
- up to ``FLAT_MAX`` vectors: exact ``IndexFlatIP`` (inner product = cosine on unit vectors);
- above it: ``IndexHNSWFlat`` (M=32, inner product), which needs no training and keeps
  recall@10 high with ``efSearch`` = 128.
``IVF`` (nlist = 4·sqrt(n)) is available by name for users who prefer a trained index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

FLAT_MAX = 20_000
INDEX_KINDS = ("flat", "hnsw", "ivf")


def choose_index_kind(n_vectors: int) -> str:
    """Pick the index kind for a brand of ``n_vectors`` reference vectors."""
    return "flat" if n_vectors <= FLAT_MAX else "hnsw"


def build_faiss_index(vectors: np.ndarray, kind: str) -> faiss.Index:
    """Build an inner-product index of ``kind`` over unit ``vectors`` ([n, d] float32)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
    elif kind == "ivf":
        nlist = max(1, min(n // 39, int(4 * math.sqrt(n))))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = max(1, min(nlist, 16))
    else:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    if n:
        index.add(vectors)
    return index


@dataclass(frozen=True)
class Hit:
    """One neighbour: the brand, the row of that brand's reference table, and the cosine similarity."""

    brand: str
    row: int
    similarity: float


def search_brands(indexes: dict[str, faiss.Index], queries: np.ndarray, k: int) -> list[list[Hit]]:
    """Search every brand's index and merge: for each query, its ``k`` most similar references overall."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    merged: list[list[Hit]] = [[] for _ in range(len(queries))]
    if len(queries) == 0:
        return merged
    for brand, index in indexes.items():
        depth = min(k, index.ntotal)
        if depth == 0:
            continue
        similarities, rows = index.search(queries, depth)
        for q in range(len(queries)):
            merged[q].extend(
                Hit(brand, int(row), float(sim)) for sim, row in zip(similarities[q], rows[q]) if row >= 0
            )
    return [sorted(hits, key=lambda hit: (-hit.similarity, hit.brand, hit.row))[:k] for hits in merged]
