#!/usr/bin/env python3
"""How often do `counterfeit prevalence`'s 95% intervals cover the truth? A simulation.

    python -m scripts.studies.prevalence_coverage [--reviews 1000] [--n 400] [--seed 0]

A synthetic night: 3 brands, 100,000 decided listings, where the scanner flagged 1,500 (of which
80-90% are fakes, by brand) and cleared the rest (among which 0.1-0.4% are missed fakes). Each
simulated review draws the sample `counterfeit sample` would draw (same allocation), labels it
with the truth, and runs the same estimator. Prints, per metric, the share of reviews whose
interval held the true value, and the mean interval width.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


from detector.prevalence import Stratum, estimate
from detector.sampling import FLAGGED_SHARE, allocate

# stratum → (listings, counterfeit among them)
NIGHT = {
    "flagged|Aurora": (800, 720), "flagged|Borealis": (500, 400), "flagged|Cirrus": (200, 170),
    "clear|Aurora": (30_000, 90), "clear|Borealis": (40_000, 40), "clear|Cirrus": (28_500, 114),
    "clear|-": (500, 0),
}


def truth(night: dict[str, tuple[int, int]]) -> dict[str, float]:
    listings = sum(n for n, _ in night.values())
    fakes = sum(k for _, k in night.values())
    flagged = [(n, k) for key, (n, k) in night.items() if key.startswith("flagged|")]
    caught = sum(k for _, k in flagged)
    return {"counterfeit_per_10000": 10_000 * fakes / listings,
            "missed_per_10000": 10_000 * (fakes - caught) / listings,
            "precision": caught / sum(n for n, _ in flagged), "recall": caught / fakes}


def simulate(night: dict[str, tuple[int, int]], n: int, reviews: int, seed: int, flagged_share: float = FLAGGED_SHARE) -> dict[str, dict]:
    """Coverage and mean width of each metric's interval over ``reviews`` simulated reviews."""
    rng = np.random.default_rng(seed)
    sizes = allocate({key: size for key, (size, _) in night.items()}, n, flagged_share)
    true = truth(night)
    hits = {metric: 0 for metric in true}
    widths = {metric: [] for metric in true}
    for _ in range(reviews):
        strata = {key: Stratum(size, sizes[key], int(rng.hypergeometric(fakes, size - fakes, sizes[key])))
                  for key, (size, fakes) in night.items()}
        result = estimate(strata)
        for metric, value in true.items():
            got = result[metric]
            if got is not None and got["low"] <= value <= got["high"]:
                hits[metric] += 1
            if got is not None:
                widths[metric].append(got["high"] - got["low"])
    return {metric: {"true": round(true[metric], 4), "coverage": hits[metric] / reviews,
                     "mean_width": round(float(np.mean(widths[metric])), 4)} for metric in true}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviews", type=int, default=1000, help="simulated reviews")
    parser.add_argument("--n", type=int, default=400, help="listings per review sample")
    parser.add_argument("--flagged-share", type=float, default=FLAGGED_SHARE, help="share of the sample drawn from flagged listings")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"{args.reviews} simulated reviews of {args.n} listings, {args.flagged_share:.0%} of them flagged ones;"
          " nominal coverage 95%\n")
    print("| metric | true value | intervals covering it | mean interval width |")
    print("|---|---|---|---|")
    for metric, row in simulate(NIGHT, args.n, args.reviews, args.seed, args.flagged_share).items():
        print(f"| {metric} | {row['true']} | {row['coverage']:.1%} | {row['mean_width']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
