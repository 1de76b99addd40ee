#!/usr/bin/env python3
"""Can the whole view alone, with a level read off the catalogue's own edited photos, stop most
unprotected photos before any keypoint work without losing a flag?

For each labelled folder (an ``evaluate.py --no-screen`` work folder: its index and the decisions
of every stage on every photo) this embeds each listing's whole view and finds its closest
references, and embeds :func:`detector.augment.seller_edits` of every reference photo (what
``index build`` would see, no listing). For a folder of unprotected photos it finds their closest
references in every folder's index. It then scores these gates, each passing a photo when some
brand's best whole-view similarity reaches that brand's level:

* ``fixed L``: one level L for every brand and index (read off labels: an oracle, for comparison);
* ``edits qQ-M``: each brand's level is the Q-quantile of its references' edits' similarity to
  the brand, less M (calibrated without labels);
* every gate also passes a photo within ``screening.MARGIN`` of a brand's match threshold.

"Lost" counts the listings the full pipeline flagged (and, of those, the true fakes) that the
gate would stop; "passed" is the share of photos that would go on to the keypoint stages.

    python -m scripts.studies.catalogue_gate_study ../shared/eval-public:W1 [BENCH:WORK ...]
        --unprotected ../shared/public-unrelated [--out gate.json]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from detector.augment import seller_edits
from detector.images import decode_image, read_image_bytes
from detector.matches import open_index
from detector.screening import MARGIN
from detector.tables import image_files

QUANTILES = (0.0, 0.01, 0.02, 0.05, 0.1)
MARGINS = (0.0, 0.02, 0.05)
FIXED = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55)
CHUNK = 32


def _whole_views(embedder, images) -> np.ndarray:
    out = []
    for start in range(0, len(images), CHUNK):
        arrays = np.concatenate([embedder.preprocess_views([im]) for im in images[start:start + CHUNK]])
        out.append(embedder.embed_arrays(arrays))
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def _decode(path: Path, size: int):
    return decode_image(read_image_bytes(path), draft=size)


def _brand_best(index, vectors: np.ndarray) -> np.ndarray:
    """[n, brands]: each photo's best cosine to each brand's references."""
    columns = [(vectors @ index.brands[b].vectors.T).max(axis=1) for b in sorted(index.brands)]
    return np.stack(columns, axis=1)


def measure(bench: Path, work: Path, unprotected: list[Path]) -> dict:
    index, embedder = open_index(work / "index")
    brands = sorted(index.brands)
    size = embedder.decode_size
    rows = list(csv.DictReader(open(bench / "listings.csv", newline="", encoding="utf-8")))
    truth = {r["listing_id"]: r for r in csv.DictReader(open(bench / "truth.csv", newline="", encoding="utf-8"))}
    decisions = {d["listing_id"]: d for d in map(json.loads, (work / "scan" / "decisions.jsonl").read_text().splitlines())}
    images, ids = [], []
    for row in rows:
        try:
            images.append(_decode(bench / row["image"], size))
            ids.append(row["listing_id"])
        except Exception:  # an unreadable listing is an error either way: no gate can lose it
            continue
    listing = _brand_best(index, _whole_views(embedder, images))
    edits_best = {}
    for brand in brands:
        pictures = []
        for product in index.brands[brand].products:
            picture = _decode(Path(product["image_path"]), size)
            pictures += seller_edits(picture, product["image_sha256"])
        edits_best[brand] = _brand_best(index, _whole_views(embedder, pictures))[:, brands.index(brand)]
    other = [_brand_best(index, _whole_views(embedder, [_decode(p, size) for p in unprotected]))] if unprotected else []
    return {
        "brands": brands,
        "thresholds": [index.brands[b].threshold for b in brands],
        "ids": ids,
        "listing": listing,
        "flagged": [decisions[i]["verdict"] == "flagged" for i in ids],
        "fake": [truth[i]["should_flag"] == "1" for i in ids],
        "edits": edits_best,
        "unprotected": other[0] if other else None,
    }


def gates(found: dict) -> dict[str, np.ndarray]:
    """Each gate's level per brand."""
    out = {f"fixed {level}": np.full(len(found["brands"]), level) for level in FIXED}
    for q in QUANTILES:
        for m in MARGINS:
            out[f"edits q{q}-{m}"] = np.array([np.quantile(found["edits"][b], q) - m for b in found["brands"]])
    return out


def passes(best: np.ndarray, levels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return ((best >= levels[None]) | (best >= thresholds[None] - MARGIN)).any(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="BENCH:WORK pairs")
    parser.add_argument("--unprotected", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    unprotected = image_files(args.unprotected)[: args.limit]
    found = {}
    for pair in args.folders:
        bench, work = (Path(p) for p in pair.split(":"))
        found[bench.name] = measure(bench, work, unprotected)
        print(f"measured {bench.name}", flush=True)
    names = list(gates(next(iter(found.values()))))
    table = {}
    for gate in names:
        cells = {}
        for name, f in found.items():
            levels, thresholds = gates(f)[gate], np.array(f["thresholds"])
            through = passes(f["listing"], levels, thresholds)
            flagged, fake = np.array(f["flagged"]), np.array(f["fake"])
            cells[name] = {
                "passed": float(through.mean()),
                "flagged_lost": int((flagged & ~through).sum()),
                "fakes_lost": int((flagged & fake & ~through).sum()),
                "flagged": int(flagged.sum()),
                "unprotected_passed": float(passes(f["unprotected"], levels, thresholds).mean()),
            }
        table[gate] = cells
    print(f"{'gate':18} " + " ".join(f"{n[:14]:>30}" for n in found))
    for gate, cells in table.items():
        print(f"{gate:18} " + " ".join(
            f"{c['flagged_lost']:>3}({c['fakes_lost']})/{c['flagged']:<3} list {c['passed']:.2f} unp {c['unprotected_passed']:.3f}"
            for c in cells.values()))
    if args.out:
        args.out.write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
