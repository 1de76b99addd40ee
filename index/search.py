"""FAISS index choice by size, construction, and top-k search merged across per-brand indexes.

The rule (measured by scripts/bench.py on synthetic vectors with real embeddings' spectrum;
see docs/index.md and docs/performance.md):
- up to ``FLAT_MAX`` vectors: exact ``IndexFlatIP`` (inner product = cosine on unit vectors);
- up to ``HNSW_MAX``: ``IndexHNSWFlat`` (M = 32, efConstruction 80), no training; efSearch 128
  up to ``HNSW_WIDE_FROM`` vectors (recall@10 0.978 at 100k, 7x Flat), 1024 above (0.96 at 1M,
  14x Flat; IVF reached 0.69 there at nprobe 32). Its build is the price: 732-766 s per million
  1280-d vectors on 2 cores;
- above: ``IndexIVFFlat`` with nlist = the power of two nearest sqrt(n) (at most n/39) and
  nprobe = ``IVF_NPROBE`` (not measured beyond 1M);
- whenever the full vectors (4 bytes x d per vector) would exceed a memory budget:
  ``IndexIVFPQ`` with d/16 sub-quantizers of 8 bits (one byte per 16 dimensions), trading recall
  for about 50x less memory (95 bytes per 1280-d vector with its id, measured);
- ``ivfdisk`` (asked for by name): IVF-Flat with its lists in a memory-mapped file
  (index/ondisk.py), for brands bigger than memory.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass, field

import faiss
import numpy as np

FLAT_MAX = 20_000
HNSW_MAX = 1_000_000
HNSW_WIDE_FROM = 200_000
IVF_NPROBE = 32
HNSW_EF_SEARCH = 128
HNSW_EF_SEARCH_WIDE = 1024


def hnsw_ef_search(n_vectors: int) -> int:
    """efSearch for an HNSW index of ``n_vectors``: wider search in bigger graphs keeps recall."""
    return HNSW_EF_SEARCH if n_vectors <= HNSW_WIDE_FROM else HNSW_EF_SEARCH_WIDE
INDEX_KINDS = ("flat", "hnsw", "ivf", "ivfpq", "ivfdisk")


def choose_index_kind(n_vectors: int, dim: int = 1280, memory_budget: int | None = None) -> str:
    """Pick the index kind for a brand of ``n_vectors`` reference vectors of size ``dim``, keeping
    the vectors under ``memory_budget`` bytes when one is given."""
    if memory_budget is not None and n_vectors * dim * 4 > memory_budget:
        return "ivfpq"
    if n_vectors <= FLAT_MAX:
        return "flat"
    return "hnsw" if n_vectors <= HNSW_MAX else "ivf"


PQ_MIN = 10_000  # fewer vectors than this cannot train 256-centroid codebooks well; they stay Flat


def effective_kind(kind: str, n_vectors: int) -> str:
    """The kind actually built: a brand too small for product quantisation, or an empty one
    asked for on-disk lists, gets Flat."""
    if kind == "ivfpq" and n_vectors < PQ_MIN or kind == "ivfdisk" and n_vectors == 0:
        return "flat"
    return kind


def ivf_lists(n_vectors: int) -> int:
    """nlist for an IVF index of ``n_vectors``: the power of two nearest sqrt(n), at most n/39."""
    nearest = 2 ** round(math.log2(max(1.0, math.sqrt(n_vectors))))
    return max(1, min(n_vectors // 39, nearest))


def train_sample(vectors: np.ndarray, centroids: int) -> np.ndarray:
    """The rows k-means trains ``centroids`` centroids on: 40 per centroid is plenty and keeps
    training time flat in n (drawn in row order, so a memory-mapped array is read once)."""
    n = len(vectors)
    points = 40 * centroids
    if n <= points:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(0).choice(n, points, replace=False))
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def build_faiss_index(vectors: np.ndarray, kind: str) -> faiss.Index:
    """Build an inner-product index of ``kind`` over unit ``vectors`` ([n, d] float32)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = hnsw_ef_search(n)
    elif kind in ("ivf", "ivfpq"):
        nlist = ivf_lists(n)
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            if dim % 16:
                raise ValueError(f"ivfpq needs a dimension divisible by 16, not {dim}")
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, dim // 16, 8, faiss.METRIC_INNER_PRODUCT)
        index.train(train_sample(vectors, max(nlist, 256)))
        index.nprobe = min(nlist, IVF_NPROBE)
    elif kind == "ivfdisk":
        raise ValueError("ivfdisk keeps its lists in a file: build it with index.ondisk.build_ondisk_ivf")
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


@dataclass(frozen=True, eq=False)
class Levels:
    """A level for each brand that a search ranks its hits against: it keeps the ``k`` references
    furthest above their brand's level (similarity minus level) instead of the ``k`` most similar.
    Among many brands, brands whose levels are high otherwise fill the candidates with products that
    are close but far below those levels, and a brand whose lower level a less similar product
    reaches loses it from them. Hits keep their similarity."""

    by_brand: dict[str, float]
    key: str = field(init=False)

    def __post_init__(self):
        values = np.array([self.by_brand[b] for b in sorted(self.by_brand)], np.float64)
        digest = hashlib.sha256("|".join(sorted(self.by_brand)).encode() + values.tobytes()).hexdigest()[:16]
        object.__setattr__(self, "key", digest)


