#!/usr/bin/env python3
"""Measure the statistics of real photo embeddings that scripts/bench.py's synthetic vectors copy.

    python -m scripts.studies.embedding_stats PHOTO_DIR [PHOTO_DIR ...] [--embedder lite0]

Embeds every photo's listing views (the vectors a scan searches with) and prints: the norm of
the mean vector (the component all photos share), the mean cosine of unrelated pairs, the share
of variance in the top principal directions, and the slope of a power-law fit to the variance
spectrum. bench.py's VectorModel takes SPECTRUM_SLOPE and the shares from this output, run on
eval-public's listings and refs folders.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


from detector.embedders import create_embedder
from detector.images import decode_image
from detector.views import listing_views

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def embed_folder_views(folders: list[Path], embedder_name: str, batch: int = 16) -> np.ndarray:
    """Every listing view of every photo under ``folders``, embedded: [n_views, d]."""
    embedder = create_embedder(embedder_name, device="cpu")
    embedder.use_onnx()
    paths = sorted(p for folder in folders for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    if not paths:
        raise SystemExit(f"no photos under {', '.join(map(str, folders))}")
    out = []
    for start in range(0, len(paths), batch):
        views = [view for path in paths[start : start + batch] for view in listing_views(decode_image(path.read_bytes()))]
        out.append(embedder.embed(views))
    return np.concatenate(out)


def spectrum_stats(vectors: np.ndarray, pairs: int = 1500) -> dict:
    """Mean-vector norm, unrelated-pair cosine, variance shares and power-law slopes of ``vectors``."""
    mean = vectors.mean(axis=0)
    sample = vectors[np.random.default_rng(0).choice(len(vectors), min(pairs, len(vectors)), replace=False)]
    cosines = (sample @ sample.T)[np.triu_indices(len(sample), 1)]
    variance = np.sort(np.linalg.eigvalsh(np.cov((vectors - mean).T)))[::-1]
    share = np.cumsum(variance) / variance.sum()
    ranks = np.arange(1, len(variance) + 1)
    usable = min(len(vectors) - 1, len(variance))
    slopes = {f"{a}-{b}": round(float(-np.polyfit(np.log(ranks[a - 1 : b]), np.log(variance[a - 1 : b]), 1)[0]), 2)
              for a, b in ((5, 100), (10, 400), (100, 800)) if b <= usable}
    return {
        "vectors": len(vectors),
        "mean_vector_norm": round(float(np.linalg.norm(mean)), 3),
        "pair_cosine_mean": round(float(cosines.mean()), 3),
        "variance_share_top": {k: round(float(share[k - 1]), 3) for k in (10, 50, 200) if k <= len(share)},
        "power_law_slope": slopes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="folders of photos (searched recursively)")
    parser.add_argument("--embedder", default="lite0", help="embedder name (default lite0)")
    args = parser.parse_args(argv)
    stats = spectrum_stats(embed_folder_views(args.folders, args.embedder))
    for key, value in stats.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
