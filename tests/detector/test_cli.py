"""What the `counterfeit` command prints and writes, on good input and bad."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from detector.cli import app
from tests.conftest import run_cli, run_cli_killed_at

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_help_teaches_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("index", "lookup", "scan", "demo"):
        assert command in result.output
    build_help = invoke("index", "build", "--help").output
    assert "--authorized" in build_help and "relative to its folder" in build_help


def test_index_info_describes_the_index(demo_index):
    result = invoke("index", "info", demo_index)
    assert result.exit_code == 0, result.output
    assert "lite0" in result.output and "3 brands, 12 products, 12 photos" in result.output
    assert "Aurora" in result.output and "all 17 data files verified" in result.output  # 3 brands x 5, 2 shared
    assert "first stage level" in result.output and "32 edits, brand" in result.output
    assert "new photos need" in result.output and "keypoints" in result.output
    manifest = json.loads(invoke("index", "info", demo_index, "--json").output)
    assert manifest["counts"]["brands"] == 3 and manifest["embedder"]["name"] == "lite0"


@pytest.mark.parametrize("kind", ["index", "vectors"])
def test_index_info_finds_a_flipped_byte_in_any_file_and_lookup_in_any_it_uses(demo_index, demo_data, tmp_path, kind):
    index = shutil.copytree(demo_index, tmp_path / "idx")
    files = json.loads((index / "manifest.json").read_text())["brands"]["Aurora"]["files"]
    damaged = index / "data" / files[kind]["name"]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    result = invoke("index", "info", index)
    assert result.exit_code == 2 and "verified" not in result.output
    assert f"{damaged.name}" in result.output and "corrupt (checksum mismatch)" in result.output
    assert "rebuild with: counterfeit index build" in " ".join(result.output.split())
    looked = invoke("lookup", demo_data.folder / "listings" / "D000.jpg", "--index", index)
    if kind == "vectors":  # what every search reads
        assert looked.exit_code == 2 and "corrupt (checksum mismatch)" in looked.output
    else:  # a Flat brand is searched from its vectors, pooled: its .faiss file is never used
        assert looked.exit_code == 0, looked.output


def test_lookup_finds_the_product_and_judges_listing_facts(demo_index, demo_data):
    photo = demo_data.folder / "listings" / "D000.jpg"  # a cropped copy of AUR-000
    table = invoke("lookup", photo, "--index", demo_index)
    assert table.exit_code == 0, table.output
    first_row = next(line for line in table.output.splitlines() if line.strip().startswith("│ 1"))
    assert "AUR-000" in first_row
    assert "Verdict" not in table.output and "photo matches Aurora AUR-000" in table.output

    judged = invoke("lookup", photo, "--index", demo_index, "--price", "20", "--currency", "usd",
                    "--seller", "shop-000", "--title", "replica", "--json", "--top-k", "3")
    payload = json.loads(judged.output)
    assert payload["verdict"] == "flagged" and len(payload["matches"]) == 3
    assert payload["matches"][0]["product_id"] == "AUR-000"
    assert set(payload["matches"][0]) == {"brand", "product_id", "image", "similarity", "threshold", "visual_state",
                                          "inliers", "alignment", "unique", "colour", "region", "sharpness",
                                          "residual", "price", "currency"}
    assert payload["plausible"] == ["AUR-000"]  # the keypoints single out the product
    assert payload["matches"][0]["inliers"] >= 8  # a cropped copy keeps its keypoints
    assert payload["visual_state"] == payload["matches"][0]["visual_state"] == "copy"
    assert [f["code"] for f in payload["findings"]] == ["price_below_ratio", "seller_not_authorised", "title_cue"]
    assert payload["reasons"][1:] == [f["text"] for f in payload["findings"]]

    fine = json.loads(invoke("lookup", photo, "--index", demo_index, "--price", "1000", "--currency", "USD",
                             "--seller", "aurora-official", "--json").output)
    assert fine["verdict"] == "clear" and fine["findings"] == []
    visual_only = json.loads(invoke("lookup", photo, "--index", demo_index, "--json").output)
    assert visual_only["verdict"] is None and visual_only["visual_state"] == "copy"
    assert visual_only["findings"] == [] and len(visual_only["reasons"]) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["lookup", "{photo}", "--index", "{index}", "--price", "5"], "--price needs --currency"),
        # the price rule a scan applies to a row (there: a price_unreadable remark), not ignored
        (["lookup", "{photo}", "--index", "{index}", "--price", "1e308", "--currency", "USD"], "implausibly large"),
        (["lookup", "{missing}", "--index", "{index}"], "image file not found"),
        (["lookup", "{text}", "--index", "{index}"], "not a recognised image format"),
        (["lookup", "{photo}", "--index", "{missing}"], "no index at"),
        (["lookup", "{photo}", "--index", "{index}", "--embedder", "lite2"], "built with embedder 'lite0'"),
        (["lookup", "{photo}", "--index", "{index}", "--policy", "{text}"], "not valid TOML"),
        (["index", "build", "{missing}", "--out", "{tmp}/x"], "catalogue not found"),
        (["index", "build", "{text}", "--out", "{tmp}/x"], "is missing column(s) brand, product_id"),
        (["index", "build", "{photo}", "--out", "{tmp}/x"], "unknown table format '.jpg'"),
        (["index", "info", "{tmp}"], "no index at"),
    ],
)
def test_bad_input_gives_one_clear_line_and_no_traceback(args, message, demo_index, demo_data, tmp_path):
    (tmp_path / "note.txt").write_text("hello [bold]\n")
    values = {"photo": demo_data.folder / "listings" / "D000.jpg", "index": demo_index, "tmp": tmp_path,
              "missing": tmp_path / "absent.jpg", "text": tmp_path / "note.txt"}
    result = invoke(*[a.format(**values) for a in args])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and message in result.output
    assert "Traceback" not in result.output


def test_real_process_reports_errors_without_traceback(tmp_path):
    result = run_cli("lookup", str(tmp_path / "nope.jpg"), "--index", str(tmp_path))
    assert result.returncode == 2
    assert "error: no index at" in result.stderr and "Traceback" not in result.stderr + result.stdout


def _big_catalogue(folder, n):
    from detector.demo import draw_product

    folder.mkdir(parents=True)
    lines = ["brand,product_id,image,price,currency,title"]
    for i in range(n):
        draw_product(3000 + i, size=256).save(folder / f"p{i}.jpg", quality=90)
        lines.append(f"Big,P{i},p{i}.jpg,10,USD,")
    (folder / "catalog.csv").write_text("\n".join(lines) + "\n")
    return folder / "catalog.csv"


def test_killed_builds_leave_the_old_index_loadable_and_a_rerun_completes(tmp_path, demo_index):
    index_dir = tmp_path / "idx"
    shutil.copytree(demo_index, index_dir)
    before = json.loads(invoke("index", "info", index_dir, "--json").output)
    catalog = _big_catalogue(tmp_path / "big", 240)
    build = ["index", "build", str(catalog), "--out", str(index_dir), "--batch-size", "8"]
    # killed as the first photos are embedded, half-way, and with every photo embedded (in the
    # calibration and the writing that follow)
    for what, at in (("embedded", 1), ("embedded", 120), ("embedded", 240)):
        killed = run_cli_killed_at(what, at, *build)
        assert killed.returncode == -signal.SIGKILL, f"the build was not killed at {at} {what}: {killed.stderr}"
        after = invoke("index", "info", index_dir, "--json")
        assert after.exit_code == 0, after.output
        assert json.loads(after.output) == before
    finished = run_cli(*build)
    assert finished.returncode == 0, finished.stderr
    rebuilt = json.loads(invoke("index", "info", index_dir, "--json").output)
    assert rebuilt["counts"]["products"] >= 240


def test_demo_runs_the_whole_job(tmp_path):
    result = run_cli("demo", "--out", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    assert "38 listings:" in result.stdout and "Report:" in result.stdout
    assert (tmp_path / "demo" / "scan" / "report.html").exists()
    flagged = sum(1 for line in (tmp_path / "demo" / "scan" / "decisions.jsonl").read_text().splitlines()
                  if '"verdict": "flagged"' in line)
    assert flagged > 0


def test_the_ray_engine_without_ray_installed_says_how_to_get_it(demo_index, demo_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when Ray is not installed
    result = invoke("scan", demo_data.listings, "--index", demo_index, "--out", tmp_path / "o", "--engine", "ray")
    assert result.exit_code == 2
    assert "--engine ray needs Ray Data: pip install -e '.[ray]'" in result.output
    assert not (tmp_path / "o").exists()


def test_lookup_in_a_fresh_process_does_not_import_torch(demo_index, demo_data):
    """Once an index build has verified the ONNX export, a one-photo lookup runs on ONNX Runtime
    alone: torch (about 1.5 s of imports) is made unimportable here, and the lookup still works
    (``--device cpu``: on a machine with a GPU driver, ``auto`` asks torch which device to use)."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from detector.cli import main\n"
            f"sys.argv = ['counterfeit', 'lookup', {str(demo_data.folder / 'listings' / 'D000.jpg')!r},"
            f" '--index', {str(demo_index)!r}, '--json', '--device', 'cpu']\n"
            "main()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert (result["visual_state"], result["matches"][0]["product_id"]) == ("copy", "AUR-000")


def test_the_progress_rate_is_photos_since_the_start_not_the_burst_at_a_batch_end():
    # A batch's photos all arrive at once; rich's recent-window speed then read ~59,000 img/s.
    from types import SimpleNamespace

    from detector.cli import _rate

    assert _rate(SimpleNamespace(completed=12, elapsed=0.8, speed=59_333.1)) == "15.0 img/s"
    assert _rate(SimpleNamespace(completed=0, elapsed=None, speed=None)) == ""
