"""The GPU path's exact search gives FAISS Flat's answers (run here on CPU, and on CUDA if present)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from index.torch_search import TorchFlatIndex

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="no CUDA device"))]


def unit(rng, n, d=64):
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("device", DEVICES)
def test_chunked_torch_search_equals_faiss_flat(device):
    rng = np.random.default_rng(0)
    refs, queries = unit(rng, 1000), unit(rng, 37)
    flat = faiss.IndexFlatIP(64)
    flat.add(refs)
    want_sims, want_rows = flat.search(queries, 10)
    got_sims, got_rows = TorchFlatIndex(refs, device, chunk=128).search(queries, 10)  # 8 chunks
    assert np.allclose(got_sims, want_sims, atol=1e-5)
    assert (got_rows == want_rows).mean() > 0.99  # equal but for exact ties


@pytest.mark.parametrize("device", DEVICES)
def test_fewer_references_than_k_are_padded_like_faiss(device):
    rng = np.random.default_rng(1)
    sims, rows = TorchFlatIndex(unit(rng, 3), device, chunk=2).search(unit(rng, 2), 5)
    assert rows.shape == (2, 5) and (rows[:, 3:] == -1).all() and sorted(rows[0, :3]) == [0, 1, 2]
    empty_sims, empty_rows = TorchFlatIndex(np.zeros((0, 64), np.float32), device).search(unit(rng, 2), 3)
    assert (empty_rows == -1).all()


def test_a_read_only_memory_map_of_vectors_is_searched_without_warning_or_writes(tmp_path):
    # indexes load their vectors read-only; torch warns on (and could write through) such arrays
    rng = np.random.default_rng(2)
    refs = unit(rng, 50)
    np.save(tmp_path / "v.npy", refs)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index = TorchFlatIndex(mapped, "cpu")
    index.vectors[0] = 0  # the index holds its own copy
    assert np.array_equal(np.load(tmp_path / "v.npy"), refs)


@pytest.mark.parametrize("device", ["cpu:0", *DEVICES[1:]])  # "cpu:0": the torch path on this machine
def test_an_index_on_a_torch_device_searches_every_brand_in_one_pooled_search(tmp_path, device):
    from index.search import Levels
    from index.store import BrandEntry, load_index, write_index

    rng = np.random.default_rng(1)
    brands = [BrandEntry(f"B{i}", unit(rng, 3), [{"product_id": f"B{i}-{r}", "image_sha256": f"{i}{r}"} for r in range(3)],
                         threshold=0.5 + i / 100) for i in range(40)]
    write_index(tmp_path, brands, {"dim": 64}, "toy")
    index = load_index(tmp_path)
    moved = index.on_device(device)
    assert moved.pooled is not None and all(entry.index is None for entry in moved.brands.values())
    queries = unit(rng, 9)
    queries[0] = brands[17].vectors[2]
    want = [[(h.brand, h.row) for h in hits] for hits in index.search(queries, k=5)]
    assert [[(h.brand, h.row) for h in hits] for hits in moved.search(queries, k=5)] == want
    assert want[0][0] == ("B17", 2)
    assert {h.brand for h in moved.search(queries[:1], k=2, brands={"B3"})[0]} == {"B3"}
    levels = Levels({entry.brand: entry.threshold for entry in brands})
    by_level = [[(h.brand, h.row) for h in hits] for hits in index.search(queries, k=5, levels=levels)]
    assert [[(h.brand, h.row) for h in hits] for hits in moved.search(queries, k=5, levels=levels)] == by_level
