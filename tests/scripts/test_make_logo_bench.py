"""The brand-mark benchmark builder: a folder in public-logo's format whose truth matches its listings."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw

from detector.demo import draw_product

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_logo_bench.py"


def read(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def drawing(seed: int) -> Image.Image:
    """A product drawing with transparency around it."""
    product = draw_product(seed, size=160).convert("RGBA")
    alpha = Image.new("L", product.size, 0)
    ImageDraw.Draw(alpha).ellipse((10, 10, 150, 150), fill=255)
    product.putalpha(alpha)
    return product


def test_builds_a_labelled_logo_folder_from_logos_products_and_backgrounds(tmp_path):
    logos, backgrounds = tmp_path / "logos", tmp_path / "backgrounds"
    logos.mkdir()
    backgrounds.mkdir()
    for i, slug in enumerate(("acme", "borel", "other")):
        mark = Image.new("RGB", (120, 120), "white")
        ImageDraw.Draw(mark).polygon([(10 + 20 * i, 10), (110, 60), (10, 110)], fill=(30, 30, 30))
        mark.save(logos / f"{slug}.png")
    (tmp_path / "data").mkdir()  # simple-icons' colours, beside its icons: Acme's is white, as Sony's is
    (tmp_path / "data" / "simple-icons.json").write_text('[{"slug": "acme", "hex": "FFFFFF"}, {"slug": "borel", "hex": "1428A0"}]')
    paths = []
    for seed in range(4):
        drawing(seed).save(tmp_path / f"product{seed}.png")
        paths.append(str(tmp_path / f"product{seed}.png"))
    draw_product(99, size=400).save(backgrounds / "b.jpg")
    out = tmp_path / "bench"
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), "--logos", str(logos), "--products", ",".join(paths),
                           "--backgrounds", str(backgrounds), "--protect", "acme,borel", "--others", "other"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    catalog, listings, truth = read(out / "catalog.csv"), read(out / "listings.csv"), read(out / "truth.csv")
    assert len(catalog) == 6 and {r["brand"] for r in catalog} == {"Acme", "Borel"}
    assert [r["image"] for r in read(out / "marks.csv")] == ["marks/acme.png", "marks/borel.png"]
    assert [r["listing_id"] for r in listings] == [t["listing_id"] for t in truth]
    assert Counter(t["kind"] for t in truth) == {kind: 24 for kind in (
        "newphoto_cheap_rogue", "newphoto_fullprice_rogue", "authorized_fullprice", "other_logo_same_product",
        "no_logo_same_product")}
    sellers = {r["seller_id"] for r in read(out / "authorized.csv")}
    for t, listing in zip(truth, listings):
        assert t["should_flag"] == ("1" if t["kind"].startswith("newphoto") else "0")
        assert (listing["seller_id"] in sellers) == (t["kind"] == "authorized_fullprice")
    for row in catalog + listings + read(out / "marks.csv"):
        with Image.open(out / row["image"]) as image:
            image.verify()
    for slug in ("acme", "borel"):  # a mark too light for white paper is drawn in black: it has a drawing
        with Image.open(out / "marks" / f"{slug}.png") as mark:
            assert mark.convert("L").getextrema()[0] < 100, slug
    missing = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "x"), "--logos", str(logos), "--products",
                              paths[0], "--backgrounds", str(backgrounds), "--protect", "nobody", "--others", "other"],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no logo" in missing.stderr
    (tmp_path / "broken.png").write_text("not a picture")
    broken = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "y"), "--logos", str(logos), "--products",
                             str(tmp_path / "broken.png"), "--backgrounds", str(backgrounds), "--protect", "acme",
                             "--others", "other"], capture_output=True, text=True)
    assert broken.returncode == 2 and "cannot read product drawing" in broken.stderr
    assert "Traceback" not in broken.stderr
