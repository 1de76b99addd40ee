#!/usr/bin/env python3
"""Could a cascade skip the heavy stages on most photos? Measure the gates before building them.

The cascade of issue 18 would embed one view, search, and stop there for photos whose verdict
cannot change; only the rest would pay for the five window views, SIFT and verification. This
script measures, without changing the scanner, what such gates would let through:

* gate A, similarity alone: the best whole-view similarity at or above a level;
* gate B, the cheap local check: one view, SIFT and verification of its candidates (the five
  window views skipped), escalating a photo when some candidate has at least K matching (or
  unique) keypoints, a registered mark is seen, or the whole-view similarity is within M of the
  best candidate brand's threshold.

On each labelled folder (an ``evaluate.py`` work folder: its index, embedding cache and
``scan/decisions.jsonl``, the full pipeline's decisions) it counts the listings whose full-pipeline
state is a visual match or a veto and the flagged ones that the gate would have stopped early;
on a folder of unprotected pictures it counts the share the gate lets through.

    python scripts/gate_study.py ../shared/eval-public:eval-work [FOLDER:WORK ...]
        --unprotected DIR --against eval-work [--limit 300] [--out gates.json]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.cache import EmbeddingCache  # noqa: E402
from detector.images import ImageError, decode_image, read_image_bytes  # noqa: E402
from detector.marks import find_marks  # noqa: E402
from detector.matches import ReferenceFeatures, index_marks, open_index, search_views, to_verify, verify_hits  # noqa: E402
from detector.scanner import cache_key  # noqa: E402
from detector.tables import image_files  # noqa: E402
from detector.verify import extract_query  # noqa: E402
from detector.views import listing_views  # noqa: E402

LEVELS = (0.4, 0.45, 0.5, 0.55, 0.6)
KEYPOINTS = (3, 4, 5, 6)
MARGINS = (0.0, 0.05, 0.1, 0.2)
NOT_ACTING = (None, "no_match", "error")


def cheap_evidence(work: Path, photos: list[tuple[Path, dict]]) -> list[dict]:
    """For each (photo, decision) pair: what one view, SIFT and verification of its candidates show."""
    index, embedder = open_index(work / "index", backend="onnx")
    references, marks = ReferenceFeatures(index), index_marks(index)
    cache = EmbeddingCache(work / "cache.sqlite", cache_key(embedder), embedder.dim)
    rows = []
    for path, decision in photos:
        try:
            data = read_image_bytes(path)
            image = decode_image(data, draft=embedder.decode_size)
        except ImageError:  # an unreadable photo is an error row, not a gate question
            continue
        cached = cache.get(hashlib.sha256(data).hexdigest())
        whole = cached[0] if cached is not None and cached.ndim == 2 else None
        if whole is None:
            whole = embedder.embed_arrays(embedder.preprocess_views(listing_views(image)[:1]))[0]
        hits = search_views(index, [whole], 5)[0]
        local = extract_query(image)
        outcomes = [o for o in verify_hits(local, to_verify(index, hits), references).values() if o is not None]
        rows.append({
            "similarity": hits[0].similarity if hits else 0.0,
            "threshold": index.brands[hits[0].brand].threshold if hits else 1.0,
            "inliers": max([o.inliers for o in outcomes] or [0]),
            "unique": max([o.unique or 0 for o in outcomes] or [0]),
            "marks": len(find_marks(local.plain, marks)) if marks else 0,
            "state": decision.get("visual_state"), "verdict": decision.get("verdict"),
        })
    cache.close()
    return rows


def labelled(folder: Path, work: Path) -> list[tuple[Path, dict]]:
    decisions = {}
    with open(work / "scan" / "decisions.jsonl", encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            decisions[d["listing_id"]] = d
    with open(folder / "listings.csv", encoding="utf-8", newline="") as fh:
        return [(folder / r["image"], decisions.get(r["listing_id"], {})) for r in csv.DictReader(fh)]


def escalates(row: dict, keypoints: int, margin: float) -> bool:
    return (row["inliers"] >= keypoints or row["unique"] >= keypoints or row["marks"] > 0
            or row["similarity"] >= row["threshold"] - margin)


def table(evidence: dict[str, list[dict]], unprotected: list[dict]) -> list[dict]:
    """One line per gate: what it stops on each labelled folder and lets through of the unprotected."""
    gates = [("similarity", level, lambda r, level=level: r["similarity"] >= level) for level in LEVELS]
    gates += [("local", f"K={k} M={m}", lambda r, k=k, m=m: escalates(r, k, m)) for k in KEYPOINTS for m in MARGINS]
    lines = []
    for kind, setting, passes in gates:
        line = {"gate": kind, "setting": setting,
                "unprotected_let_through": round(sum(map(passes, unprotected)) / max(1, len(unprotected)), 3)}
        for name, rows in evidence.items():
            acting = [r for r in rows if r["state"] not in NOT_ACTING]
            flagged = [r for r in rows if r["verdict"] == "flagged"]
            line[name] = {"acting_stopped": sum(not passes(r) for r in acting), "acting": len(acting),
                          "flagged_stopped": sum(not passes(r) for r in flagged), "flagged": len(flagged)}
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", nargs="+", help="FOLDER:WORK, a labelled folder and its evaluate.py work folder")
    parser.add_argument("--unprotected", type=Path, required=True, help="a folder of pictures no brand protects")
    parser.add_argument("--against", type=Path, required=True, help="the work folder whose index they are searched in")
    parser.add_argument("--limit", type=int, default=300, help="unprotected pictures to try")
    parser.add_argument("--out", type=Path, default=Path("gates.json"))
    args = parser.parse_args(argv)
    evidence = {}
    for pair in args.pairs:
        folder, work = (Path(p) for p in pair.split(":", 1))
        evidence[folder.name] = cheap_evidence(work, labelled(folder, work))
        print(f"{folder.name}: {len(evidence[folder.name])} photos", flush=True)
    pictures = image_files(args.unprotected)
    pictures = [pictures[i] for i in np.linspace(0, len(pictures) - 1, min(args.limit, len(pictures))).astype(int)]
    unprotected = cheap_evidence(args.against, [(p, {}) for p in pictures])
    lines = table(evidence, unprotected)
    args.out.write_text(json.dumps({"unprotected": len(unprotected), "gates": lines}, indent=1))
    for line in lines:
        cells = [f"{name} stops {v['acting_stopped']}/{v['acting']} acting, {v['flagged_stopped']}/{v['flagged']} flagged"
                 for name, v in line.items() if isinstance(v, dict)]
        print(f"{line['gate']:10} {line['setting']:14} lets through {line['unprotected_let_through']:.1%} of unprotected;",
              "; ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
