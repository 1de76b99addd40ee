"""The benchmark builder: a folder in eval-public's format whose truth matches its listings."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

from PIL import Image

from detector.demo import draw_product

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_bench.py"
spec = importlib.util.spec_from_file_location("make_bench", SCRIPT)
make_bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_bench)


def read(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_builds_a_labelled_folder_from_product_and_background_pictures(tmp_path):
    products, backgrounds = tmp_path / "products", tmp_path / "backgrounds"
    (products / "sub").mkdir(parents=True)
    backgrounds.mkdir()
    for seed in range(14):
        draw_product(seed, size=200).save(products / "sub" / f"p{seed}.png")
    draw_product(3, size=200).save(products / "twin-of-p3.png")  # the same design under another name
    for seed in (100, 101):
        draw_product(seed, size=500).save(backgrounds / f"b{seed}.jpg")
    out = tmp_path / "bench"
    done = subprocess.run([sys.executable, str(SCRIPT), str(products), str(backgrounds), str(out),
                           "--brands", "2", "--per-brand", "3"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    catalog, listings, truth = read(out / "catalog.csv"), read(out / "listings.csv"), read(out / "truth.csv")
    assert len(catalog) == 6 and {r["brand"] for r in catalog} == {"BrandA", "BrandB"}
    assert {r["brand"] for r in read(out / "authorized.csv")} == {"BrandA", "BrandB"}
    assert [r["listing_id"] for r in listings] == [t["listing_id"] for t in truth]
    kinds = {t["kind"] for t in truth}
    assert {"copy_cheap_rogue", "copy_fullprice_rogue", "authorized_fullprice", "other_product_cheap",
            "unrelated_cheap"} <= kinds
    products_of = {r["product_id"] for r in catalog}
    for t in truth:
        flagged = t["kind"] in ("copy_cheap_rogue", "copy_fullprice_rogue", "authorized_cheap")
        assert t["should_flag"] == ("1" if flagged else "0")
        assert (t["product_id"] in products_of) == t["kind"].startswith(("copy", "authorized"))
    for row in catalog + listings:
        with Image.open(out / row["image"]) as image:
            image.verify()
    # one picture per design: the twin is dropped before products and other products are drawn
    assert len(make_bench.distinct(make_bench.pictures(products))) == 14
    sketches = [Image.open(out / r["image"]).convert("L").resize((16, 16)).tobytes() for r in catalog]
    assert len(set(sketches)) == len(sketches)


def test_refuses_too_few_pictures(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "b").mkdir()
    draw_product(1).save(tmp_path / "p" / "one.png")
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "p"), str(tmp_path / "b"), str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "need at least" in done.stderr
