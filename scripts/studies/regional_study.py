#!/usr/bin/env python3
"""Could one larger forward pass replace the five window crops? Measure before adopting it.

A photo's five window views (the centre and the four corners, each 60% of its width and height:
``detector.views``) are five crops, each resized to 224 and put through the network. Issue 18
asks whether regional pooling from one forward pass holds quality: the whole photo at 320 px
gives Lite0 a 10 x 10 feature map, on which each 60% window is exactly 6 x 6 cells, pooled (GeM)
like a view. That is about 2 views' worth of network instead of 5.

    python -m scripts.studies.regional_study vectors BENCH --work W [--limit 80] [--size 320]
    python -m scripts.studies.regional_study evaluate BENCH --work W2 [evaluate.py's options]

``vectors``: for the listings of BENCH whose truth names a product (W an ``evaluate.py`` work
folder holding BENCH's index), the cosine of each pooled window to its crop, whether the best
reference over the six views stays the same, how often it is the right product, and the network
time of both (eager torch, 2 threads). ``evaluate``: ``scripts/evaluate.py`` with the ``windows`` stage
replaced by one that pools them from the one pass (in-process; the whole view is unchanged), to
compare with a plain ``evaluate.py`` run on the same folder.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np


from detector.embedders import Embedder, create_embedder, pool_features
from detector.images import decode_image
from detector.views import WINDOW, listing_views
from index.store import load_index

SIZE = 320


def window_cells(size: int) -> list[tuple[int, int, int]]:
    """(row, column, cells) of the centre and the four corner windows on the feature map of a
    ``size`` input (stride 32), in :func:`detector.views.listing_views`' order."""
    n = size // 32
    cells = round(WINDOW * n)
    middle = (n - cells) // 2
    return [(r, c, cells) for r, c in ((middle, middle), (0, 0), (0, n - cells), (n - cells, 0), (n - cells, n - cells))]


def pooled_windows(torch, embedder: Embedder, batch: np.ndarray) -> np.ndarray:
    """[n * 5, d] unit vectors: each window pooled from the [n, 3, s, s] batch's feature maps."""
    embedder._with_torch()
    with torch.inference_mode():
        features = embedder.model(torch.from_numpy(np.ascontiguousarray(batch))).float()
    pooled = torch.stack([pool_features(features[:, :, r:r + k, c:c + k], embedder.pooling)
                          for r, c, k in window_cells(batch.shape[-1])], 1)
    return torch.nn.functional.normalize(pooled.reshape(-1, pooled.shape[-1]), dim=1).numpy()


def vectors(bench: Path, work: Path, limit: int, size: int) -> None:
    import torch

    torch.set_num_threads(2)
    embedder = create_embedder("lite0", device="cpu", backend="torch")
    index = load_index(work / "index")
    refs = np.concatenate([entry.vectors for entry in index.brands.values()])
    products = [entry.products[i]["product_id"] for entry in index.brands.values() for i in range(len(entry.vectors))]
    with open(bench / "truth.csv", newline="", encoding="utf-8") as fh:
        truth = {row["listing_id"]: row["product_id"] for row in csv.DictReader(fh)}
    with open(bench / "listings.csv", newline="", encoding="utf-8") as fh:
        rows = [row for row in csv.DictReader(fh) if truth.get(row["listing_id"])][:limit]
    larger = dataclasses.replace(embedder.preprocess, size=size)
    cosines, same, right_crops, right_pooled, crop_s, pooled_s = [], 0, 0, 0, 0.0, 0.0
    for row in rows:
        image = decode_image((bench / row["image"]).read_bytes(), draft=embedder.decode_size)
        start = time.perf_counter()
        crops = embedder.embed_arrays(embedder.preprocess_views(listing_views(image)))
        crop_s += time.perf_counter() - start
        start = time.perf_counter()
        pooled = np.concatenate([crops[:1], pooled_windows(torch, embedder, larger(image)[None])])
        pooled_s += time.perf_counter() - start
        cosines += list((pooled[1:] * crops[1:]).sum(1))
        best_crop, best_pooled = int((crops @ refs.T).max(0).argmax()), int((pooled @ refs.T).max(0).argmax())
        same += best_crop == best_pooled
        right_crops += products[best_crop] == truth[row["listing_id"]]
        right_pooled += products[best_pooled] == truth[row["listing_id"]]
    cosines = np.array(cosines)
    print(f"{bench.name}: {len(rows)} listings of a protected product")
    print(f"  window cosine, pooled to crop: median {np.median(cosines):.3f}, 10th percentile {np.percentile(cosines, 10):.3f}")
    print(f"  same best reference over the six views: {same} / {len(rows)}")
    print(f"  right product first: crops {right_crops}, pooled {right_pooled}")
    print(f"  network ms per photo: six views {crop_s / len(rows) * 1000:.0f}; "
          f"pooled windows alone (one {size} px pass) {pooled_s / len(rows) * 1000:.0f}")


def evaluate_pooled(argv: list[str], size: int) -> int:
    import torch

    import detector.stages as stages
    from detector.stages.network import Windows
    from scripts import evaluate

    class PooledWindows(Windows):
        """The five windows pooled from one ``size`` px pass instead of five crops."""

        version = f"pooled-{size}-v1"

        def prepare(self, photo, ctx):
            photo.scratch["array"] = dataclasses.replace(ctx.embedder.preprocess, size=size)(photo.input("pixels", ctx))

        def run_batch(self, photos, ctx):
            vectors = pooled_windows(torch, ctx.embedder, np.stack([p.scratch.pop("array") for p in photos]))
            for photo in photos:
                photo.computed = True
            return [{"windows": vectors[i * 5:(i + 1) * 5]} for i in range(len(photos))]

    stages.STAGES[[s.name for s in stages.STAGES].index("windows")] = PooledWindows()
    return evaluate.main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["evaluate"]:
        return evaluate_pooled(argv[1:], SIZE)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["vectors", "evaluate"])
    parser.add_argument("bench", type=Path)
    parser.add_argument("--work", type=Path, required=True, help="an evaluate.py work folder of BENCH (its index)")
    parser.add_argument("--limit", type=int, default=80)
    parser.add_argument("--size", type=int, default=SIZE, help="the one pass's input size (a multiple of 32)")
    args = parser.parse_args(argv)
    vectors(args.bench, args.work, args.limit, args.size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
