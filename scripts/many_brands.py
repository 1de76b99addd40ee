"""Section (j) of scripts/bench.py: labelled folders' catalogues among N small drawn brands.

    python scripts/bench.py --brands 300,10000 --folder ../shared/eval-public [--folder …] [--out W]
        [--unprotected ../shared/public-unrelated --mix 300]

For each N, a catalogue of N brands of ``PRODUCTS`` products each, drawn procedurally as the demo
draws its products (one authorised seller per brand), is built once; each folder's catalogue,
authorised sellers and marks are then added to a copy of that index. The drawn photos are made
once under ``W/drawn`` and reused by every N and every run. Reported:

- each folder indexed alone (the same command): its build, and its listings' scan;
- per N: the drawn brands' build, wall seconds and peak memory (``counterfeit index build`` in its
  own process);
- per N and folder: the time to add the folder's brands to it, then one more drawn brand (the same
  command with the grown catalogue); the folder's listings scanned against the grown index beside
  the folder's own: F1, recall, right product first and authorised full-price false flags, the
  flags each raised that the other did not, photos/s and their ratio, the search stages' ms per
  photo;
- with ``--unprotected``: a nightly mix (scripts/bench.py's ``nightly_mix``: a tenth the first
  folder's listings) scanned against both of the first folder's indexes, photos/s and the ratio.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

PRODUCTS = 3
"""Products per drawn brand: a small brand."""
SEED = 900_000
"""Drawn products' seeds start here, far from the demo's and the speed benchmark's."""


def drawn_brand(i: int) -> str:
    return f"Drawn {i:05d}"


def draw_catalogue(folder: Path, brands: int) -> list[list[str]]:
    """Rows (brand, product_id, image, price, currency, title) of ``brands`` drawn brands, their
    photos written under ``folder/refs`` where missing (320 px JPEGs, as the demo's)."""
    from detector.demo import draw_product

    (folder / "refs").mkdir(parents=True, exist_ok=True)
    rows = []
    for b in range(brands):
        rng = np.random.default_rng(SEED + b)
        for p in range(PRODUCTS):
            image = folder / "refs" / f"d{b:05d}-{p}.jpg"
            if not image.is_file():
                draw_product(SEED + PRODUCTS * b + p).save(image, "JPEG", quality=92)
            rows.append([drawn_brand(b), f"D{b:05d}-{p}", str(image.resolve()), f"{rng.uniform(20, 500):.2f}", "USD",
                         f"{drawn_brand(b)} product {p}"])
    return rows


