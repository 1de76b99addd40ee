#!/usr/bin/env python3
"""Score the detector on a labelled benchmark folder (e.g. ../shared/eval-public).

It builds the index from BENCH_DIR/catalog.csv and authorized.csv (and marks.csv when the folder
has one, unless --no-marks), scans listings.csv through the
library's front door (detector.build_index, Detector.scan), and compares decisions.jsonl with truth.csv (which the detector never
reads). It prints a table and writes metrics.json into the work folder.

    python scripts/evaluate.py ../shared/eval-public [--work eval-work] [--policy P.toml] [--sweep] [--sweep-verify]
                                                     [--sweep-colour] [--brand-split K] [--profile] [--no-screen]

--brand-split K reports what the constants the project chose by looking at a folder are worth on
brands they were not chosen on: the folder's brands go into K groups, and each group is decided
under the setting (of SPLIT_GRID) that scores best on the other groups' listings.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable


from detector import Detector, build_index
from detector.profile import StageClock


def precision_recall_f1(predicted: list[bool], actual: list[bool]) -> dict:
    """Precision, recall and F1 of binary flags (0 where undefined)."""
    tp = sum(p and a for p, a in zip(predicted, actual))
    fp = sum(p and not a for p, a in zip(predicted, actual))
    fn = sum(a and not p for p, a in zip(predicted, actual))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def recall_at_k(ranked: list[list[str]], truth: list[str], k: int) -> float:
    """Share of queries whose true item is among their first ``k`` ranked items."""
    if not truth:
        return 0.0
    return sum(t in r[:k] for r, t in zip(ranked, truth)) / len(truth)


def micro_average_precision(predictions: list[tuple[str, str, float]], truth: dict[str, str]) -> float:
    """µAP as in the Image Similarity Challenge: all (query, reference, score) predictions ranked
    together by score; precision is averaged at each correct pair, divided by the number of
    queries that have a true reference."""
    positives = len(truth)
    if positives == 0:
        return 0.0
    seen: set[tuple[str, str]] = set()
    correct = 0
    total = 0.0
    for rank, (query, ref, _) in enumerate(sorted(predictions, key=lambda p: -p[2]), start=1):
        if (query, ref) in seen:
            continue
        seen.add((query, ref))
        if truth.get(query) == ref:
            correct += 1
            total += correct / rank
    return total / positives


def score(decisions: list[dict], truth_rows: list[dict]) -> dict:
    """All benchmark metrics from decisions.jsonl records and truth.csv rows."""
    by_id = {d["listing_id"]: d for d in decisions}
    missing = [t["listing_id"] for t in truth_rows if t["listing_id"] not in by_id]
    predicted = [by_id.get(t["listing_id"], {}).get("verdict") == "flagged" for t in truth_rows]
    actual = [t["should_flag"] == "1" for t in truth_rows]
    result = precision_recall_f1(predicted, actual)
    derived = [t for t in truth_rows if t.get("product_id")]
    ranked = [[m["product_id"] for m in by_id.get(t["listing_id"], {}).get("matches", [])] for t in derived]
    product_truth = [t["product_id"] for t in derived]
    result["recall_at_1"] = recall_at_k(ranked, product_truth, 1)
    result["recall_at_5"] = recall_at_k(ranked, product_truth, 5)
    predictions = [
        (d["listing_id"], m["product_id"], m["similarity"]) for d in decisions for m in d.get("matches", [])
    ]
    result["micro_ap"] = micro_average_precision(predictions, {t["listing_id"]: t["product_id"] for t in derived})
    kinds: dict[str, list[bool]] = defaultdict(list)
    for p, a, t in zip(predicted, actual, truth_rows):
        kinds[t["kind"]].append(p == a)
    result["per_kind_accuracy"] = {k: sum(v) / len(v) for k, v in sorted(kinds.items())}
    afp = [p for p, t in zip(predicted, truth_rows) if t["kind"] == "authorized_fullprice"]
    result["false_flag_rate_authorized_fullprice"] = sum(afp) / len(afp) if afp else 0.0
    result["listings"] = len(truth_rows)
    result["missing_decisions"] = len(missing)
    return result


OFFSETS = (-0.10, -0.05, -0.02, 0.0, 0.02, 0.05, 0.10)
THRESHOLD_SWEEP = [(f"{o:+.2f}", {"match": {"threshold_offset": o}}) for o in OFFSETS]
VERIFY_SWEEP = [
    (f"confirm {c:>2}, min_alignment {a:.2f}", {"verify": {"confirm_inliers": c, "min_alignment": a}})
    for c in (6, 8, 10)
    for a in (0.65, 0.75, 0.85)
]
COLOUR_SWEEP = [
    (f"colour_weight {w:>4.0f}, colour_ratio {r:.1f}", {"product": {"colour_weight": w, "colour_ratio": r}})
    for r in (0.3, 0.5)
    for w in (0.0, 8.0, 16.0, 24.0, 32.0, 64.0)
]


def sweep(scan: Callable[[Path | None], None], scan_dir: Path, work: Path, policy: Path | None,
          truth_rows: list[dict], settings: list[tuple[str, dict]]) -> dict:
    """Precision, recall and F1 of the same scan re-decided under each policy change in
    ``settings`` (label, {section: {key: value}}); the scan state is reused, so nothing is
    embedded again."""
    base = policy.read_text() if policy else ""
    results = {}
    for label, changes in settings:
        changed = work / "sweep-policy.toml"
        changed.write_text(with_keys(base, changes))
        scan(changed)
        result = score(read_decisions(scan_dir), truth_rows)
        results[label] = {k: result[k] for k in ("precision", "recall", "f1", "recall_at_1")}
    scan(policy)  # leave the scan's outputs as the unchanged policy made them
    return results


SPLIT_GRID = [
    (f"offset {o:+.2f}, confirm {c}, product inliers {n}, colour_weight {w:.0f}, colour_ratio {r:.1f}",
     {"match": {"threshold_offset": o}, "verify": {"confirm_inliers": c},
      "product": {"inliers": f'"{n}"' if n == "calibrated" else n, "colour_weight": w, "colour_ratio": r}})
    for o in (-0.05, 0.0, 0.05) for c in (6, 8, 10) for n in ("calibrated", 5, 7) for w in (0.0, 24.0)
    for r in (0.3, 0.5)
]
"""The constants a brand-split run chooses: every combination of the policy keys the project chose
by looking at a folder (the thresholds' offset, the keypoints that confirm a match, the keypoints a
new photo needs, the colour rule among siblings), each re-decided from the same scan."""
SHIPPED = "offset +0.00, confirm 8, product inliers calibrated, colour_weight 24, colour_ratio 0.3"
"""The grid's setting that the default policy ships: preferred on a tie."""


