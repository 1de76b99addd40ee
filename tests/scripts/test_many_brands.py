"""The many-brands benchmark's catalogue: a labelled folder's tables among N drawn brands."""

from __future__ import annotations

import csv
from pathlib import Path

from detector.demo import make_demo_dataset
from scripts.many_brands import PRODUCTS, combined


def read(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_the_folder_is_embedded_among_drawn_brands_with_paths_that_resolve_anywhere(tmp_path):
    folder = make_demo_dataset(tmp_path / "demo").folder
    (folder / "marks.csv").write_text("brand,image\nAurora,refs/AUR-000.jpg\n")
    tables = combined(folder, tmp_path / "drawn", 4, tmp_path / "out")
    assert len(read(combined(None, tmp_path / "drawn", 4, tmp_path / "none")["catalog"])) == 4 * PRODUCTS
    rows, own = read(tables["catalog"]), read(folder / "catalog.csv")
    assert len(rows) == len(own) + 4 * PRODUCTS
    assert [r["product_id"] for r in rows[: len(own)]] == [r["product_id"] for r in own]
    drawn = {r["brand"] for r in rows[len(own):]}
    assert len(drawn) == 4 and not drawn & {r["brand"] for r in own}
    assert all(Path(r["image"]).is_absolute() and Path(r["image"]).is_file() for r in rows)
    sellers = read(tables["authorized"])
    assert {s["brand"] for s in sellers} >= drawn and len(sellers) == len(read(folder / "authorized.csv")) + 4
    assert Path(read(tables["marks"])[0]["image"]) == (folder / "refs" / "AUR-000.jpg").resolve()
    again = combined(folder, tmp_path / "drawn", 5, tmp_path / "again")  # one brand more: the drawn photos kept
    assert read(again["catalog"])[: len(rows)] == rows
