"""The embedding cache: damaged entries and damaged files are detected and never used."""

from __future__ import annotations

import sqlite3

import numpy as np

from detector.cache import EmbeddingCache
from tests.conftest import run_cli

OUTCOMES = {"outcomes": [{"brand": "B", "row": 0, "inliers": 12, "alignment": 0.875, "unique": 7}]}


def test_round_trip_of_vectors_and_stage_outputs(tmp_path):
    cache = EmbeddingCache(tmp_path / "c.sqlite", "fp", 4)
    cache.put_many({"a": np.arange(8, dtype=np.float32).reshape(2, 4)})
    cache.put_json("verify|v1", {("a", "ref"): OUTCOMES, ("a", "other"): None})
    assert cache.get("a").shape == (2, 4) and cache.get("b") is None
    assert cache.get_json("verify|v1", "a", "ref") == (True, OUTCOMES)
    assert cache.get_json("verify|v1", "a", "other") == (True, None)
    assert cache.get_json("verify|v2", "a", "ref") == (False, None)  # another version of the stage: not found


def test_a_damaged_stage_output_is_recomputed_not_used(tmp_path):
    cache = EmbeddingCache(tmp_path / "c.sqlite", "fp", 4)
    cache.put_json("verify|v1", {("a", "ref"): OUTCOMES, ("b", "ref"): OUTCOMES})
    cache.close()
    db = sqlite3.connect(tmp_path / "c.sqlite")
    db.execute("UPDATE outputs SET value = replace(value, '12', '44') WHERE digest = 'a'")  # a flipped bit
    db.execute("UPDATE outputs SET value = replace(value, '0.875', '0.75') WHERE digest = 'b'")
    db.commit()
    db.close()
    cache = EmbeddingCache(tmp_path / "c.sqlite", "fp", 4)
    assert cache.get_json("verify|v1", "a", "ref") == (False, None)
    assert cache.get_json("verify|v1", "b", "ref") == (False, None) and cache.corrupt == 2


def test_stage_outputs_written_by_an_older_version_are_dropped_on_open(tmp_path):
    db = sqlite3.connect(tmp_path / "c.sqlite")
    db.execute("CREATE TABLE verifications (verifier TEXT, digest TEXT, reference TEXT, inliers INTEGER,"
               " crc INTEGER, PRIMARY KEY (verifier, digest, reference)) WITHOUT ROWID")
    db.execute("INSERT INTO verifications VALUES ('v1', 'a', 'ref', 12, 0)")
    db.commit()
    db.close()
    cache = EmbeddingCache(tmp_path / "c.sqlite", "fp", 4)
    assert cache.get_json("v1", "a", "ref") == (False, None)
    cache.put_json("v1", {("a", "ref"): OUTCOMES})
    assert cache.get_json("v1", "a", "ref") == (True, OUTCOMES)


def _garble_back_half(path):
    """Overwrite every other 4 KB page of the file's back half, leaving the schema page intact:
    SQLite opens the file and finds the damage only when a damaged page is read."""
    data = bytearray(path.read_bytes())
    for start in range(len(data) // 2 // 4096 * 4096, len(data), 8192):
        data[start + 100:start + 4096] = b"\x5a" * (4096 - 100)
    path.write_bytes(bytes(data))


def test_a_cache_found_damaged_mid_scan_is_dropped_and_the_scan_stays_right(tmp_path, demo_data, demo_index):
    args = ["scan", str(demo_data.listings), "--index", str(demo_index), "--cache", str(tmp_path / "c.sqlite")]
    first = run_cli(*args, "--out", str(tmp_path / "first"))
    assert first.returncode == 0, first.stderr
    _garble_back_half(tmp_path / "c.sqlite")
    second = run_cli(*args, "--out", str(tmp_path / "second"))
    assert second.returncode == 0, second.stderr
    assert "embedding cache" in second.stderr and "is damaged" in second.stderr
    assert f"rm -f {tmp_path / 'c.sqlite'} " in second.stderr
    assert (tmp_path / "first" / "decisions.jsonl").read_text() == (tmp_path / "second" / "decisions.jsonl").read_text()