class PooledFlat:
    """Many brands' vectors in one exact inner-product index, searched once instead of once per
    brand: the same neighbours (Flat is exact), at about a single index's cost however many brands
    share it. Rows are ordered by brand name, then the brand's own row.

    A search by :class:`Levels` runs on a copy whose vectors carry one more coordinate, minus their
    brand's level, searched with a query whose extra coordinate is 1: the inner product is then
    similarity minus level, and the exact top ``k`` of it is found in the same single pass. Each
    index (plain, or by some levels) is made on the first search that needs it, and kept."""

    def __init__(self, vectors_by_brand: dict[str, np.ndarray], dim: int, exact=None):
        """``exact(vectors)`` makes the exact index over them (default: FAISS ``IndexFlatIP``; the
        GPU path passes its torch search)."""
        self.brands = sorted(vectors_by_brand)
        self.vectors = vectors_by_brand
        self.dim = dim
        self.exact = exact
        sizes = [len(vectors_by_brand[b]) for b in self.brands]
        self.owner = np.repeat(np.arange(len(self.brands)), sizes)
        self.rows = np.concatenate([np.arange(n) for n in sizes]) if sizes else np.zeros(0, np.int64)
        self._made: dict[str | None, tuple[object, np.ndarray | None]] = {}
        self._lock = threading.Lock()

    def _make(self, part, dim: int):
        """An exact index over ``part(brand)`` for every brand, in brand order."""
        if self.exact is None:
            index = faiss.IndexFlatIP(dim)
            for brand in self.brands:
                if len(self.vectors[brand]):
                    index.add(np.ascontiguousarray(part(brand), dtype=np.float32))
            return index
        return self.exact(np.concatenate([np.asarray(part(b), np.float32) for b in self.brands])
                          if self.brands else np.zeros((0, dim), np.float32))

    def _index(self, levels: Levels | None) -> tuple[object, np.ndarray | None]:
        """The index searched by ``levels`` (the plain one for ``None``), and each row's level."""
        key = None if levels is None else levels.key
        with self._lock:
            if key not in self._made:
                if levels is None:
                    self._made[key] = (self._make(self.vectors.__getitem__, self.dim), None)
                else:
                    def part(brand: str) -> np.ndarray:
                        vectors = np.asarray(self.vectors[brand], np.float32)
                        return np.hstack([vectors, np.full((len(vectors), 1), -levels.by_brand[brand], np.float32)])

                    per_brand = np.array([levels.by_brand[b] for b in self.brands], np.float32)
                    self._made[key] = (self._make(part, self.dim + 1), per_brand[self.owner])
            return self._made[key]

    @property
    def ntotal(self) -> int:
        return len(self.owner)

    def search(self, queries: np.ndarray, k: int,
               levels: Levels | None = None) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """The ``k`` nearest rows over every pooled brand (furthest above their brand's level, with
        ``levels``): the brand names, the similarities, and each hit's brand (an index into those
        names, -1 for none) and row in its brand."""
        index, row_levels = self._index(levels)
        if levels is None:
            similarities, ids = index.search(queries, k)
        else:
            margins, ids = index.search(np.hstack([queries, np.ones((len(queries), 1), np.float32)]), k)
            similarities = np.where(ids >= 0, margins + row_levels[np.maximum(ids, 0)], margins)
        found = ids >= 0
        safe = np.where(found, ids, 0)
        return (self.brands, similarities, np.where(found, self.owner[safe], -1) if len(self.owner) else ids,
                np.where(found, self.rows[safe], -1) if len(self.rows) else ids)


def search_brands(indexes: dict[str, faiss.Index], queries: np.ndarray, k: int,
                  pooled: PooledFlat | None = None, levels: Levels | None = None) -> list[list[Hit]]:
    """Search every brand's index (and the brands ``pooled`` in one index) and merge: for each
    query, its ``k`` most similar references overall (furthest above their brand's level, with
    ``levels``; ties broken by brand name, then row). The
    merge runs in numpy and only the ``k`` kept per query become :class:`Hit` objects; merging
    every brand's hits in Python cost 18 ms per photo at 1,000 brands
    (docs/performance.md#many-brands)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    found = []  # (brand names, similarities, brand of each hit as an index into the names, rows)
    for brand, index in indexes.items():
        depth = min(k, index.ntotal)
        if depth and len(queries):
            similarities, rows = index.search(queries, depth)
            found.append(([brand], similarities, np.zeros(rows.shape, np.int64), rows))
    if pooled is not None and pooled.ntotal and len(queries):
        found.append(pooled.search(queries, min(k, pooled.ntotal), levels))
    if not found:
        return [[] for _ in range(len(queries))]
    names = sorted({brand for brands, *_ in found for brand in brands})
    rank_of = {brand: rank for rank, brand in enumerate(names)}
    similarities = np.concatenate([s for _, s, _, _ in found], axis=1)
    rows = np.concatenate([r for _, _, _, r in found], axis=1)
    brand_rank = np.concatenate([np.array([rank_of[b] for b in brands])[np.maximum(owner, 0)]
                                 for brands, _, owner, _ in found], axis=1)
    ranked = similarities if levels is None else similarities - np.array([levels.by_brand[b] for b in names])[brand_rank]
    order = np.lexsort((rows, brand_rank, np.where(rows >= 0, -ranked, np.inf)), axis=1)[:, :k]
    picked = [np.take_along_axis(a, order, axis=1).tolist() for a in (brand_rank, rows, similarities)]
    return [[Hit(names[b], r, s) for b, r, s in zip(*per_query) if r >= 0] for per_query in zip(*picked)]
