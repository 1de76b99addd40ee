"""Shared fixtures: every image is generated here; nothing is downloaded."""

from __future__ import annotations

import atexit
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import settings

# Fuzz tests draw the same examples on every run, so CI cannot fail by chance; set
# HYPOTHESIS_PROFILE=explore to draw fresh ones (what found the bugs docs/reliability.md lists).
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Keep the tests away from the user's real embedding cache.
os.environ["COUNTERFEIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="counterfeit-test-cache-")
atexit.register(shutil.rmtree, os.environ["COUNTERFEIT_CACHE_DIR"], ignore_errors=True)
# Wide consoles, so that assertions on printed text are not split by line wrapping.
os.environ["COLUMNS"] = "200"


@pytest.fixture(scope="session")
def embedder():
    from detector.embedders import create_embedder

    return create_embedder("lite0", device="cpu")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    from detector.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "data")


@pytest.fixture(scope="session")
def demo_index(demo_data, tmp_path_factory):
    """A built index of the demo catalogue (read-only for tests: copy it before changing it)."""
    from detector import build_index

    out = tmp_path_factory.mktemp("index") / "idx"
    build_index(demo_data.catalog, out, authorized=demo_data.authorized, device="cpu")
    return out


HOSTILE_TITLE = 'Aurora <img src=x id=injected> "replica" AAA'
"""A listing title that would run markup if any page wrote it as HTML."""


@pytest.fixture(scope="session")
def review_scan(demo_data, demo_index, tmp_path_factory):
    """A finished scan of the demo dump (its first title made hostile) with a review sample of 12:
    what `counterfeit review` works on. Tests that label must copy it first (see copy_scan)."""
    import csv

    from detector import Detector
    from detector.sampling import draw_sample

    folder = tmp_path_factory.mktemp("review")
    with open(demo_data.listings, newline="") as fh:
        rows = list(csv.reader(fh))
    rows[1][2] = HOSTILE_TITLE
    table = demo_data.folder / "review-listings.csv"
    with open(table, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    out = folder / "scan"
    with Detector.open(demo_index, device="cpu", cache=False) as detector:
        detector.scan(table, out)
    draw_sample(out, 12, seed=1)
    return out


def copy_scan(source: Path, target: Path) -> Path:
    """A private copy of a finished scan folder (its progress database and review files included)."""
    shutil.copytree(source, target)
    return target


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """Run the real console entry point in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "detector", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


AT_PROGRESS = """
import os, signal, sys, time
from pathlib import Path

import detector.api as api

WHAT, AT, ACTION = sys.argv[1], int(sys.argv[2]), sys.argv[3]


def at_progress(kind, report):
    fired = []

    def report_then_act(done, total):
        if report:
            report(done, total)
        if kind != WHAT or done < AT or fired:
            return
        fired.append(done)
        if ACTION == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        folder = Path(ACTION.split(":", 1)[1])  # pause:FOLDER: say so, then wait for the test's go
        (folder / "reached").write_text(str(os.getpid()))
        while not (folder / "go").exists():
            time.sleep(0.02)

    return report_then_act


real_build, real_scan = api.build_index, api.Detector.scan
api.build_index = lambda *a, on_progress=None, on_calibration=None, **kw: real_build(
    *a, on_progress=at_progress("embedded", on_progress), on_calibration=at_progress("calibrated", on_calibration), **kw)
api.Detector.scan = lambda self, *a, on_progress=None, **kw: real_scan(
    self, *a, on_progress=at_progress("scanned", on_progress), **kw)
from detector.cli import main
sys.argv = ["counterfeit", *sys.argv[4:]]
main()
"""


def cli_at_progress(what: str, at: int, action: str, *args: str) -> list[str]:
    """The command line of the console entry point in a fresh process that acts once its progress
    reports ``at`` of ``what`` (``embedded`` or ``calibrated`` photos of an index build, ``scanned``
    rows of a scan): ``kill`` (SIGKILL itself) or ``pause:FOLDER`` (write FOLDER/reached with its
    pid, then wait until FOLDER/go exists). Tied to the work done, not to the clock."""
    return [sys.executable, "-c", AT_PROGRESS, what, str(at), action, *args]


def run_cli_killed_at(what: str, at: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """:func:`cli_at_progress` with ``kill``, run to its end: return code -9 when it was killed."""
    return subprocess.run(cli_at_progress(what, at, "kill", *args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny PNG file whose header declares ``width`` × ``height`` pixels: a decompression bomb."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