def brand_groups(truth_rows: list[dict], groups: int) -> dict[str, int]:
    """Each listing's group for a brand split: the folder's brands, sorted, are dealt round-robin
    into ``groups`` groups and a listing goes with its true brand; a listing of no brand (an
    unrelated photo, another company's product) goes to a group chosen by a hash of its id."""
    brands = sorted({t["brand"] for t in truth_rows if t.get("brand")})
    if len(brands) < groups:
        raise SystemExit(f"--brand-split {groups}: the folder has only {len(brands)} brands")
    group_of = {brand: i % groups for i, brand in enumerate(brands)}
    return {t["listing_id"]: group_of[t["brand"]] if t.get("brand")
            else int(hashlib.sha256(t["listing_id"].encode()).hexdigest(), 16) % groups for t in truth_rows}


def brand_split(scan: Callable[[Path | None], None], scan_dir: Path, work: Path, policy: Path | None,
                truth_rows: list[dict], groups: int, grid: list[tuple[str, dict]] = SPLIT_GRID) -> dict:
    """Fit on some brands, report on the others: the same scan re-decided under every setting of
    ``grid``; for each group of brands, the setting with the best F1 on the other groups'
    listings (on a tie, the better right-product-first, then the shipped setting, then the first in
    grid order) is chosen, and its decisions on the group's own listings are kept. The kept
    decisions of all groups are scored together, as one folder."""
    group = brand_groups(truth_rows, groups)
    base = policy.read_text() if policy else ""
    decided = []
    for label, changes in grid:
        changed = work / "sweep-policy.toml"
        changed.write_text(with_keys(base, changes))
        scan(changed)
        decided.append({d["listing_id"]: d for d in read_decisions(scan_dir)})
    scan(policy)  # leave the scan's outputs as the unchanged policy made them
    kept, folds = [], []
    for g in range(groups):
        fit = [t for t in truth_rows if group[t["listing_id"]] != g]
        held = [t for t in truth_rows if group[t["listing_id"]] == g]
        fitted = [score(list(by_id.values()), fit) for by_id in decided]
        best = max(range(len(grid)), key=lambda i: (fitted[i]["f1"], fitted[i]["recall_at_1"], grid[i][0] == SHIPPED, -i))
        kept += [decided[best][t["listing_id"]] for t in held if t["listing_id"] in decided[best]]
        result = score([decided[best][t["listing_id"]] for t in held if t["listing_id"] in decided[best]], held)
        folds.append({"held_brands": sorted({t["brand"] for t in held if t.get("brand")}), "chosen": grid[best][0],
                      "fit_f1": round(fitted[best]["f1"], 4), "held_f1": round(result["f1"], 4),
                      "held_listings": len(held)})
    pooled = score(kept, truth_rows)
    return {"groups": folds, **{k: pooled[k] for k in ("precision", "recall", "f1", "recall_at_1",
                                                       "false_flag_rate_authorized_fullprice")}}


