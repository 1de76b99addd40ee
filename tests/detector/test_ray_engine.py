"""`scan --engine ray`: the same decisions and outputs as the local engine, on a local 2-CPU Ray
instance, also when Ray loses a worker mid-scan."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from detector import Detector
from tests.conftest import run_cli
from tests.detector.test_scanner import hostile_dump

ray = pytest.importorskip("ray", reason="the Ray engine needs the [ray] extra")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def loaded(demo_index):
    with Detector.open(demo_index, device="cpu", cache=False) as detector:
        yield detector


def run(listings, out, detector, **options):
    return detector.scan(listings, out, **options)


def outputs(out):
    return {name: (out / name).read_text(encoding="utf-8") for name in ("decisions.jsonl", "flagged.csv")}


def stored_photos(history):
    with sqlite3.connect(history) as db:
        return db.execute("SELECT listing_id, seller_id, digest, vector FROM photos ORDER BY listing_id, digest").fetchall()


def test_ray_and_local_engines_give_identical_outputs(tmp_path, demo_data, loaded, local_ray):
    listings, expected = hostile_dump(tmp_path, demo_data)  # the demo plus rows that end as errors
    night = dict(night="2026-11-01")
    local = run(listings, tmp_path / "local", loaded, batch_size=4, history=tmp_path / "local.sqlite", **night)
    on_ray = run(listings, tmp_path / "ray", loaded, batch_size=4, engine="ray", ray_actors=2,
                 history=tmp_path / "ray.sqlite", **night)
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")
    # the history gets the same photos and vectors from the actors as from the local engine
    photos = stored_photos(tmp_path / "local.sqlite")
    assert photos == stored_photos(tmp_path / "ray.sqlite") and all(p[3] for p in photos)
    assert on_ray.summary["verdicts"] == local.summary["verdicts"]
    assert on_ray.summary["listings"] == expected
    assert on_ray.summary["this_run"]["rows_processed"] == local.summary["this_run"]["rows_processed"]


def _repeated_dump(tmp_path, demo_data, copies):
    """The demo's listings ``copies`` times over, under fresh ids: a dump that takes a while."""
    with open(demo_data.listings, newline="") as fh:
        rows = list(csv.DictReader(fh))
    path = demo_data.listings.parent / f"repeated-{copies}.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for copy in range(copies):
            writer.writerows({**row, "listing_id": f"{row['listing_id']}-{copy}"} for row in rows)
    return path


def _actor_pids():
    """Processes of this machine running an evidence actor (Ray names them in their title)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::") and "EvidenceActor" in title:
            pids.append(int(proc.name))
    return pids


def test_a_killed_ray_worker_is_retried_without_lost_or_duplicated_decisions(tmp_path, demo_data, loaded, local_ray):
    listings = _repeated_dump(tmp_path, demo_data, 3)
    run(listings, tmp_path / "local", loaded, batch_size=2)
    out = tmp_path / "ray"
    killed = []

    def kill_a_worker_once_work_is_under_way(done, total):
        """Called by the scan as rows are committed: at 10 rows in, one actor is killed."""
        if done >= 10 and not killed:
            for pid in _actor_pids()[:1]:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    result = run(listings, out, loaded, batch_size=2, engine="ray", ray_actors=1,
                 on_progress=kill_a_worker_once_work_is_under_way)
    assert killed, "no Ray worker was found to kill"
    got = [json.loads(line) for line in (out / "decisions.jsonl").read_text().splitlines()]
    assert len(got) == len({d["listing_id"] for d in got}) == 3 * 38 == result.summary["listings"]
    assert outputs(out) == outputs(tmp_path / "local")


def test_the_cli_runs_a_scan_on_ray(tmp_path, demo_data, demo_index):
    result = run_cli("scan", str(demo_data.listings), "--index", str(demo_index), "--out", str(tmp_path / "o"),
                     "--engine", "ray", "--ray-actors", "1", "--cache", str(tmp_path / "c.sqlite"))
    assert result.returncode == 0, result.stderr
    assert "38 listings:" in result.stdout
    assert "--engine ray does not use the embedding cache" in result.stderr
    assert not (tmp_path / "c.sqlite").exists()
