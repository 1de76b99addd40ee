#!/usr/bin/env python3
"""Measure brand-mark search (detector/marks.py) on a labelled folder with a marks.csv.

For every listing photo: which registered marks are found, at several keypoint counts, against
truth.csv's brand (empty for photos that carry no protected mark); then, for photos where no
mark's keypoints were found, the shape search for simple marks (detector/mark_shapes.py), its
levels calibrated as `index build` does, on other brands' catalogue photos (the outline's
correlation times its edges found, then the correlation within the mark's hull). Prints, per kind of
listing, how often the right brand's mark is found, a wrong one, or none, and each search's cost
per photo (SIFT extraction not included: the scanner takes it for verification anyway).

    python -m scripts.studies.ablate_marks ../shared/public-logo [--counts 3,4,5]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import defaultdict
from pathlib import Path

from PIL import Image


from detector.mark_shapes import ShapeSearch, calibrate_level, photo_pixels, searched_by_shape
from detector.marks import MIN_INLIERS, find_marks, prepare_mark
from detector.verify import extract


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", type=Path, help="folder with marks.csv, listings.csv and truth.csv")
    parser.add_argument("--counts", default="3,4,5", help="comma-separated keypoint counts to report")
    args = parser.parse_args(argv)
    for name in ("marks.csv", "listings.csv", "truth.csv"):
        if not (args.bench / name).is_file():
            parser.error(f"{args.bench / name} not found")
    counts = [int(c) for c in args.counts.split(",")]

    def rows(name: str) -> list[dict]:
        with open(args.bench / name, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    marks = [prepare_mark(Image.open(args.bench / r["image"]), r["brand"], r["image"]) for r in rows("marks.csv")]
    catalogue = [(r["brand"], photo_pixels(Image.open(args.bench / r["image"]))) for r in rows("catalog.csv")]
    levels, hulls = {}, {}
    for m in marks:
        impostors = [px for brand, px in catalogue if brand != m.brand]
        simple = searched_by_shape(m)
        levels[(m.brand, m.name)] = calibrate_level(m, impostors) if simple else None
        hulls[(m.brand, m.name)] = calibrate_level(m, impostors, hull=True) if simple else None
    shapes = ShapeSearch(marks, levels, hulls)
    print("shape levels (outline; within the hull):",
          ", ".join(f"{b} {lv}; {hulls[key]}" for key, lv in levels.items() if lv is not None for b in [key[0]]))
    truth = {r["listing_id"]: r for r in rows("truth.csv")}
    tally: dict[tuple[int, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    missed: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    search_s, shape_s, photos = 0.0, 0.0, 0
    for row in rows("listings.csv"):
        photo = Image.open(args.bench / row["image"]).convert("RGB")
        features = extract(photo)
        start = time.perf_counter()
        found = find_marks(features, marks, min_inliers=min(counts))
        search_s += time.perf_counter() - start
        photos += 1
        kind, brand = truth[row["listing_id"]]["kind"], truth[row["listing_id"]].get("brand", "")
        by_shape = None
        if not [s for s in found if s.inliers >= MIN_INLIERS]:
            start = time.perf_counter()
            by_shape = shapes.find(photo_pixels(photo))
            shape_s += time.perf_counter() - start
        for count in counts:
            seen = [s for s in found if s.inliers >= count]
            outcome = ("none" if not seen else "right" if seen[0].brand == brand else "wrong")
            tally[(count, kind)][outcome] += 1
            if brand and outcome != "right":
                missed[count][brand] += 1
        seen = [s for s in found if s.inliers >= MIN_INLIERS] or by_shape
        outcome = ("none" if not seen else "right" if seen[0].brand == brand else "wrong")
        tally[(0, kind)][outcome] += 1
        if brand and outcome != "right":
            missed[0][brand] += 1

    print(f"{len(marks)} marks, {photos} photos; keypoint search {1000 * search_s / max(1, photos):.1f} ms/photo,"
          f" shape search {1000 * shape_s / max(1, photos):.1f} ms/photo (over all photos)")
    print(f"{'found by':>22}  {'kind':<28} {'right':>6} {'wrong':>6} {'none':>6}")
    for (count, kind), outcome in sorted(tally.items(), key=lambda item: (item[0][0] == 0, item[0])):
        how = f"{MIN_INLIERS}+ keypoints, or shape" if count == 0 else f"{count}+ keypoints"
        print(f"{how:>22}  {kind:<28} {outcome['right']:>6} {outcome['wrong']:>6} {outcome['none']:>6}")
    for count, brands in sorted(missed.items(), key=lambda item: (item[0] == 0, item[0])):
        how = f"{MIN_INLIERS}+ keypoints or shape" if count == 0 else f"{count}+ keypoints"
        print(f"marks missed ({how}):", ", ".join(f"{b} {n}" for b, n in sorted(brands.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