def with_keys(policy_text: str, changes: dict[str, dict]) -> str:
    """``policy_text`` with each {section: {key: value}} set (the keys must not be in it already)."""
    for section, values in changes.items():
        lines = "".join(f"\n{key} = {value}" for key, value in values.items())
        header = f"[{section}]"
        if header in policy_text:
            policy_text = policy_text.replace(header, header + lines, 1)
        else:
            policy_text += f"\n{header}{lines}\n"
    return policy_text


def read_decisions(scan_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (scan_dir / "decisions.jsonl").read_text().splitlines()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", type=Path, help="folder with catalog.csv, authorized.csv, listings.csv, truth.csv")
    parser.add_argument("--work", type=Path, default=Path("eval-work"), help="where the index and scan go")
    parser.add_argument("--policy", type=Path, help="policy TOML passed to the scan")
    parser.add_argument("--embedder", default="lite0")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--keep-cache", action="store_true", help="reuse the embedding cache of an earlier run")
    parser.add_argument("--no-verify", action="store_true", help="scan without geometric verification")
    parser.add_argument("--no-screen", action="store_true", help="run every stage on every photo (no first-stage screen)")
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="scan engine; ray starts a local Ray instance unless --address is given")
    parser.add_argument("--address", help="Ray cluster address for --engine ray")
    parser.add_argument("--sweep", action="store_true",
                        help="also re-decide the same scan with every threshold shifted by -0.10..+0.10 (no re-embedding)")
    parser.add_argument("--sweep-verify", action="store_true",
                        help="also re-decide the same scan under a grid of [verify] constants (no re-embedding)")
    parser.add_argument("--sweep-colour", action="store_true",
                        help="also re-decide the same scan under a grid of [product] colour settings (no re-embedding)")
    parser.add_argument("--brand-split", type=int, metavar="K",
                        help="also fit the policy's chosen constants on some brands and report on the others:"
                             " the brands go into K groups; each group is decided under the setting that"
                             " scores best on the other groups' listings (no re-embedding)")
    parser.add_argument("--no-marks", action="store_true",
                        help="build the index without the folder's marks.csv (used when present)")
    parser.add_argument("--profile", action="store_true",
                        help="also time each stage of the scan (milliseconds per photo, summed over threads)")
    args = parser.parse_args(argv)

    bench, work = args.bench, args.work
    for name in ("catalog.csv", "authorized.csv", "listings.csv", "truth.csv"):
        if not (bench / name).is_file():
            parser.error(f"{bench / name} not found")
    index_dir, scan_dir, cache = work / "index", work / "scan", work / "cache.sqlite"
    shutil.rmtree(scan_dir, ignore_errors=True)
    if not args.keep_cache:
        cache.unlink(missing_ok=True)
    start = time.perf_counter()
    marks = bench / "marks.csv" if (bench / "marks.csv").is_file() and not args.no_marks else None
    if marks is not None:
        print(f"registered marks: {marks}")
    build_index(bench / "catalog.csv", index_dir, authorized=bench / "authorized.csv", marks=marks,
                embedder=args.embedder, device=args.device)
    build_s = time.perf_counter() - start

    def scan(policy: Path | None, clock: StageClock | None = None) -> None:
        with Detector.open(index_dir, policy=policy, device=args.device,
                           cache=cache if args.engine == "local" else False) as detector:
            detector.scan(bench / "listings.csv", scan_dir, engine=args.engine, address=args.address,
                          verify=not args.no_verify, screen=not args.no_screen, clock=clock)

    clock = StageClock() if args.profile else None
    start = time.perf_counter()
    scan(args.policy, clock)
    scan_s = time.perf_counter() - start

    decisions = read_decisions(scan_dir)
    with open(bench / "truth.csv", newline="", encoding="utf-8") as fh:
        truth_rows = list(csv.DictReader(fh))
    metrics = score(decisions, truth_rows)
    summary = json.loads((scan_dir / "summary.json").read_text())
    metrics.update(
        images_per_second=summary["images_per_second"],
        index_build_seconds=round(build_s, 2),
        scan_seconds=round(scan_s, 2),
        embedder=args.embedder,
        policy=str(args.policy) if args.policy else "default",
        marks=str(marks) if marks else None,
    )
    if clock is not None:
        metrics["stage_ms_per_photo"] = clock.per_photo_ms(summary["this_run"]["embedded"])
    if args.sweep:
        metrics["threshold_sweep"] = sweep(scan, scan_dir, work, args.policy, truth_rows, THRESHOLD_SWEEP)
    if args.sweep_verify:
        metrics["verify_sweep"] = sweep(scan, scan_dir, work, args.policy, truth_rows, VERIFY_SWEEP)
    if args.sweep_colour:
        metrics["colour_sweep"] = sweep(scan, scan_dir, work, args.policy, truth_rows, COLOUR_SWEEP)
    if args.brand_split:
        metrics["brand_split"] = brand_split(scan, scan_dir, work, args.policy, truth_rows, args.brand_split)
    (work / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    print(f"\nBenchmark {bench} ({metrics['listings']} listings, {metrics['missing_decisions']} without a decision)")
    for key in ("precision", "recall", "f1", "recall_at_1", "recall_at_5", "micro_ap",
                "false_flag_rate_authorized_fullprice"):
        print(f"  {key:<40} {metrics[key]:.4f}")
    print("  per-kind accuracy:")
    for kind, value in metrics["per_kind_accuracy"].items():
        print(f"    {kind:<38} {value:.4f}")
    print(f"  {'scan images/s':<40} {metrics['images_per_second']}")
    print(f"  {'build s / scan s (wall, in process)':<40} {metrics['index_build_seconds']} / {metrics['scan_seconds']}")
    for stage, ms in metrics.get("stage_ms_per_photo", {}).items():
        print(f"  {'ms/photo ' + stage:<40} {ms}")
    if args.sweep:
        print("  F1 when every calibrated threshold is shifted by:")
        for offset, values in metrics["threshold_sweep"].items():
            print(f"    {float(offset):+.2f}  F1 {values['f1']:.4f}  precision {values['precision']:.4f}  recall {values['recall']:.4f}")
    if args.sweep_verify:
        print("  F1 under other geometric-verification constants (the rest kept):")
        for label, values in metrics["verify_sweep"].items():
            print(f"    {label}  F1 {values['f1']:.4f}  precision {values['precision']:.4f}  recall {values['recall']:.4f}")
    if args.sweep_colour:
        print("  under other colour settings for sibling products (the rest kept):")
        for label, values in metrics["colour_sweep"].items():
            print(f"    {label}  F1 {values['f1']:.4f}  right product first {values['recall_at_1']:.4f}")
    if args.brand_split:
        split = metrics["brand_split"]
        print(f"  brand split ({args.brand_split} groups): each group decided under the setting chosen on the others")
        for fold in split["groups"]:
            print(f"    held {', '.join(fold['held_brands'])}: chose {fold['chosen']} (F1 {fold['fit_f1']:.4f} on the"
                  f" others); F1 on the held {fold['held_listings']} listings {fold['held_f1']:.4f}")
        print(f"    all held groups together: F1 {split['f1']:.4f}  precision {split['precision']:.4f}"
              f"  recall {split['recall']:.4f}  right product first {split['recall_at_1']:.4f}"
              f"  authorised full-price false flags {split['false_flag_rate_authorized_fullprice']:.4f}")
    print(f"metrics written to {work / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
