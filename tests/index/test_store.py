"""INDEX_DIR: atomic commits, checksums, embedder fingerprints, garbage collection."""

from __future__ import annotations

import json

import numpy as np
import pytest

from index import store
from index.store import BrandEntry, IndexStoreError, load_index, read_manifest, write_index

FP = {"name": "toy", "arch": "toy", "weights_sha256": "0", "preprocess": {}, "pooling": "avg", "dim": 8}


def entry(brand, n, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    products = [{"product_id": f"{brand}-{i}", "image": f"{i}.jpg", "image_path": f"/x/{i}.jpg",
                 "image_sha256": f"{brand}{i}", "price": 10.0, "currency": "USD", "title": ""} for i in range(n)]
    return BrandEntry(brand=brand, vectors=v, products=products, authorized=["s1"], threshold=0.7)


def test_round_trip_and_search(tmp_path):
    manifest = write_index(tmp_path, [entry("A", 3), entry("B", 2, 1)], FP, "fp1")
    assert manifest["counts"] == {"brands": 2, "products": 5, "vectors": 5, "authorized_sellers": 2}
    assert manifest["format_version"] == store.FORMAT_VERSION and manifest["embedder_id"] == "fp1"
    index = load_index(tmp_path, fingerprint=FP, fingerprint_id="fp1")
    probe = index.brands["B"].vectors[1:2]
    hit = index.search(probe, k=1)[0][0]
    assert (hit.brand, hit.row) == ("B", 1) and index.product(hit)["product_id"] == "B-1"
    assert index.authorized("A") == {"s1"} and index.authorized("Z") == set()


def test_other_embedder_is_refused(tmp_path):
    write_index(tmp_path, [entry("A", 2)], FP, "fp1")
    with pytest.raises(IndexStoreError, match="built with embedder 'toy'.*this run uses 'lite2'"):
        load_index(tmp_path, fingerprint={**FP, "name": "lite2"}, fingerprint_id="fp2")


def test_missing_and_bad_manifests_say_how_to_rebuild(tmp_path):
    with pytest.raises(IndexStoreError, match="no index at .*counterfeit index build"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(IndexStoreError, match="unreadable.*counterfeit index build"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(IndexStoreError, match="format version 99"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_files_are_detected_never_used(tmp_path, damage):
    manifest = write_index(tmp_path, [entry("A", 4)], FP, "fp1")
    target = tmp_path / "data" / manifest["brands"]["A"]["files"]["vectors"]["name"]
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    with pytest.raises(IndexStoreError, match="rebuild with: counterfeit index build"):
        load_index(tmp_path)


def test_a_brands_local_features_are_read_and_checked_when_first_used(tmp_path):
    brands = [entry("A", 2), entry("B", 2, 1)]
    brands[0].local, brands[1].local = b"features of A", b"features of B"
    manifest = write_index(tmp_path, brands, FP, "fp1")
    flipped = tmp_path / "data" / manifest["brands"]["B"]["files"]["local"]["name"]
    flipped.write_bytes(b"features of C")  # same size: opening cannot tell
    index = load_index(tmp_path, fingerprint=FP, fingerprint_id="fp1")
    assert index.brands["A"].local_features() == b"features of A"
    with pytest.raises(IndexStoreError, match="brand 'B' is corrupt"):
        index.brands["B"].local_features()
    flipped.write_bytes(b"short")
    with pytest.raises(IndexStoreError, match="brand 'B' is corrupt"):
        load_index(tmp_path, fingerprint=FP, fingerprint_id="fp1")


def test_crash_before_commit_keeps_the_previous_index(tmp_path, monkeypatch):
    write_index(tmp_path, [entry("A", 3)], FP, "fp1")
    real_replace = store.os.replace

    def crash(src, dst):
        if str(dst).endswith("manifest.json"):
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_index(tmp_path, [entry("A", 5, 9), entry("C", 2)], FP, "fp1")
    monkeypatch.setattr(store.os, "replace", real_replace)
    index = load_index(tmp_path)
    assert list(index.brands) == ["A"] and len(index.brands["A"].products) == 3


def test_unreferenced_files_are_collected_after_a_commit(tmp_path):
    first = write_index(tmp_path, [entry("A", 3)], FP, "fp1")
    write_index(tmp_path, [entry("B", 2)], FP, "fp1")
    names = {p.name for p in (tmp_path / "data").iterdir()}
    old = {f["name"] for f in first["brands"]["A"]["files"].values()}
    assert not names & old and len(names) == 3


def test_concurrent_builds_are_refused(tmp_path):
    with store.build_lock(tmp_path):
        with pytest.raises(IndexStoreError, match="another build"):
            with store.build_lock(tmp_path):
                pass


def test_an_index_folder_that_is_a_file_is_a_clear_error(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(IndexStoreError, match="cannot use .* as an index folder"):
        with store.build_lock(target):
            pass


def test_an_edited_or_bit_flipped_manifest_is_refused(tmp_path):
    write_index(tmp_path, [entry("A", 4)], FP, "fp1")
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["counts"]["vectors"] += 1  # still valid JSON, silently different without a checksum
    path.write_text(json.dumps(manifest))
    with pytest.raises(IndexStoreError, match="manifest.json is corrupt .*rebuild with: counterfeit index build"):
        load_index(tmp_path)
