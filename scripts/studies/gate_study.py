#!/usr/bin/env python3
"""Could a cascade skip the heavy stages on most photos? Measure the gates before building them.

The cascade of issue 18 would embed one view, search, and stop there for photos whose verdict
cannot change; only the rest would pay for the five window views, SIFT and verification. This
script measures, without changing the scanner, what such gates would let through:

* gate A, similarity alone: the best whole-view similarity at or above a level;
* gate B, the cheap local check: one view, SIFT and verification of its candidates (the five
  window views skipped), escalating a photo when some candidate has at least K matching (or
  unique) keypoints, a registered mark is seen, or the whole-view similarity is within M of the
  best candidate brand's threshold;
* for comparison, the same check on the candidates of all six views (what B would do if one view
  found the right references);
* gate C, the same SIFT features fitted to the whole view's ten closest references;
* gate D, SIFT on the photo at 320 px instead of 512 (cheaper), ten references;
* gate E, ORB (OpenCV's FAST corners and binary descriptors: 500 at 320 px, or 1,000 at 512 px;
  a few milliseconds) fitted to the same ten references' ORB features and to the marks'.

It also times, per photo in this one process, each stage such a first stage would pay.

On each labelled folder (an ``evaluate.py`` work folder: its index, embedding cache and
``scan/decisions.jsonl``, the full pipeline's decisions) it counts the listings whose full-pipeline
state is a visual match or a veto and the flagged ones that the gate would have stopped early;
on a folder of unprotected pictures it counts the share the gate lets through.

    python -m scripts.studies.gate_study ../shared/eval-public:eval-work [FOLDER:WORK ...]
        --unprotected DIR --against eval-work [--limit 300] [--out gates.json]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image


from detector import verify
from detector.cache import EmbeddingCache
from detector.images import ImageError, decode_image, read_image_bytes
from detector.marks import find_marks
from detector.matches import ReferenceFeatures, index_marks, open_index, search_views, to_verify, verify_hits
from detector.scanner import cache_key
from detector.tables import image_files
from detector.views import listing_views

LEVELS = (0.4, 0.45, 0.5, 0.55, 0.6)
KEYPOINTS = (3, 4, 5, 6)
MARGINS = (0.0, 0.05, 0.1, 0.2)
NOT_ACTING = (None, "no_match", "error")
TEN = 10
"""References the wider local checks (gates C-E) fit: the whole view's closest ten."""
SMALL_SIDE = 320
"""Gate D's SIFT size (the scanner's is verify.MAX_SIDE, 512)."""
ORB_SETTINGS = ((320, 500), (512, 1000))
"""(longer side in pixels, features) of the ORB checks."""


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


