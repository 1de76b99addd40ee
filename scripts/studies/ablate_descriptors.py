#!/usr/bin/env python3
"""Retrieval ablation of the global descriptor on a benchmark folder: pooling, resize and views.

For each variant it embeds the catalogue and the listings, ranks references by cosine (best over
a listing's views), and prints recall@1 and recall@5 of the true product for derived listings,
with the share of derived listings whose true-product score beats the 95th percentile of
non-derived listings' best scores (a threshold-free separation measure). Truth is read here,
never in the detector.

    python -m scripts.studies.ablate_descriptors ../shared/eval-public
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
from pathlib import Path

import numpy as np

from detector.embedders import create_embedder
from detector.images import load_image
from detector.views import listing_views


def embed_all(embedder, images, batch=32):
    return np.concatenate([embedder.embed(images[i : i + batch]) for i in range(0, len(images), batch)])


def measure(scores, ref_ids, truth_ids):
    derived = [i for i, t in enumerate(truth_ids) if t]
    order = np.argsort(-scores, axis=1)
    r1 = np.mean([ref_ids[order[i, 0]] == truth_ids[i] for i in derived])
    r5 = np.mean([truth_ids[i] in {ref_ids[j] for j in order[i, :5]} for i in derived])
    true_scores = np.array([scores[i, ref_ids.index(truth_ids[i])] for i in derived])
    negatives = np.array([scores[i].max() for i, t in enumerate(truth_ids) if not t])
    return r1, r5, float(np.mean(true_scores > np.quantile(negatives, 0.95)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", type=Path)
    parser.add_argument("--embedder", default="lite0", help="registered embedder to ablate (lite0, lite2, …)")
    parser.add_argument("--views-only", action="store_true", help="measure only the default descriptor")
    args = parser.parse_args()
    catalog = list(csv.DictReader(open(args.bench / "catalog.csv", newline="")))
    listings = list(csv.DictReader(open(args.bench / "listings.csv", newline="")))
    truth = {r["listing_id"]: r["product_id"] for r in csv.DictReader(open(args.bench / "truth.csv", newline=""))}
    ref_ids = [r["product_id"] for r in catalog]
    truth_ids = [truth[r["listing_id"]] for r in listings]
    refs = [load_image(r["image"], args.bench) for r in catalog]
    photos = [load_image(r["image"], args.bench) for r in listings]
    base = create_embedder(args.embedder, device="auto", backend="torch")  # variants change pooling/resize
    print(f"{args.embedder}: {'variant':<44} recall@1 recall@5 separation")
    for resize in () if args.views_only else ("center_crop", "squash"):
        for pooling in ("avg", "gem"):
            model = dataclasses.replace(base, preprocess=dataclasses.replace(base.preprocess, resize=resize), pooling=pooling)
            scores = embed_all(model, photos) @ embed_all(model, refs).T
            print(f"{f'whole photo, {resize}, {pooling} pooling':<52} %.3f    %.3f    %.3f" % measure(scores, ref_ids, truth_ids))
    model = dataclasses.replace(base, preprocess=dataclasses.replace(base.preprocess, resize="squash"), pooling="gem")
    ref_vectors = embed_all(model, refs)
    views = embed_all(model, [v for p in photos for v in listing_views(p)]).reshape(len(photos), -1, model.dim)
    scores = np.einsum("nvd,md->nvm", views, ref_vectors).max(axis=1)
    print(f"{'whole + centre + 4 corner windows (0.6), squash, gem':<52} %.3f    %.3f    %.3f" % measure(scores, ref_ids, truth_ids))


if __name__ == "__main__":
    main()
