"""Copy or new photo: which evidence tells an edited copy of the catalogue photo from a seller's
own photo of the product, once keypoints have established the product?

It reads scans that ``scripts/evaluate.py`` made (their ``decisions.jsonl``, whose matches carry
``sharpness``, ``residual`` and ``alignment``) with their folders' ``truth.csv``, keeps the
listings whose decision is a keypoint match (``copy`` or ``product``) to the true product, and
prints each measure's spread for the folders of copies and for those of new photos, then the share
called ``copy`` under a grid of (sharpness, residual) levels: the rule is ``copy`` when the
sharpness reaches its level or the residual is at most its level.

    python -m scripts.studies.copy_state_study --copies EP_WORK:../shared/eval-public \\
        --new-photos GROCERY_WORK:../shared/public-grocery [--new-photos LOGO_WORK:../shared/public-logo]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

GEOMETRIC = ("copy", "product")
MEASURES = ("sharpness", "residual", "alignment")
SHARPNESS = (0.74, 0.76, 0.78, 0.80)
RESIDUAL = (0.0, 0.3, 0.4, 0.5)


def matched(work: Path, bench: Path) -> list[dict]:
    """The first match of every listing decided as a keypoint match to its true product."""
    with open(bench / "truth.csv", newline="", encoding="utf-8") as fh:
        truth = {row["listing_id"]: row for row in csv.DictReader(fh)}
    found = []
    for line in (work / "scan" / "decisions.jsonl").read_text().splitlines():
        decision = json.loads(line)
        first = (decision.get("matches") or [None])[0]
        row = truth.get(decision["listing_id"])
        if (first and row and row["product_id"] and first["product_id"] == row["product_id"]
                and first["visual_state"] in GEOMETRIC):
            found.append(first)
    return found


def spread(values: list[float | None]) -> str:
    known = np.array([v for v in values if v is not None], float)
    if not len(known):
        return "-"
    low, mid, high = np.percentile(known, [5, 50, 95])
    return f"{low:.2f} / {mid:.2f} / {high:.2f}"


def called_copy(matches: list[dict], sharpness: float, residual: float) -> float:
    copy = [(m.get("sharpness") is not None and m["sharpness"] >= sharpness)
            or (m.get("residual") is not None and m["residual"] <= residual) for m in matches]
    return sum(copy) / max(1, len(copy))


def folder(text: str) -> tuple[Path, Path]:
    work, _, bench = text.partition(":")
    if not bench:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WORK:BENCH")
    return Path(work), Path(bench)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=folder, action="append", default=[], metavar="WORK:BENCH",
                        help="an evaluate work folder and its benchmark, whose listings are edited copies")
    parser.add_argument("--new-photos", type=folder, action="append", default=[], metavar="WORK:BENCH",
                        help="an evaluate work folder and its benchmark, whose listings are new photos")
    args = parser.parse_args(argv)
    groups = [(f"copies: {bench.name}", matched(work, bench)) for work, bench in args.copies]
    groups += [(f"new photos: {bench.name}", matched(work, bench)) for work, bench in args.new_photos]
    print("5% / median / 95% of each measure, keypoint matches to the true product:")
    for name, found in groups:
        print(f"  {name:<34} n={len(found):<4}" + "".join(
            f"  {m} {spread([x.get(m) for x in found])}" for m in MEASURES))
    print("share called copy (sharpness >= S or residual <= R):")
    for s in SHARPNESS:
        for r in RESIDUAL:
            print(f"  S {s:.2f} R {r:.1f}  " + "  ".join(f"{name.split(': ')[1]} {called_copy(found, s, r):.3f}"
                                                    for name, found in groups))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