class Orb:
    """ORB features of a photo and its mirror, fitted to references' and marks' ORB features the
    way the scanner fits SIFT: ratio test, one match per reference keypoint, a RANSAC similarity."""

    def __init__(self, side: int, features: int):
        import cv2

        self.cv2, self.side, self.name = cv2, side, f"orb{side}"
        self.orb = cv2.ORB_create(nfeatures=features)
        self.matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
        self.known: dict[tuple[str, bool], tuple] = {}

    def grey(self, image: Image.Image) -> np.ndarray:
        grey = image.convert("L")
        scale = self.side / max(grey.size)
        return np.asarray(grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))),
                                      Image.BILINEAR))

    def features(self, grey: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        keypoints, descriptors = self.orb.detectAndCompute(np.ascontiguousarray(grey), None)
        return np.float32([k.pt for k in keypoints]).reshape(-1, 2), descriptors

    def of_file(self, path: str, inverted: bool = False) -> tuple:
        """A reference's or a mark's features (transparency flattened on white), memoised."""
        if (path, inverted) not in self.known:
            with Image.open(path) as opened:
                rgba = opened.convert("RGBA")
            flat = Image.new("RGB", rgba.size, "white")
            flat.paste(rgba, mask=rgba.getchannel("A"))
            grey = self.grey(flat)
            self.known[(path, inverted)] = self.features(255 - grey if inverted else grey)
        return self.known[(path, inverted)]

    def inliers(self, query: tuple, reference: tuple) -> int:
        (query_points, query_descriptors), (reference_points, reference_descriptors) = query, reference
        if query_descriptors is None or reference_descriptors is None or min(len(query_points), len(reference_points)) < 4:
            return 0
        best: dict[int, tuple[int, float]] = {}
        for pair in self.matcher.knnMatch(query_descriptors, reference_descriptors, k=2):
            if len(pair) == 2 and pair[0].distance < verify.RATIO * pair[1].distance:
                j = pair[0].trainIdx
                if j not in best or pair[0].distance < best[j][1]:
                    best[j] = (pair[0].queryIdx, pair[0].distance)
        if len(best) < 4:
            return 0
        source = reference_points[list(best)]
        transform, mask = self.cv2.estimateAffinePartial2D(
            source, query_points[[q for q, _ in best.values()]], method=self.cv2.RANSAC,
            ransacReprojThreshold=verify.RANSAC_PIXELS * self.side / verify.MAX_SIDE)
        if transform is None or not 0.1 < float(np.sqrt(abs(np.linalg.det(transform[:, :2])))) < 10:
            return 0
        return len({tuple(point) for point in np.round(source[mask.ravel().astype(bool)])})


def _layout_best(query: verify.QueryFeatures, references: list) -> int:
    """The most keypoints in one layout between the photo (either way round) and any reference."""
    return max([query.best_layout(r) for r in references if r is not None] or [0])


def cheap_evidence(work: Path, photos: list[tuple[Path, dict]]) -> list[dict]:
    """For each (photo, decision) pair: what each gate's first stage shows, and what it costs."""
    index, embedder = open_index(work / "index", backend="onnx")
    references, marks = ReferenceFeatures(index), index_marks(index)
    mark_files = [m["image_path"] for entry in index.brands.values() for m in entry.marks]
    orbs = [Orb(side, count) for side, count in ORB_SETTINGS]
    cache = EmbeddingCache(work / "cache.sqlite", cache_key(embedder), embedder.dim)
    rows = []
    for path, decision in photos:
        try:
            data = read_image_bytes(path)
            image = decode_image(data, draft=embedder.decode_size)
        except ImageError:  # an unreadable photo is an error row, not a gate question
            continue
        views = cache.get(hashlib.sha256(data).hexdigest())
        if views is None or views.ndim != 2 or len(views) < 2:
            views = embedder.embed_arrays(embedder.preprocess_views(listing_views(image)))
        hits = search_views(index, [views[0]], TEN)[0]
        ten = [references.get(hit) for hit in hits]
        row: dict = {"similarity": hits[0].similarity if hits else 0.0,
                     "threshold": index.brands[hits[0].brand].threshold if hits else 1.0,
                     "state": decision.get("visual_state"), "verdict": decision.get("verdict")}
        started = time.perf_counter()
        local = verify.extract_query(image)
        row["sift_ms"] = _ms(started)
        started = time.perf_counter()
        outcomes = [o for o in verify_hits(local, to_verify(index, hits[:5]), references).values() if o is not None]
        row["verify_ms"] = _ms(started)
        row["inliers"] = max([o.inliers for o in outcomes] or [0])
        row["unique"] = max([o.unique or 0 for o in outcomes] or [0])
        row["marks"] = len(find_marks(local.plain, marks)) if marks else 0
        six = verify_hits(local, to_verify(index, search_views(index, [views], 5)[0]), references).values()
        row["six"] = max([max(o.inliers, o.unique or 0) for o in six if o is not None] or [0])
        started = time.perf_counter()
        row["ten"] = _layout_best(local, ten)
        row["layout_ten_ms"] = _ms(started)
        started = time.perf_counter()
        small = verify.extract_query(image, SMALL_SIDE)
        row["sift320_ms"] = _ms(started)
        row["sift320"] = _layout_best(small, ten)
        row["sift320_marks"] = len(find_marks(small.plain, marks)) if marks else 0
        for orb in orbs:
            started = time.perf_counter()
            grey = orb.grey(image)
            photo, mirror = orb.features(grey), orb.features(grey[:, ::-1])
            row[f"{orb.name}_ms"] = _ms(started)
            started = time.perf_counter()
            files = [index.product(hit)["image_path"] for hit in hits]
            row[orb.name] = max([max(orb.inliers(photo, orb.of_file(f)), orb.inliers(mirror, orb.of_file(f)))
                                 for f in files] or [0])
            row[f"{orb.name}_marks"] = max([max(orb.inliers(photo, orb.of_file(f)), orb.inliers(photo, orb.of_file(f, True)))
                                            for f in mark_files] or [0])
            row[f"{orb.name}_match_ms"] = _ms(started)
        rows.append(row)
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


GATES = {
    "B": "one view + SIFT, its closest verified",
    "six": "six views + SIFT, their closest verified (for comparison)",
    "C": "one view + SIFT, layouts with its closest 10",
    "D": f"one view + SIFT at {SMALL_SIDE} px, layouts with its closest 10",
    **{f"orb{side}": f"one view + ORB {count} at {side} px, layouts with its closest 10 and the marks"
       for side, count in ORB_SETTINGS},
}


def escalates(row: dict, keypoints: int, margin: float, kind: str = "B") -> bool:
    """Whether gate ``kind`` sends the photo on: at least ``keypoints`` in one layout, a mark, or
    a whole-view similarity within ``margin`` of the closest brand's threshold."""
    if row["similarity"] >= row["threshold"] - margin:
        return True
    if kind == "B":
        return row["inliers"] >= keypoints or row["unique"] >= keypoints or row["marks"] > 0
    if kind == "six":
        return row["six"] >= keypoints or row["marks"] > 0
    if kind == "C":
        return row["ten"] >= keypoints or row["marks"] > 0
    if kind == "D":
        return row["sift320"] >= keypoints or row["sift320_marks"] > 0
    return row[kind] >= keypoints or row[f"{kind}_marks"] >= keypoints


def table(evidence: dict[str, list[dict]], unprotected: list[dict]) -> list[dict]:
    """One line per gate: what it stops on each labelled folder and lets through of the unprotected."""
    gates = [("A: whole-view similarity", f">= {level}", lambda r, level=level: r["similarity"] >= level)
             for level in LEVELS]
    gates += [(f"{kind}: {GATES[kind]}", f"K={k} M={m}", lambda r, k=k, m=m, kind=kind: escalates(r, k, m, kind))
              for kind in GATES for k in KEYPOINTS for m in MARGINS]
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


def study_arguments(argv: list[str] | None, doc: str, out: str) -> argparse.Namespace:
    """The arguments a gate study takes: labelled FOLDER:WORK pairs, unprotected pictures, the
    work folder whose index those are searched in, how many, and the JSON to write."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", nargs="+", help="FOLDER:WORK, a labelled folder and its evaluate.py work folder")
    parser.add_argument("--unprotected", type=Path, required=True, help="a folder of pictures no brand protects")
    parser.add_argument("--against", type=Path, required=True, help="the work folder whose index they are searched in")
    parser.add_argument("--limit", type=int, default=300, help="unprotected pictures to try")
    parser.add_argument("--out", type=Path, default=Path(out))
    args = parser.parse_args(argv)
    args.pairs = [tuple(Path(p) for p in pair.split(":", 1)) for pair in args.pairs]
    pictures = image_files(args.unprotected)
    args.pictures = [pictures[i] for i in np.linspace(0, len(pictures) - 1, min(args.limit, len(pictures))).astype(int)]
    return args


def main(argv: list[str] | None = None) -> int:
    args = study_arguments(argv, __doc__, "gates.json")
    evidence = {}
    for folder, work in args.pairs:
        evidence[folder.name] = cheap_evidence(work, labelled(folder, work))
        print(f"{folder.name}: {len(evidence[folder.name])} photos", flush=True)
    unprotected = cheap_evidence(args.against, [(p, {}) for p in args.pictures])
    lines = table(evidence, unprotected)
    costs = {key: round(float(np.median([r[key] for r in unprotected])), 1) for key in unprotected[0] if key.endswith("_ms")}
    args.out.write_text(json.dumps({"unprotected": len(unprotected), "gates": lines, "median_ms": costs}, indent=1))
    for line in lines:
        cells = [f"{name} stops {v['acting_stopped']}/{v['acting']} acting, {v['flagged_stopped']}/{v['flagged']} flagged"
                 for name, v in line.items() if isinstance(v, dict)]
        print(f"{line['gate']} [{line['setting']}] lets through {line['unprotected_let_through']:.1%} of unprotected;",
              "; ".join(cells))
    print("median ms per unprotected picture, in this one process:", costs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
