"""On-disk IVF brands: the same answers as in-memory IVF, memory-mapped lists, the manifest's integrity rules."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from index import ondisk
from index.ondisk import is_ondisk
from index.store import BrandEntry, IndexStoreError, load_index, write_index

DIM = 16
FP = {"name": "toy", "arch": "toy", "weights_sha256": "0", "preprocess": {}, "pooling": "avg", "dim": DIM}


def brand(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((60, DIM))
    v = (centres[rng.integers(0, 60, n)] + 0.3 * rng.standard_normal((n, DIM))).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    products = [{"product_id": f"P{i}", "image_sha256": f"h{i}"} for i in range(n)]
    return BrandEntry(brand="A", vectors=v, products=products, authorized=["s1"], threshold=0.8)


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(ondisk, "SHARD_VECTORS", 700)  # 3,000 vectors build in 5 shards


def test_ondisk_brand_answers_like_the_in_memory_ivf(tmp_path, small_shards, capfd):
    entry = brand()
    write_index(tmp_path / "mem", [entry], FP, "fp", index_kind="ivf")
    manifest = write_index(tmp_path / "disk", [entry], FP, "fp", index_kind="ivfdisk")
    files = manifest["brands"]["A"]["files"]
    assert manifest["brands"]["A"]["index_kind"] == "ivfdisk" and files["lists"]["name"].endswith(".ivfdata")
    in_memory, on_disk = load_index(tmp_path / "mem"), load_index(tmp_path / "disk")
    assert is_ondisk(on_disk.brands["A"].index) and not is_ondisk(in_memory.brands["A"].index)
    assert isinstance(on_disk.brands["A"].vectors, np.memmap)  # vectors are mapped, not read into memory
    queries = entry.vectors[::97]
    assert on_disk.search(queries, k=5) == in_memory.search(queries, k=5)
    assert [hits[0].row for hits in on_disk.search(queries, k=1)] == list(range(0, 3000, 97))
    assert {p.name for p in (tmp_path / "disk" / "data").iterdir()} == {f["name"] for f in files.values()}
    assert capfd.readouterr().out == ""  # FAISS's printf progress must not reach stdout (it may carry JSON)


def test_a_moved_index_folder_still_finds_its_lists(tmp_path, small_shards):
    entry = brand()
    write_index(tmp_path / "built", [entry], FP, "fp", index_kind="ivfdisk")
    shutil.move(tmp_path / "built", tmp_path / "moved")
    hits = load_index(tmp_path / "moved").search(entry.vectors[:3], k=1)
    assert [h[0].row for h in hits] == [0, 1, 2]


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_a_damaged_lists_file_is_refused_with_the_rebuild_command(tmp_path, small_shards, damage):
    manifest = write_index(tmp_path, [brand()], FP, "fp", index_kind="ivfdisk")
    lists = tmp_path / "data" / manifest["brands"]["A"]["files"]["lists"]["name"]
    if damage == "flip":
        data = bytearray(lists.read_bytes())
        data[len(data) // 3] ^= 0x01
        lists.write_bytes(bytes(data))
    else:
        lists.unlink()
    with pytest.raises(IndexStoreError, match=f"brand 'A'.*{'corrupt' if damage == 'flip' else 'missing'}.*counterfeit index build"):
        load_index(tmp_path)


def test_a_killed_ondisk_build_leaves_nothing_behind_after_the_next_commit(tmp_path, small_shards):
    write_index(tmp_path, [brand()], FP, "fp", index_kind="ivfdisk")
    (tmp_path / "data" / ".shards-killed").mkdir()
    (tmp_path / "data" / ".shards-killed" / "shard-0.faiss").write_bytes(b"x" * 100)
    (tmp_path / "data" / ".new-999.ivfdata").write_bytes(b"x" * 100)
    manifest = write_index(tmp_path, [brand(seed=1)], FP, "fp", index_kind="ivfdisk")
    names = {p.name for p in (tmp_path / "data").iterdir()}
    assert names == {f["name"] for f in manifest["brands"]["A"]["files"].values()}


def test_an_empty_brand_asked_for_ondisk_lists_is_built_flat(tmp_path):
    empty = BrandEntry(brand="A", vectors=np.zeros((0, DIM), np.float32), products=[])
    manifest = write_index(tmp_path, [empty], FP, "fp", index_kind="ivfdisk")
    assert manifest["brands"]["A"]["index_kind"] == "flat"
    assert load_index(tmp_path).search(np.ones((1, DIM), np.float32), k=3) == [[]]


def test_index_build_cli_writes_an_ondisk_index_that_lookup_uses(tmp_path, demo_data, embedder):
    from typer.testing import CliRunner

    from detector.cli import app

    runner = CliRunner()
    index_dir = tmp_path / "idx"
    built = runner.invoke(app, ["index", "build", str(demo_data.catalog), "--out", str(index_dir),
                                "--authorized", str(demo_data.authorized), "--index-type", "ivfdisk"])
    assert built.exit_code == 0, built.output
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert {b["index_kind"] for b in manifest["brands"].values()} == {"ivfdisk"}
    looked = runner.invoke(app, ["lookup", str(demo_data.folder / "listings" / "D000.jpg"), "--index", str(index_dir), "--json"])
    assert looked.exit_code == 0, looked.output
    assert json.loads(looked.output)["matches"][0]["product_id"] == "AUR-000"
