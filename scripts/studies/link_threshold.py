#!/usr/bin/env python3
"""Measure where the history's "same photo" threshold (policy [history] link_similarity) should sit.

    python -m scripts.studies.link_threshold BENCH_DIR [--limit 200]

On a labelled folder like shared/eval-public (listings.csv + truth.csv), compares whole-image
embeddings, the vectors the scan history keeps, for three kinds of pairs:
- re-used: a listing photo against a copy of itself that a second seller re-edited (JPEG
  quality 50, a 6% crop, a caption bar, or a 0.6x resize): these must link;
- same source: two listings derived from the same catalogue photo by different edits (two
  sellers who each edited the brand's photo): linking them is defensible, not required;
- different products: every other pair of listing photos: these must not link.
Prints, per threshold, the share of each kind that links.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


from detector.embedders import create_embedder
from detector.images import decode_image


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _caption(image: Image.Image) -> Image.Image:
    out = image.copy()
    ImageDraw.Draw(out).rectangle((0, out.height * 0.88, out.width, out.height), fill=(0, 0, 0))
    return out


REEDITS = {
    "jpeg50": lambda im: _jpeg(im, 50),
    "crop6%": lambda im: im.crop((int(im.width * 0.03), int(im.height * 0.03), int(im.width * 0.97), int(im.height * 0.97))),
    "caption": _caption,
    "resize0.6": lambda im: im.resize((max(1, int(im.width * 0.6)), max(1, int(im.height * 0.6)))),
}
THRESHOLDS = (0.85, 0.88, 0.9, 0.92, 0.94, 0.96)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", type=Path, help="folder with listings.csv and truth.csv")
    parser.add_argument("--limit", type=int, default=200, help="listing photos to use (the first N)")
    args = parser.parse_args(argv)
    with open(args.bench / "truth.csv", newline="") as fh:
        truth = {row["listing_id"]: row for row in csv.DictReader(fh)}
    with open(args.bench / "listings.csv", newline="") as fh:
        listings = list(csv.DictReader(fh))[: args.limit]
    embedder = create_embedder("lite0", device="cpu")
    embedder.use_onnx()
    images = [decode_image((args.bench / row["image"]).read_bytes()) for row in listings]
    base = embedder.embed(images)
    reused = np.concatenate([np.sum(base * embedder.embed([edit(im) for im in images]), axis=1) for edit in REEDITS.values()])
    products = [truth[row["listing_id"]]["product_id"] or f"none-{i}" for i, row in enumerate(listings)]
    sims = base @ base.T
    upper = np.triu_indices(len(listings), 1)
    same = np.array([products[i] == products[j] and not products[i].startswith("none") for i, j in zip(*upper)])
    pairs = sims[upper]
    print(f"{len(listings)} listing photos; {len(reused)} re-used pairs, {same.sum()} same-source pairs,"
          f" {(~same).sum()} pairs of different products\n")
    print("| link_similarity | re-used pairs linked | same-source pairs linked | different-product pairs linked |")
    print("|---|---|---|---|")
    for t in THRESHOLDS:
        print(f"| {t} | {np.mean(reused >= t):.1%} | {np.mean(pairs[same] >= t):.1%} | {np.mean(pairs[~same] >= t):.3%} |")
    print(f"\nre-used pairs: min {reused.min():.3f}, 5th percentile {np.quantile(reused, 0.05):.3f};"
          f" different products: max {pairs[~same].max():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
