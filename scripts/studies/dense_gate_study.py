#!/usr/bin/env python3
"""Could the network's own feature map replace SIFT in the first stage? A negative result, kept
so that it can be rerun.

SIFT at 512 px costs more per photo than the whole budget of issue 18's nightly target. The
whole view's forward pass already computes a grid of local descriptors: Lite0's stride-16 map
(14 x 14 cells of 112 channels at 224 px) and its last map (7 x 7 of 1,280). This script fits
those cells, as SIFT's keypoints are fitted, to the whole view's ten closest references: mutual
nearest cells above a cosine level, then a RANSAC similarity on the cell centres (either way
round, for mirrored photos), and counts the cells in one layout. A gate would send a photo on
when that count, or the whole view's similarity (within 0.05 of its brand's threshold), says so.

It reports, for each setting, what such a gate would stop among the listings the full pipeline
flagged on each labelled folder (an ``evaluate.py`` work folder, as ``gate_study.py`` reads them)
and what share of unprotected pictures it would let through.

    python -m scripts.studies.dense_gate_study ../shared/eval-public:W1 [FOLDER:WORK ...] \\
        --unprotected DIR --against W1 [--limit 300] [--out dense-gates.json]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


from scripts.studies.gate_study import MARGINS, TEN, labelled, study_arguments

from detector.embedders import create_embedder
from detector.images import ImageError, decode_image, read_image_bytes
from detector.matches import open_index, search_views

MAPS = ("stride16", "stride32")
LEVELS = (0.5, 0.6, 0.7)
"""Cosine a mutual nearest cell pair must reach."""
COUNTS = tuple(range(2, 40))


class DenseFeatures:
    """Lite0's stride-16 and last feature maps of a picture's whole view, as unit cell descriptors."""

    def __init__(self):
        import torch

        self.torch = torch
        self.embedder = create_embedder("lite0", device="cpu", backend="torch")
        self.model = self.embedder.model.eval()

    def __call__(self, image) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
        torch, model = self.torch, self.model
        with torch.inference_mode():
            x = torch.from_numpy(self.embedder.preprocess_views([image]))
            x = model.bn1(model.conv_stem(x))
            maps = {}
            for i, block in enumerate(model.blocks):
                x = block(x)
                if i == 4:
                    maps["stride16"] = x[0]
            maps["stride32"] = model.bn2(model.conv_head(x))[0]
        cells = {}
        for name, fmap in maps.items():
            channels, height, width = fmap.shape
            descriptors = fmap.reshape(channels, -1).T.numpy().astype(np.float32)
            descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True) + 1e-6
            ys, xs = np.mgrid[0:height, 0:width]
            cells[name] = (descriptors, np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float32), width)
        return cells


def layout(query: tuple, reference: tuple, level: float) -> int:
    """Mutual nearest cells at or above ``level`` that fit one similarity (photo or mirror)."""
    import cv2

    (dq, pq, width), (dr, pr, _) = query, reference
    similarity = dq @ dr.T
    forward, backward = similarity.argmax(1), similarity.argmax(0)
    rows = np.arange(len(dq))
    mutual = (backward[forward] == rows) & (similarity[rows, forward] >= level)
    if mutual.sum() < 3:
        return 0
    source, target = pq[mutual], pr[forward[mutual]]
    best = 0
    for flipped in (False, True):
        points = source.copy()
        if flipped:
            points[:, 0] = (width - 1) - points[:, 0]
        _, inliers = cv2.estimateAffinePartial2D(points, target, method=cv2.RANSAC, ransacReprojThreshold=1.0,
                                                 maxIters=200)
        if inliers is not None:
            best = max(best, int(inliers.sum()))
    return best


def evidence(work: Path, photos: list[tuple[Path, dict]], dense: DenseFeatures, known: dict) -> list[dict]:
    """For each (photo, decision): whole-view similarity against its threshold, and the best
    dense layout with its ten closest references at each map and level."""
    index, embedder = open_index(work / "index", backend="onnx")
    rows = []
    for path, decision in photos:
        try:
            image = decode_image(read_image_bytes(path), draft=embedder.decode_size)
        except ImageError:
            continue
        hits = search_views(index, [embedder.embed_arrays(embedder.preprocess_views([image]))[0]], TEN)[0]
        started = time.perf_counter()
        cells = dense(image)
        row = {"gap": max([h.similarity - index.brands[h.brand].threshold for h in hits] or [-1.0]),
               "verdict": decision.get("verdict"), "features_ms": (time.perf_counter() - started) * 1000}
        started = time.perf_counter()
        for hit in hits:
            file = index.product(hit)["image_path"]
            if file not in known:
                known[file] = dense(decode_image(read_image_bytes(Path(file)), draft=embedder.decode_size))
        for name in MAPS:
            for level in LEVELS:
                row[f"{name}@{level}"] = max([layout(cells[name], known[index.product(h)["image_path"]][name], level)
                                              for h in hits] or [0])
        row["match_ms"] = (time.perf_counter() - started) * 1000
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = study_arguments(argv, __doc__, "dense-gates.json")
    dense, known = DenseFeatures(), {}
    flagged = {}
    for folder, work in args.pairs:
        photos = [p for p in labelled(folder, work) if p[1].get("verdict") == "flagged"]
        flagged[folder.name] = evidence(work, photos, dense, known)
        print(f"{folder.name}: {len(flagged[folder.name])} flagged listings", flush=True)
    unprotected = evidence(args.against, [(p, {}) for p in args.pictures], dense, {})
    lines = []
    for key in (f"{name}@{level}" for name in MAPS for level in LEVELS):
        for margin in MARGINS:
            for count in COUNTS:
                def passes(row, key=key, margin=margin, count=count):
                    return row["gap"] >= -margin or row[key] >= count

                lines.append({"map": key, "margin": margin, "cells": count,
                              "unprotected_let_through": round(float(np.mean([passes(r) for r in unprotected])), 3),
                              "flagged_stopped": {name: sum(not passes(r) for r in rows) for name, rows in flagged.items()},
                              "flagged": {name: len(rows) for name, rows in flagged.items()}})
    costs = {key: round(float(np.median([r[key] for r in unprotected])), 1) for key in ("features_ms", "match_ms")}
    args.out.write_text(json.dumps({"unprotected": len(unprotected), "gates": lines, "median_ms": costs}, indent=1))
    print("median ms per unprotected picture, in this one process:", costs)
    for allowed in (0, 2, 5):
        fitting = [line for line in lines if sum(line["flagged_stopped"].values()) <= allowed]
        best = min(fitting, key=lambda line: line["unprotected_let_through"]) if fitting else None
        if best:
            print(f"stopping at most {allowed} flagged listings in all: lets through {best['unprotected_let_through']:.1%}"
                  f" of unprotected ({best['map']}, M {best['margin']}, {best['cells']} cells; stops {best['flagged_stopped']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
