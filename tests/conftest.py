"""Shared fixtures: every image is generated here; nothing is downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Keep the tests away from the user's real embedding cache.
os.environ["COUNTERFEIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="counterfeit-test-cache-")
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
def demo_index(demo_data, embedder, tmp_path_factory):
    """A built index of the demo catalogue (read-only for tests: copy it before changing it)."""
    from detector.catalog import build_catalog_index

    out = tmp_path_factory.mktemp("index") / "idx"
    build_catalog_index(demo_data.catalog, out, embedder, authorized_path=demo_data.authorized)
    return out


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