def _table(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


def _absolute(labelled: Path, name: str, column: str) -> tuple[list[str], list[list[str]]]:
    """A folder's table with its ``column`` of relative paths made absolute."""
    with open(labelled / name, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header, rows = list(reader.fieldnames), list(reader)
    return header, [[str((labelled / r[c]).resolve()) if c == column else r[c] for c in header] for r in rows]


def combined(labelled: Path | None, drawn: Path, brands: int, out: Path) -> dict[str, Path]:
    """``brands`` drawn brands, with the folder's tables when one is given: catalog, authorized
    (and marks)."""
    out.mkdir(parents=True, exist_ok=True)
    header, rows = ["brand", "product_id", "image", "price", "currency", "title"], []
    sellers = []
    if labelled is not None:
        header, rows = _absolute(labelled, "catalog.csv", "image")
        with open(labelled / "authorized.csv", newline="", encoding="utf-8") as fh:
            sellers = [[r["brand"], r["seller_id"]] for r in csv.DictReader(fh)]
    extra = [dict(zip(["brand", "product_id", "image", "price", "currency", "title"], r)) for r in draw_catalogue(drawn, brands)]
    rows += [[r.get(c, "") for c in header] for r in extra]
    sellers += [[drawn_brand(b), f"drawn-{b:05d}-official"] for b in range(brands)]
    tables = {"catalog": _table(out / "catalog.csv", header, rows),
              "authorized": _table(out / "authorized.csv", ["brand", "seller_id"], sellers)}
    if labelled is not None and (labelled / "marks.csv").is_file():
        tables["marks"] = _table(out / "marks.csv", *_absolute(labelled, "marks.csv", "image"))
    return tables


def build(tables: dict[str, Path], index_dir: Path) -> tuple[float, int]:
    """``counterfeit index build`` of ``tables`` in its own process: wall seconds, peak bytes."""
    from scripts.bench import run_measured

    command = [sys.executable, "-m", "detector", "index", "build", str(tables["catalog"]), "--out", str(index_dir),
               "--authorized", str(tables["authorized"]), "--allow-outside-paths", "--device", "cpu"]
    if "marks" in tables:
        command += ["--marks", str(tables["marks"])]
    return run_measured(command)


def scan(index_dir: Path, table: Path, out: Path) -> dict:
    """A cold scan of ``table`` (no cache): its decisions, photos/s (index opening included) and
    the search stages' ms per photo."""
    from detector import Detector
    from detector.profile import StageClock

    shutil.rmtree(out, ignore_errors=True)
    clock = StageClock()
    start = time.perf_counter()
    with Detector.open(index_dir, device="cpu", cache=False) as detector:
        opened = time.perf_counter() - start
        summary = detector.scan(table, out, clock=clock)
    seconds = time.perf_counter() - start
    decisions = [json.loads(line) for line in summary.decisions_path.read_text(encoding="utf-8").splitlines()]
    stages = clock.per_photo_ms(summary.photos_this_run)
    return {"decisions": decisions, "photos_per_s": round(len(decisions) / seconds, 2), "open_s": round(opened, 2),
            "search_ms_per_photo": round(sum(stages.get(s, 0.0) for s in ("whole_search", "search")), 3)}


def quality(decisions: list[dict], labelled: Path) -> dict:
    from scripts.evaluate import score

    with open(labelled / "truth.csv", newline="", encoding="utf-8") as fh:
        truth = list(csv.DictReader(fh))
    metrics = score(decisions, truth)
    return {k: round(metrics[k], 4) for k in ("f1", "precision", "recall", "recall_at_1",
                                               "false_flag_rate_authorized_fullprice")}


def _flagged(decisions: list[dict]) -> set[str]:
    return {d["listing_id"] for d in decisions if d["verdict"] == "flagged"}


def many_brands(counts: list[int], folders: list[Path], work: Path, unprotected: Path | None = None,
                mix: int = 300) -> dict:
    """Section (j) for each brand count in ``counts`` and each labelled folder (see the module's
    docstring): the drawn brands are built once per count, and each folder is added to a copy."""
    from scripts.bench import nightly_mix

    folders = [f.resolve() for f in folders]
    work.mkdir(parents=True, exist_ok=True)
    mixed = None
    if unprotected is not None:
        mixed = work / "nightly.csv"
        if not mixed.is_file():
            shutil.rmtree(work / "mix", ignore_errors=True)
            mixed = nightly_mix(folders[0], unprotected, work, mix)
    result = {"products_per_brand": PRODUCTS, "alone": {}, "brands": []}
    own = {}
    for labelled in folders:
        alone = work / "alone" / labelled.name
        seconds, peak = build(combined(labelled, work / "drawn", 0, alone), alone / "index")
        own[labelled] = scan(alone / "index", labelled / "listings.csv", alone / "scan")
        row = {"build_s": round(seconds, 1), "peak_mb": round(peak / 2**20), **quality(own[labelled]["decisions"], labelled),
               **{k: own[labelled][k] for k in ("photos_per_s", "open_s", "search_ms_per_photo")}}
        if mixed and labelled == folders[0]:
            own["mix"] = scan(alone / "index", mixed, alone / "scan-mix")
            row["mix_photos_per_s"] = own["mix"]["photos_per_s"]
        result["alone"][labelled.name] = row
        print(f"{labelled.name} alone: {json.dumps(row)}", flush=True)
    for n in counts:
        here = work / f"n{n}"
        shutil.rmtree(here, ignore_errors=True)
        seconds, peak = build(combined(None, work / "drawn", n, here), here / "index")
        row = {"brands": n, "references": n * PRODUCTS, "build_s": round(seconds, 1), "build_peak_mb": round(peak / 2**20),
               "folders": {}}
        print(f"{n} drawn brands: built in {seconds:.1f} s, peak {peak / 2**20:.0f} MB", flush=True)
        for labelled in folders:
            mine = here / labelled.name
            shutil.copytree(here / "index", mine / "index")
            added_s, added_peak = build(combined(labelled, work / "drawn", n, mine), mine / "index")
            one_s, one_peak = build(combined(labelled, work / "drawn", n + 1, mine), mine / "index")
            found = scan(mine / "index", labelled / "listings.csv", mine / "scan")
            alone = own[labelled]
            entry = {"add_folder_s": round(added_s, 1), "add_one_brand_s": round(one_s, 1),
                     "add_peak_mb": round(max(added_peak, one_peak) / 2**20),
                     **quality(found["decisions"], labelled),
                     **{k: found[k] for k in ("photos_per_s", "open_s", "search_ms_per_photo")},
                     "speed_vs_alone": round(found["photos_per_s"] / alone["photos_per_s"], 2),
                     "flags_lost": sorted(_flagged(alone["decisions"]) - _flagged(found["decisions"])),
                     "flags_gained": sorted(_flagged(found["decisions"]) - _flagged(alone["decisions"]))}
            if mixed and labelled == folders[0]:
                night = scan(mine / "index", mixed, mine / "scan-mix")
                entry.update(mix_photos_per_s=night["photos_per_s"],
                             mix_speed_vs_alone=round(night["photos_per_s"] / own["mix"]["photos_per_s"], 2))
            row["folders"][labelled.name] = entry
            print(f"{n} brands, {labelled.name}: {json.dumps(entry)}", flush=True)
            shutil.rmtree(mine / "index")
        result["brands"].append(row)
    return result
