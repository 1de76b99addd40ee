"""Stratified random samples of a scan's decisions for human review (`counterfeit sample`).

The sampling frame is every decided listing in ``OUT_DIR/decisions.jsonl`` (verdict ``flagged``
or ``clear``; ``error`` rows cannot be judged from a photo and are counted, not sampled). Strata
are (verdict, closest brand). A quarter of the sample goes to flagged strata and the rest to
clear ones (misses are rare, and they set the counterfeit rate); each side is split in
proportion to stratum size, at least two per stratum (so each stratum's variance can be
estimated). The draw is seeded, so the same scan and seed give the same sample.

Writes ``OUT_DIR/review/sample.csv`` (one row per sampled listing, with an empty ``label``
column for reviewers; text cells are neutralised against spreadsheet formulas) and
``OUT_DIR/review/design.json`` (each stratum's population and sample size, each review id's
stratum, the seed, and the SHA-256 of the decisions it was drawn from), which `counterfeit
prevalence` needs to weight the labels; reviewers may edit sample.csv in place.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.errors import UserError
from detector.outputs import csv_safe, csv_text, write_json
from index.files import AtomicText, file_sha256

REVIEW_DIR = "review"
SAMPLE_FILE = "sample.csv"
DESIGN_FILE = "design.json"
SAMPLE_COLUMNS = ("review_id", "stratum", "verdict", "brand", "listing_id", "seller_id", "image", "similarity",
                  "reasons", "label")
JUDGED = ("flagged", "clear")
MIN_PER_STRATUM = 2
FLAGGED_SHARE = 0.25


@dataclass(frozen=True)
class Frame:
    """The decided listings of one scan, by stratum: line numbers in decisions.jsonl."""

    strata: dict[str, list[int]]
    excluded: dict[str, int]


def stratum_key(decision: dict) -> str | None:
    """``verdict|brand`` for a decision that can be reviewed, None for one that cannot."""
    if decision.get("verdict") not in JUDGED:
        return None
    return f"{decision['verdict']}|{decision.get('brand') or '-'}"


def decisions_path(out_dir: Path) -> Path:
    """``OUT_DIR/decisions.jsonl``, which must exist."""
    path = Path(out_dir) / "decisions.jsonl"
    if not path.is_file():
        raise UserError(f"no decisions.jsonl in {out_dir}; run `counterfeit scan … --out {out_dir}` first")
    return path


def decisions_sha256(out_dir: Path) -> str:
    """The SHA-256 of the scan's decisions.jsonl: a sample belongs to exactly these decisions."""
    return file_sha256(decisions_path(out_dir))


def read_frame(out_dir: Path) -> Frame:
    """Every decision of the scan in ``out_dir``, grouped by stratum."""
    path = decisions_path(out_dir)
    strata: dict[str, list[int]] = {}
    excluded: dict[str, int] = {}
    with open(path, "rb") as fh:
        for line_no, line in enumerate(fh):
            try:
                decision = json.loads(line)
            except ValueError:
                raise UserError(f"{path} line {line_no + 1} is not JSON; was the scan interrupted? rerun it") from None
            key = stratum_key(decision)
            if key is None:
                verdict = str(decision.get("verdict"))
                excluded[verdict] = excluded.get(verdict, 0) + 1
            else:
                strata.setdefault(key, []).append(line_no)
    return Frame(strata=dict(sorted(strata.items())), excluded=excluded)


def allocate(populations: dict[str, int], n: int, flagged_share: float = FLAGGED_SHARE) -> dict[str, int]:
    """Sample sizes per stratum: ``flagged_share`` of n to flagged strata, the rest to clear ones
    (all of it to one side when the other is empty), in proportion to size by largest remainders,
    then each stratum raised to at least ``MIN_PER_STRATUM`` and capped at its population."""
    sides = {verdict: {k: v for k, v in populations.items() if k.startswith(verdict + "|")} for verdict in JUDGED}
    filled = [verdict for verdict in JUDGED if sides[verdict]]
    sizes: dict[str, int] = {}
    flagged_n = round(n * flagged_share) if len(filled) == 2 else n
    budget = {"flagged": flagged_n, "clear": n - flagged_n if len(filled) == 2 else n}
    for verdict in filled:
        side = sides[verdict]
        total = sum(side.values())
        quotas = {k: budget[verdict] * size / total for k, size in side.items()}
        share = {k: math.floor(q) for k, q in quotas.items()}
        for k in sorted(quotas, key=lambda k: (share[k] - quotas[k], k))[: budget[verdict] - sum(share.values())]:
            share[k] += 1
        sizes.update(share)
    return {k: min(populations[k], max(MIN_PER_STRATUM, sizes.get(k, 0))) for k in populations}


def read_sample(out_dir: Path) -> dict[str, tuple[str, str]]:
    """listing_id → (review_id, stratum) of the scan's review sample, as ``sample.csv`` holds them
    (reviewers may have edited the file in place); empty when no sample was drawn."""
    path = Path(out_dir) / REVIEW_DIR / SAMPLE_FILE
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            return {csv_text(row["listing_id"]): (row["review_id"].strip(), csv_text(row.get("stratum") or ""))
                    for row in csv.DictReader(fh) if row.get("listing_id") and (row.get("review_id") or "").strip()}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"the review sample {path} is unreadable ({exc}); draw it again with `counterfeit sample`") from None


def draw_sample(out_dir: Path, n: int, seed: int = 0, flagged_share: float = FLAGGED_SHARE) -> dict:
    """Draw the review sample of the scan in ``out_dir``; write sample.csv and design.json. Returns the design."""
    if n < 1:
        raise UserError("--n must be at least 1")
    out_dir = Path(out_dir)
    frame = read_frame(out_dir)
    if not frame.strata:
        raise UserError(f"{out_dir}/decisions.jsonl has no flagged or clear decisions to review")
    populations = {k: len(lines) for k, lines in frame.strata.items()}
    sizes = allocate(populations, n, flagged_share)
    rng = np.random.default_rng(seed)
    chosen: dict[int, str] = {}
    for key, lines in frame.strata.items():
        for line_no in rng.choice(lines, sizes[key], replace=False):
            chosen[int(line_no)] = key
    rows = []
    with open(out_dir / "decisions.jsonl", "rb") as fh:
        for line_no, line in enumerate(fh):
            if line_no in chosen:
                d = json.loads(line)
                rows.append({"review_id": f"R{len(rows) + 1:05d}", "stratum": chosen[line_no], "verdict": d["verdict"],
                             "brand": d.get("brand") or "", "listing_id": d.get("listing_id") or "",
                             "seller_id": d.get("seller_id") or "", "image": d.get("image") or "",
                             "similarity": d.get("similarity", ""), "reasons": " | ".join(d.get("reasons") or []),
                             "label": ""})
    design = {
        "seed": seed,
        "requested": n,
        "flagged_share": flagged_share,
        "sampled": len(rows),
        "decisions_sha256": decisions_sha256(out_dir),
        "excluded": frame.excluded,
        "strata": {k: {"population": populations[k], "sampled": sizes[k]} for k in populations},
        "reviews": {row["review_id"]: row["stratum"] for row in rows},
    }
    folder = out_dir / REVIEW_DIR
    folder.mkdir(exist_ok=True)
    sample = AtomicText(folder / SAMPLE_FILE, newline="")
    writer = csv.writer(sample.handle)
    writer.writerow(SAMPLE_COLUMNS)
    writer.writerows([csv_safe(row[column]) for column in SAMPLE_COLUMNS] for row in rows)
    sample.commit()
    write_json(folder / DESIGN_FILE, design)
    return design
