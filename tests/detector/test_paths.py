"""Nothing is written outside the cache folder and the command's own outputs: not by the scan,
not by ONNX Runtime (which keeps a device id and a telemetry store per user), not by the OCR."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import run_cli


def files_under(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def onnxruntime_keeps_files(home) -> bool:
    """Whether a plain ``import onnxruntime`` writes files under a fresh home on this machine (some
    builds and machines keep no device id or telemetry store)."""
    home.mkdir()
    subprocess.run([sys.executable, "-c", "import onnxruntime"], check=True, timeout=120,
                   env={**os.environ, "HOME": str(home), "XDG_CACHE_HOME": ""})
    return bool(files_under(home))


def test_a_scan_and_a_lookup_write_only_to_the_cache_folder_and_the_output(tmp_path, demo_data, demo_index):
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    env = {"HOME": str(home), "COUNTERFEIT_CACHE_DIR": str(cache), "XDG_CACHE_HOME": ""}
    scanned = run_cli("scan", str(demo_data.listings), "--index", str(demo_index), "--out", str(tmp_path / "out"),
                      env=env)
    assert scanned.returncode == 0, scanned.stderr
    looked = run_cli("lookup", str(demo_data.folder / "listings" / "D000.jpg"), "--index", str(demo_index), env=env)
    assert looked.returncode == 0, looked.stderr
    assert files_under(home) == []
    if onnxruntime_keeps_files(tmp_path / "control"):  # where it keeps them at all, they are kept here
        assert any(name.startswith("onnxruntime/Microsoft") for name in files_under(cache))


def test_the_brand_word_reader_writes_only_to_the_cache_folder(tmp_path):
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    program = ("from PIL import Image, ImageDraw\n"
               "from detector.brand_words import WordReader\n"
               "image = Image.new('RGB', (400, 120), 'white')\n"
               "ImageDraw.Draw(image).text((20, 40), 'ACME', fill='black')\n"
               "print(WordReader(['Acme']).find(image))\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HOME": str(home), "COUNTERFEIT_CACHE_DIR": str(cache),
                                 "XDG_CACHE_HOME": ""})
    assert result.returncode == 0, result.stderr
    assert files_under(home) == []
