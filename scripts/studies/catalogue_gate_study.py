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
  the brand, less M (calibrated without labels; a brand with under 20 edits uses every brand's);
* ``centred edits qQ-M``: the same on vectors centred on the catalogue's mean reference;
* ``reference min-M``: each reference's own level, the lowest similarity of its edits to it, less M;
* every gate also passes a photo within ``screening.MARGIN`` of a brand's match threshold.

"Lost" counts the listings the full pipeline flagged (and, of those, the true fakes) that the
gate would stop; "passed" is the share of photos that would go on to the keypoint stages.

    python -m scripts.studies.catalogue_gate_study ../shared/eval-public:W1 [BENCH:WORK ...]
        --unprotected ../shared/public-unrelated [--out gate.json] [--vectors DIR] [--brand-split]
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


def _embedded(store: Path | None, name: str, make) -> np.ndarray:
    """``make()``'s vectors, kept in ``store`` (when given) under ``name`` for the next run."""
    path = store / f"{name}.npy" if store else None
    if path is not None and path.is_file():
        return np.load(path)
    vectors = make()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return vectors


def _best(vectors: np.ndarray, refs: dict[str, np.ndarray]) -> np.ndarray:
    """[n, brands]: each photo's best cosine to each brand's references."""
    return np.stack([(vectors @ r.T).max(axis=1) for r in refs.values()], axis=1)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def measure(bench: Path, work: Path, unprotected: list[Path], store: Path | None = None) -> dict:
    """The folder's whole views (listings, reference edits, the unprotected photos) and labels."""
    index, embedder = open_index(work / "index")
    brands = sorted(index.brands)
    size = embedder.decode_size
    rows = list(csv.DictReader(open(bench / "listings.csv", newline="", encoding="utf-8")))
    truth = {r["listing_id"]: r for r in csv.DictReader(open(bench / "truth.csv", newline="", encoding="utf-8"))}
    decisions = {d["listing_id"]: d for d in map(json.loads, (work / "scan" / "decisions.jsonl").read_text().splitlines())}
    readable = []
    for row in rows:
        try:
            _decode(bench / row["image"], size)
            readable.append(row)
        except Exception:  # an unreadable listing is an error either way: no gate can lose it
            continue
    ids = [row["listing_id"] for row in readable]
    folder = store / bench.name if store else None

    def edits(brand: str) -> np.ndarray:
        pictures = []
        for product in index.brands[brand].products:
            pictures += seller_edits(_decode(Path(product["image_path"]), size), product["image_sha256"])
        return _whole_views(embedder, pictures)

    return {
        "refs": {b: index.brands[b].vectors for b in brands},
        "thresholds": np.array([index.brands[b].threshold for b in brands]),
        "listing": _embedded(folder, "listings", lambda: _whole_views(
            embedder, [_decode(bench / row["image"], size) for row in readable])),
        "edits": {b: _embedded(folder, f"edits-{b}", lambda b=b: edits(b)) for b in brands},
        "unprotected": _embedded(store, "unprotected", lambda: _whole_views(
            embedder, [_decode(p, size) for p in unprotected])),
        "ids": ids,
        "flagged": np.array([decisions[i]["verdict"] == "flagged" for i in ids]),
        "fake": np.array([truth[i]["should_flag"] == "1" for i in ids]),
    }


def _brand_levels(found: dict, q: float, m: float, centre: np.ndarray | None = None):
    """A gate of per-brand levels from the edits (scores centred on ``centre`` when given)."""
    refs = found["refs"] if centre is None else {b: _unit(r - centre) for b, r in found["refs"].items()}
    seen = (lambda x: x) if centre is None else (lambda x: _unit(x - centre))
    edits = [_best(seen(found["edits"][b]), refs)[:, i] for i, b in enumerate(refs)]
    pooled = np.concatenate(edits)
    levels = np.array([np.quantile(e if len(e) >= 20 else pooled, q) - m for e in edits])
    return lambda x: (_best(seen(x), refs) >= levels[None]).any(axis=1)


def _reference_levels(found: dict, m: float):
    """A gate of per-reference levels: the lowest similarity of a reference's own edits to it."""
    refs = np.concatenate(list(found["refs"].values()))
    edits = np.concatenate(list(found["edits"].values())).reshape(len(refs), -1, refs.shape[1])
    levels = np.einsum("red,rd->re", edits, refs).min(axis=1) - m
    return lambda x: ((x @ refs.T) >= levels[None]).any(axis=1)


def gates(found: dict) -> dict:
    """Each gate: a function from whole views [n, d] to whether each photo passes the level."""
    out = {f"fixed {level}": (lambda x, level=level: (_best(x, found["refs"]) >= level).any(axis=1)) for level in FIXED}
    for q in QUANTILES:
        for m in MARGINS:
            out[f"edits q{q}-{m}"] = _brand_levels(found, q, m)
    centre = np.concatenate(list(found["refs"].values())).mean(axis=0)
    for q, m in ((0.0, 0.0), (0.05, 0.0), (0.1, 0.0)):
        out[f"centred edits q{q}-{m}"] = _brand_levels(found, q, m, centre)
    for m in (0.0, 0.02, 0.05):
        out[f"reference min-{m}"] = _reference_levels(found, m)
    return out


def passes(gate, vectors: np.ndarray, found: dict) -> np.ndarray:
    """Whether each photo passes: the gate, or within MARGIN of a brand's threshold."""
    near = (_best(vectors, found["refs"]) >= found["thresholds"][None] - MARGIN).any(axis=1)
    return gate(vectors) | near


def brand_split(bench: Path, found: dict) -> None:
    """Fit the edits rule (the fewest unprotected photos let through with no flag lost) on every
    other brand of one folder, and score it on the rest; then the other way round."""
    truth = {r["listing_id"]: r["brand"] for r in csv.DictReader(open(bench / "truth.csv", newline="", encoding="utf-8"))}
    brand_of = np.array([truth[i] for i in found["ids"]])
    brands = list(found["refs"])
    for half in (brands[::2], brands[1::2]):
        rest = [b for b in brands if b not in half]
        scored = []
        for q in QUANTILES:
            for m in MARGINS:
                gate = _brand_levels(found, q, m)
                lost = found["flagged"] & ~passes(gate, found["listing"], found)
                scored.append((int((lost & np.isin(brand_of, half)).sum()), passes(gate, found["unprotected"], found).mean(),
                               q, m, int((lost & np.isin(brand_of, rest)).sum())))
        _, through, q, m, lost_rest = min(row for row in scored if row[0] == 0)
        print(f"fitted on {', '.join(half)}: q{q}-{m}, unprotected let through {through:.3f}, "
              f"flags lost on the other brands {lost_rest} of {int((found['flagged'] & np.isin(brand_of, rest)).sum())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="BENCH:WORK pairs")
    parser.add_argument("--unprotected", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--vectors", type=Path, help="keep the embedded whole views here, for a rerun")
    parser.add_argument("--brand-split", action="store_true",
                        help="also fit the edits rule on half of each folder's brands and score it on the other half")
    args = parser.parse_args()
    unprotected = image_files(args.unprotected)[: args.limit]
    found = {}
    for pair in args.folders:
        bench, work = (Path(p) for p in pair.split(":"))
        found[bench.name] = measure(bench, work, unprotected, args.vectors)
        print(f"measured {bench.name}", flush=True)
    built = {name: gates(f) for name, f in found.items()}
    table = {}
    for gate in next(iter(built.values())):
        cells = {}
        for name, f in found.items():
            through = passes(built[name][gate], f["listing"], f)
            flagged, fake = f["flagged"], f["fake"]
            cells[name] = {
                "passed": float(through.mean()),
                "flagged_lost": int((flagged & ~through).sum()),
                "fakes_lost": int((flagged & fake & ~through).sum()),
                "flagged": int(flagged.sum()),
                "unprotected_passed": float(passes(built[name][gate], f["unprotected"], f).mean()),
            }
        table[gate] = cells
    print(f"{'gate':18} " + " ".join(f"{n[:14]:>30}" for n in found))
    for gate, cells in table.items():
        print(f"{gate:18} " + " ".join(
            f"{c['flagged_lost']:>3}({c['fakes_lost']})/{c['flagged']:<3} list {c['passed']:.2f} unp {c['unprotected_passed']:.3f}"
            for c in cells.values()))
    if args.brand_split:
        for pair in args.folders:
            bench = Path(pair.split(":")[0])
            brand_split(bench, found[bench.name])
    if args.out:
        args.out.write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
