"""The nightly scan: every listing exactly once, errors as data, resume after SIGKILL, warm cache,
inert attacker strings, and one writer per OUT_DIR."""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from detector import Detector
from detector.cache import EmbeddingCache
from detector.decisions import FINDINGS, VISUAL_STATES
from detector.errors import UserError
from detector.scanner import STATE_DIR, _exclusive
from tests.conftest import cli_at_progress, png_with_declared_size, run_cli, run_cli_killed_at

HEADER = ["listing_id", "seller_id", "title", "price", "currency", "image"]


@pytest.fixture(scope="module")
def loaded(demo_index):
    """The demo index opened once through the front door, without an embedding cache."""
    with Detector.open(demo_index, device="cpu", cache=False) as detector:
        yield detector


def run_scan(listings, out, detector, **options):
    return detector.scan(listings, out, **options)


def decisions(out):
    return [json.loads(line) for line in (out / "decisions.jsonl").read_text(encoding="utf-8").splitlines()]


def hostile_dump(tmp_path, demo_data):
    """The demo listings plus rows and files that must end as specific errors or notes."""
    folder = tmp_path / "dump"
    shutil.copytree(demo_data.folder / "listings", folder / "listings")
    with open(demo_data.listings, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    (folder / "listings" / "empty.jpg").write_bytes(b"")
    (folder / "listings" / "text.jpg").write_text("hello")
    Image.new("RGB", (8, 8)).save(folder / "listings" / "tiny.png")
    rows += [
        ["X1", "s", "missing file", "10", "USD", "listings/absent.jpg"],
        ["X2", "s", "empty file", "10", "USD", "listings/empty.jpg"],
        ["X3", "s", "text as jpg", "10", "USD", "listings/text.jpg"],
        ["X4", "s", "escape", "10", "USD", "../../etc/passwd"],
        ["X5", "s", "absolute", "10", "USD", "/etc/hostname"],
        ["", "s", "no id", "10", "USD", "listings/tiny.png"],
        ["X7", "s", "bad price", "abc", "USD", "listings/tiny.png"],
        ["X8", "", "no seller", "10", "USD", "listings/tiny.png"],
        # a listing with two photos, one broken and one a cheap copy: the copy flags it
        ["X9", "rogue", "two photos", "5", "USD", "listings/absent.jpg"],
        ["X9", "rogue", "two photos", "5", "USD", "listings/D000.jpg"],
        # one listing_id, two rows that disagree on seller and price: the riskier row decides
        ["X10", "shop-000", "twin", "900", "USD", "listings/D000.jpg"],
        ["X10", "rogue", "twin", "5", "USD", "listings/D000.jpg"],
    ]
    with open(folder / "listings.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([HEADER, *rows])
    return folder / "listings.csv", len({r[0] or "(row)" for r in rows})


def test_every_listing_appears_exactly_once_with_errors_as_data(tmp_path, demo_data, loaded):
    listings, expected = hostile_dump(tmp_path, demo_data)
    result = run_scan(listings, tmp_path / "out", loaded)
    got = decisions(tmp_path / "out")
    ids = [d["listing_id"] for d in got]
    assert len(ids) == len(set(ids)) == expected == result.summary["listings"]
    by_id = {d["listing_id"]: d for d in got}
    fields = {"listing_id", "verdict", "score", "brand", "product_id", "reference_image", "image", "similarity",
              "price_ratio", "seller_authorized", "reasons", "error"}
    assert all(fields <= set(d) for d in got)
    expected_errors = {
        "X1": "missing_file", "X2": "empty_file", "X3": "not_an_image", "X4": "path_outside", "X5": "path_outside",
        "(line 45)": "bad_row",
    }
    for listing_id, code in expected_errors.items():
        error = by_id[listing_id]
        assert (error["verdict"], error["visual_state"], error["error_code"]) == ("error", "error", code), error
        assert error["error"] and error["reasons"][0] == error["error"]
    codes = {d["listing_id"]: [f["code"] for f in d["findings"]] for d in got}
    assert by_id["X7"]["verdict"] != "error" and "price_unreadable" in codes["X7"]
    assert by_id["X8"]["seller_authorized"] is None and "seller_missing" in codes["X8"]
    assert by_id["X9"]["verdict"] == "flagged" and by_id["X9"]["photos"] == 2
    assert {"photos_unreadable", "best_photo"} <= set(codes["X9"])
    assert by_id["X10"]["verdict"] == "flagged" and by_id["X10"]["seller_id"] == "rogue"
    assert "rows_disagree" in codes["X10"]
    for d in got:  # every decision carries codes; every flag at least one finding that counted
        assert d["visual_state"] in VISUAL_STATES and all(f["code"] in FINDINGS for f in d["findings"])
        assert d["verdict"] != "flagged" or any(f["weight"] > 0 for f in d["findings"])
    # the demo's own listings are decided as they are without their hostile neighbours
    run_scan(demo_data.listings, tmp_path / "clean", loaded)
    for clean in decisions(tmp_path / "clean"):
        assert by_id[clean["listing_id"]] == clean, clean["listing_id"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["verdicts"]["error"] == 6 and sum(summary["verdicts"].values()) == expected
    lo, hi = summary["flagged_per_10000_ci95"]
    assert lo <= summary["flagged_per_10000"] <= hi
    assert (summary["flagged_per_10k"], summary["flagged_per_10k_ci95"]) == (summary["flagged_per_10000"], [lo, hi])
    assert summary["embedder"]["name"] == "lite0" and summary["index"]["counts"]["brands"] == 3


def hostile_files(folder):
    """Odd and hostile image files: name → the error code fragment it must end with, or None
    when the file must be decoded and judged like any photo."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    noise = Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
    noise.save(folder / "whole.jpg")
    noise.save(folder / "whole.png")
    jpeg, png = (folder / "whole.jpg").read_bytes(), (folder / "whole.png").read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "corrupt.jpg").write_bytes(jpeg[:200] + b"\x00" * (len(jpeg) - 200))
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "words.jpg").write_text("not a picture")
    (folder / "bomb.png").write_bytes(png_with_declared_size(100_000, 100_000))
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "one.png")
    Image.new("RGB", (20000, 20), (10, 200, 10)).save(folder / "strip.png")
    noise.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65535, (64, 64))).astype(np.uint16)).save(folder / "sixteen.png")
    palette = noise.convert("P")
    palette.info["transparency"] = 0
    palette.save(folder / "palette.png", transparency=0)
    noise.save(folder / "animated.gif", save_all=True, append_images=[noise.rotate(90)], duration=50)
    noise.save(folder / "photo.webp")
    return {
        "truncated.jpg": "corrupt or truncated", "truncated.png": "corrupt or truncated",
        "corrupt.jpg": "corrupt", "zero.jpg": "empty", "words.jpg": "not a recognised image format",
        "bomb.png": "decompression-bomb", "loop.jpg": "symlink loop",
        "one.png": None, "strip.png": None, "cmyk.jpg": None, "sixteen.png": None, "palette.png": None,
        "animated.gif": None, "photo.webp": None, "whole.jpg": None, "rotated.jpg": None,
    }


def test_hostile_files_become_specific_errors_and_leave_their_neighbours_alone(tmp_path, demo_data, loaded):
    run_scan(demo_data.listings, tmp_path / "clean", loaded)
    folder = tmp_path / "dump"
    shutil.copytree(demo_data.folder / "listings", folder / "listings")
    outcomes = hostile_files(folder / "hostile")
    # a reference photo stored on its side, with the EXIF tag that turns it upright
    upright = Image.open(demo_data.folder / "refs" / "BEL-001.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "hostile" / "rotated.jpg", exif=exif)
    with open(demo_data.listings, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    rows += [[f"H-{name}", "stranger", "odd file", "9", "USD", f"hostile/{name}"] for name in outcomes]
    with open(folder / "listings.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([HEADER, *rows])
    run_scan(folder / "listings.csv", tmp_path / "out", loaded)
    by_id = {d["listing_id"]: d for d in decisions(tmp_path / "out")}
    assert len(by_id) == 38 + len(outcomes)
    for name, fragment in outcomes.items():
        got = by_id[f"H-{name}"]
        if fragment is None:
            assert got["verdict"] != "error", (name, got["error"])
        else:
            assert got["verdict"] == "error" and fragment in got["error"], (name, got["error"])
    rotated = by_id["H-rotated.jpg"]
    assert rotated["product_id"] == "BEL-001" and rotated["visual_match"], rotated
    for clean in decisions(tmp_path / "clean"):
        assert by_id[clean["listing_id"]] == clean, clean["listing_id"]


def test_flagged_csv_holds_the_flagged_listings(tmp_path, demo_data, loaded):
    run_scan(demo_data.listings, tmp_path / "out", loaded)
    flagged = {d["listing_id"] for d in decisions(tmp_path / "out") if d["verdict"] == "flagged"}
    with open(tmp_path / "out" / "flagged.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["listing_id"] for r in rows} == flagged and flagged
    assert all(r["reasons"] and r["brand"] for r in rows)


def test_attacker_strings_are_inert_in_report_and_csv(tmp_path, demo_data, loaded):
    folder = tmp_path / "dump"
    folder.mkdir()
    evil_name = "<img src=x onerror=alert(1)>.jpg"
    shutil.copy(demo_data.folder / "listings" / "D000.jpg", folder / evil_name)
    rows = [["=HYPERLINK(\"http://evil\",\"x\")", "<script>alert('seller')</script>",
             "<script>alert(1)</script> replica =1+1", "5", "USD", evil_name],
            ["L2", "@SUM(A1)", "-2+3", "5", "USD", evil_name]]
    with open(folder / "listings.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([HEADER, *rows])
    run_scan(folder / "listings.csv", tmp_path / "out", loaded)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "script-src" not in html and "default-src 'none'" in html  # CSP forbids scripts
    with open(tmp_path / "out" / "flagged.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@")), value
    assert rows[0]["listing_id"].startswith("'=HYPERLINK")
    thumbs = list((tmp_path / "out" / "thumbs").iterdir())
    assert thumbs and all(t.suffix == ".jpg" for t in thumbs)


def test_warm_cache_rescan_embeds_nothing(tmp_path, demo_data, loaded):
    with loaded.using(cache=tmp_path / "cache.sqlite") as cached:
        cold = run_scan(demo_data.listings, tmp_path / "cold", cached)
        warm = run_scan(demo_data.listings, tmp_path / "warm", cached)
    assert (cold.embedded, cold.from_cache) == (38, 0)
    assert (warm.embedded, warm.from_cache) == (0, 38)
    assert decisions(tmp_path / "cold") == decisions(tmp_path / "warm")


def test_warm_rescan_decodes_nothing(tmp_path, demo_data, loaded, monkeypatch):
    """Embeddings and verification outcomes both come from the cache: no photo is decoded."""
    import detector.stages.base as base

    cached = loaded.using(cache=tmp_path / "cache.sqlite")
    run_scan(demo_data.listings, tmp_path / "cold", cached)

    def no_decoding(*args, **kwargs):
        raise AssertionError("a warm rescan decoded a photo")

    monkeypatch.setattr(base, "decode_image", no_decoding)
    run_scan(demo_data.listings, tmp_path / "warm", cached)
    assert decisions(tmp_path / "cold") == decisions(tmp_path / "warm")
    assert any(d["inliers"] for d in decisions(tmp_path / "warm"))
    cached.close()


def test_damaged_cache_entries_are_recomputed_not_used(tmp_path, demo_data, loaded):
    path = tmp_path / "cache.sqlite"
    with loaded.using(cache=path) as cached:
        run_scan(demo_data.listings, tmp_path / "a", cached)
    db = sqlite3.connect(path)
    db.execute("UPDATE vectors SET vector = zeroblob(length(vector))")
    db.commit()
    db.close()
    with loaded.using(cache=path) as cached:
        again = run_scan(demo_data.listings, tmp_path / "b", cached)
        assert again.embedded == 38 and cached.cache.corrupt == 38
    assert decisions(tmp_path / "a") == decisions(tmp_path / "b")


def test_a_full_disk_stops_the_scan_cleanly_and_a_rerun_resumes(tmp_path, demo_data, loaded, monkeypatch):
    """Disk full is simulated twice: SQLite's own SQLITE_FULL (a page cap on the progress
    database) while rows are committed, then ENOSPC while decisions are written."""
    import detector.outputs as outputs
    import detector.scanner as scanner

    run_scan(demo_data.listings, tmp_path / "clean", loaded)
    out = tmp_path / "out"
    opened = scanner.ScanState.__init__

    def capped(self, path):
        opened(self, path)
        (pages,) = self.db.execute("PRAGMA page_count").fetchone()
        self.db.execute(f"PRAGMA max_page_count = {pages + 3}")

    monkeypatch.setattr(scanner.ScanState, "__init__", capped)
    with pytest.raises(UserError, match="disk full while writing .* rerun the same command"):
        run_scan(demo_data.listings, out, loaded, batch_size=2)
    monkeypatch.undo()
    assert 0 < _next_row(out) < 38 and not (out / "decisions.jsonl").exists()

    written = outputs.DecisionWriter.write

    def fills_up(self, *args, **kwargs):
        if self.jsonl.handle.tell() > 2_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        written(self, *args, **kwargs)

    monkeypatch.setattr(outputs.DecisionWriter, "write", fills_up)
    with pytest.raises(UserError, match="disk full"):
        run_scan(demo_data.listings, out, loaded, batch_size=2)
    monkeypatch.undo()
    assert _next_row(out) == 38
    assert sorted(p.name for p in out.iterdir()) == [STATE_DIR]  # no half-written output, no temporary file
    resumed = run_scan(demo_data.listings, out, loaded, batch_size=2)
    assert resumed.summary["resumed"] and decisions(out) == decisions(tmp_path / "clean")


def test_damaged_progress_is_refused_with_the_restart_command(tmp_path, demo_data, loaded):
    out = tmp_path / "out"
    run_scan(demo_data.listings, out, loaded)
    state = out / STATE_DIR / "state.sqlite"
    db = sqlite3.connect(state)
    db.execute("UPDATE rows SET record = replace(record, '0.', '0.1') WHERE row = 5")  # a flipped value
    db.commit()
    db.close()
    with pytest.raises(UserError, match="row 5 fails its checksum.*--restart"):
        run_scan(demo_data.listings, out, loaded)
    db = sqlite3.connect(state)
    db.execute("DELETE FROM rows WHERE row = 7")  # a lost row behind a resume point that says all is done
    db.commit()
    db.close()
    with pytest.raises(UserError, match="records 37 rows of an input that has 38.*--restart"):
        run_scan(demo_data.listings, out, loaded)
    state.write_bytes(b"garbage" * 100)
    with pytest.raises(UserError, match="damaged .*not a database.*--restart"):
        run_scan(demo_data.listings, out, loaded)
    again = run_scan(demo_data.listings, out, loaded, restart=True)
    assert again.summary["listings"] == 38


def test_cache_is_bounded(tmp_path):
    import numpy as np

    cache = EmbeddingCache(tmp_path / "c.sqlite", "fp", 4, max_bytes=10 * (4 * 4 * 6 + 96))
    for i in range(30):
        cache.put_many({f"d{i}": np.full(4, i, np.float32)})
    count = sqlite3.connect(tmp_path / "c.sqlite").execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
    assert count == 10 and cache.get("d29") is not None and cache.get("d0") is None


def test_a_second_scan_into_the_same_out_dir_is_refused(tmp_path, demo_data, loaded):
    out = tmp_path / "out"
    with _exclusive(out):
        with pytest.raises(UserError, match=r"another scan \(pid \d+\) is writing"):
            run_scan(demo_data.listings, out, loaded)


def test_a_second_scan_process_into_the_same_out_dir_is_refused_and_the_first_finishes(tmp_path, demo_data,
                                                                                      demo_index):
    args = ["scan", str(demo_data.listings), "--index", str(demo_index), "--out", str(tmp_path / "out"), "--no-cache",
            "--batch-size", "4"]
    gate = tmp_path / "gate"
    gate.mkdir()
    first = subprocess.Popen(cli_at_progress("scanned", 8, f"pause:{gate}", *args), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    try:
        while not (gate / "reached").exists():  # the first scan has committed 8 rows and holds the folder
            assert first.poll() is None, first.communicate()
            time.sleep(0.05)
        second = run_cli(*args)
        assert second.returncode == 2
        assert f"another scan (pid {first.pid}) is writing to" in second.stderr and "Traceback" not in second.stderr
        (gate / "go").touch()
        stdout, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    assert "38 listings:" in stdout and len(decisions(tmp_path / "out")) == 38


def test_two_long_ids_that_differ_only_beyond_the_limit_stay_two_listings(tmp_path, demo_data, loaded):
    """An id over 10,000 characters used to be cut there, so two listings merged into one and the
    second one's seller and price were lost; such a row is now refused on its own."""
    shutil.copytree(demo_data.folder / "listings", tmp_path / "listings")
    stem = "L" * 10_000
    rows = [[stem + "-one", "seller-a", "t", "10", "USD", "listings/D000.jpg"],
            [stem + "-two", "seller-b", "t", "99", "USD", "listings/D001.jpg"],
            ["short", "seller-c", "t", "5", "USD", "listings/D002.jpg"]]
    with open(tmp_path / "l.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([HEADER, *rows])
    run_scan(tmp_path / "l.csv", tmp_path / "out", loaded)
    got = decisions(tmp_path / "out")
    assert len(got) == 3 and len({d["listing_id"] for d in got}) == 3
    refused = {d["listing_id"]: d for d in got if d["verdict"] == "error"}
    assert set(refused) == {"(line 2)", "(line 3)"}
    assert [(d["seller_id"], d["price"]) for d in refused.values()] == [("seller-a", 10.0), ("seller-b", 99.0)]
    assert all("10,004 characters long, over the 10,000 limit" in d["error"] for d in refused.values())
    assert not any(f["code"] == "rows_disagree" for d in got for f in d["findings"])


def test_control_characters_in_ids_titles_and_reviewer_names_never_reach_an_output_raw(tmp_path, demo_data, loaded):
    shutil.copytree(demo_data.folder / "listings", tmp_path / "listings")
    hostile = {"listing_id": "L\x00one", "seller_id": "rogue\x00", "title": "Aurora\x00 replica \x1b[31m AAA",
               "price": "1", "currency": "USD", "image": "listings/D000.jpg"}
    (tmp_path / "l.jsonl").write_text(json.dumps(hostile) + "\n", encoding="utf-8")
    out = run_scan(tmp_path / "l.jsonl", tmp_path / "out", loaded).out_dir
    (decision,) = decisions(out)
    assert decision["verdict"] == "flagged" and decision["listing_id"] == "L\x00one"  # the record keeps the data
    for name in ("flagged.csv", "report.html"):
        text = (out / name).read_text(encoding="utf-8")
        assert "\x00" not in text and "\x1b" not in text, name
        assert "L\ufffdone" in text and "Aurora\ufffd replica" in text, name
    from detector.labels import LabelStore, export

    store = LabelStore(out)
    store.add("L\x00one", "counterfeit", "ann")
    store.close()
    export(out, tmp_path / "labels.csv")
    assert "\x00" not in (tmp_path / "labels.csv").read_text(encoding="utf-8")


def test_a_named_pipe_as_the_listings_or_the_policy_is_refused_at_once_not_waited_on(tmp_path, demo_index):
    pipe = tmp_path / "listings.csv"
    os.mkfifo(pipe)
    result = run_cli("scan", str(pipe), "--index", str(demo_index), "--out", str(tmp_path / "out"), timeout=60)
    assert result.returncode == 2, result.stderr
    assert "is neither a file nor a folder" in result.stderr and "Traceback" not in result.stderr
    policy = tmp_path / "policy.toml"
    os.mkfifo(policy)
    looked = run_cli("lookup", str(demo_index / "manifest.json"), "--index", str(demo_index), "--policy", str(policy),
                     timeout=60)
    assert looked.returncode == 2 and "policy file" in looked.stderr and "neither a file nor a folder" in looked.stderr


def test_out_dir_of_another_input_is_refused_unless_restarted(tmp_path, demo_data, loaded):
    out = tmp_path / "out"
    run_scan(demo_data.listings, out, loaded)
    other = tmp_path / "other.csv"
    other.write_text(",".join(HEADER) + "\nA,s,t,1,USD," + str(demo_data.folder / "listings" / "D001.jpg") + "\n")
    with pytest.raises(UserError, match="holds a scan of different input.*--restart"):
        run_scan(other, out, loaded, allow_outside_paths=True)
    result = run_scan(other, out, loaded, allow_outside_paths=True, restart=True)
    assert result.summary["listings"] == 1 and len(decisions(out)) == 1


def test_rerunning_a_finished_scan_rewrites_the_same_outputs(tmp_path, demo_data, loaded):
    out = tmp_path / "out"
    run_scan(demo_data.listings, out, loaded)
    first = (out / "decisions.jsonl").read_bytes()
    again = run_scan(demo_data.listings, out, loaded)
    assert again.summary["this_run"]["rows_processed"] == 0
    assert (out / "decisions.jsonl").read_bytes() == first


def test_a_bare_folder_is_scanned_on_visual_evidence(tmp_path, demo_data, loaded):
    result = run_scan(demo_data.folder / "listings", tmp_path / "out", loaded)
    got = decisions(tmp_path / "out")
    assert len(got) == 38 and got[0]["listing_id"] == "D000.jpg"
    assert result.summary["verdicts"]["flagged"] == 0  # no price, seller or title: nothing inconsistent
    assert any(d["similarity"] and d["similarity"] >= d["threshold"] for d in got)


def test_jsonl_and_parquet_dumps_give_the_same_decisions(tmp_path, demo_data, loaded):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(demo_data.listings, newline="") as fh:
        rows = list(csv.DictReader(fh))
    jsonl = demo_data.folder / "listings.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parquet = demo_data.folder / "listings.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    for source, name in ((demo_data.listings, "csv"), (jsonl, "jsonl"), (parquet, "parquet")):
        run_scan(source, tmp_path / name, loaded)
    assert decisions(tmp_path / "csv") == decisions(tmp_path / "jsonl") == decisions(tmp_path / "parquet")


def _next_row(out):
    try:
        db = sqlite3.connect(f"file:{out / STATE_DIR / 'state.sqlite'}?mode=ro", uri=True, timeout=0.1)
        row = db.execute("SELECT value FROM meta WHERE key='next_row'").fetchone()
        db.close()
        return json.loads(row[0]) if row else 0
    except sqlite3.Error:
        return 0


def test_kill_and_resume_gives_the_same_decisions_as_a_clean_run(tmp_path, demo_data):
    """SIGKILL at random rows, and once more as soon as every row is committed (while the outputs
    are being written); the rerun must give exactly the clean run's decisions."""
    args = [str(demo_data.listings), "--index", str(tmp_path / "idx"), "--batch-size", "2", "--no-cache",
            "--device", "cpu"]
    built = run_cli("index", "build", str(demo_data.catalog), "--out", str(tmp_path / "idx"),
                    "--authorized", str(demo_data.authorized))
    assert built.returncode == 0, built.stderr
    clean = run_cli("scan", *args, "--out", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr

    out = tmp_path / "killed"
    rng = random.Random(7)
    # SIGKILL at random committed rows, then once every row is in (while the outputs are written)
    for attempt in range(5):
        at = 38 if attempt == 4 else min(37, _next_row(out) + rng.randint(2, 8))
        killed = run_cli_killed_at("scanned", at, "scan", *args, "--out", str(out))
        assert killed.returncode == -signal.SIGKILL, f"the scan was not killed at row {at}: {killed.stderr}"
        assert at <= _next_row(out) <= at + 1  # batches of 2 rows
        if attempt < 4:  # outputs appear only once every row is in
            assert not (out / "decisions.jsonl").exists()
    resumed = run_cli("scan", *args, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "(resumed)" in resumed.stdout
    got = decisions(out)
    assert got == decisions(tmp_path / "clean")
    assert len(got) == len({d["listing_id"] for d in got}) == 38
    assert not list(out.glob(".*.tmp-*"))  # a killed writer's temporary files are cleared


def test_scan_cli_prints_counts_and_where_the_report_is(tmp_path, demo_data, demo_index):
    result = run_cli("scan", str(demo_data.listings), "--index", str(demo_index), "--out", str(tmp_path / "o"),
                     "--cache", str(tmp_path / "c.sqlite"))
    assert result.returncode == 0, result.stderr
    assert "38 listings:" in result.stdout and "flagged" in result.stdout
    assert "Report:" in result.stdout and (tmp_path / "o" / "report.html").exists()
    assert os.path.exists(tmp_path / "c.sqlite")


def test_report_shows_the_summary_counts(tmp_path, demo_data, loaded):
    result = run_scan(demo_data.listings, tmp_path / "out", loaded)
    html = (tmp_path / "out" / "report.html").read_text()
    verdicts = result.summary["verdicts"]
    for verdict in ("flagged", "clear", "error"):
        assert f"<b>{verdicts[verdict]}</b>{verdict if verdict != 'error' else 'errors'}" in html
    assert "built-in method" not in html
    assert html.count('alt="listing photo"') == verdicts["flagged"]
    assert result.screened_out > 0
    assert f"({result.screened_out} stopped at the first stage, <code>screened_out</code>)" in html


def test_unusable_output_and_cache_paths_are_clear_errors(tmp_path, demo_data, loaded):
    with pytest.raises(UserError, match="cannot use .* as the output folder"):
        run_scan(demo_data.listings, demo_data.catalog, loaded)
    with pytest.raises(UserError, match="embedding cache .* is unusable"):
        EmbeddingCache(demo_data.catalog / "cache.sqlite", "fp", 4)
    with pytest.raises(UserError, match="missing column"):
        run_scan(demo_data.catalog, tmp_path / "out", loaded)
    assert not (tmp_path / "out").exists()  # nothing is written for a table that cannot be scanned


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_the_gpu_path_gives_the_cpu_paths_decisions(tmp_path, demo_data, demo_index, loaded):
    # fp16 autocast moves similarities by ~1e-3, so verdicts and products must agree and
    # similarities within 0.01
    run_scan(demo_data.listings, tmp_path / "cpu", loaded)
    with Detector.open(demo_index, device="cuda", cache=False) as gpu:
        run_scan(demo_data.listings, tmp_path / "gpu", gpu)
    cpu, gpu = decisions(tmp_path / "cpu"), decisions(tmp_path / "gpu")
    assert [(d["listing_id"], d["verdict"], d["product_id"]) for d in cpu] == \
        [(d["listing_id"], d["verdict"], d["product_id"]) for d in gpu]
    assert all(abs(a["similarity"] - b["similarity"]) < 0.01 for a, b in zip(cpu, gpu) if a["similarity"] is not None)


def test_a_failure_while_analysing_one_photo_is_that_rows_error_not_the_scans(tmp_path, demo_data, loaded, monkeypatch):
    import threading

    import detector.stages.screen as screen_stage
    import detector.stages.verification as verification

    failed, lock = [], threading.Lock()

    def failing_once(real):
        def call(*args, **kwargs):
            with lock:
                first = not any(f is real for f in failed)
                if first:
                    failed.append(real)
            if first:
                raise RuntimeError("boom")
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(screen_stage, "screen", failing_once(screen_stage.screen))
    monkeypatch.setattr(verification, "verify_hits", failing_once(verification.verify_hits))
    summary = run_scan(demo_data.listings, tmp_path / "out", loaded, screen=True)
    got = decisions(tmp_path / "out")
    assert len(got) == len({d["listing_id"] for d in got}) == 38
    errors = [d for d in got if d["verdict"] == "error"]
    assert len(errors) == summary.errors == 2
    assert all(d["error_code"] == "analysis_failed" and "RuntimeError: boom" in d["error"] for d in errors)
