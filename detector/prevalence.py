"""Reviewers' labels on a stratified sample → counterfeit rates with 95% intervals (`counterfeit prevalence`).

Estimator (docs/metrics.md): the stratified estimator of a proportion. With stratum h holding
N_h of the N decided listings, m_h of them labelled and x_h of those counterfeit,

    p = sum_h (N_h / N) * x_h / m_h
    var(p) = sum_h (N_h / N)^2 * (1 - m_h / N_h) * s_h^2 / m_h,   s_h^2 = x_h (m_h - x_h) / (m_h (m_h - 1))

and the 95% interval is Korn and Graubard's (1998): a Clopper–Pearson interval computed at the
design's effective sample size n_eff = p (1 - p) / var(p), scaled by (t_{n-1} / t_{n-H})^2. It
stays valid for rare events, where a normal interval falls below 0. Precision is the same
estimator over the flagged strata, the missed rate over the clear ones. The overall rate and
recall combine the flagged and clear sides, and their intervals are built from 97.5% intervals
on each side. scripts/studies/prevalence_coverage.py measures the coverage.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

from scipy import stats

from detector.errors import UserError
from detector.outputs import write_json
from detector.sampling import DESIGN_FILE, REVIEW_DIR, decisions_sha256

COUNTERFEIT = {"counterfeit", "fake", "yes", "y", "1", "true"}
GENUINE = {"genuine", "authentic", "real", "no", "n", "0", "false"}
SKIPPED = {"", "unsure", "skip", "?"}
PER = 10_000


@dataclass(frozen=True)
class Stratum:
    """One stratum's population N, labelled listings m and counterfeit labels x."""

    population: int
    labelled: int
    counterfeit: int

    @property
    def rate(self) -> float:
        return self.counterfeit / self.labelled

    @property
    def unit_variance(self) -> float:
        """s_h^2, the sample variance of the 0/1 labels (0 with a single label)."""
        m, x = self.labelled, self.counterfeit
        return x * (m - x) / (m * (m - 1)) if m > 1 else 0.0

    @property
    def total_variance(self) -> float:
        """Variance of the estimated number of counterfeits in the stratum, N_h * rate."""
        return self.population**2 * (1 - self.labelled / self.population) * self.unit_variance / self.labelled


class Estimate(NamedTuple):
    """A proportion (or rate) with its standard error and 95% interval."""

    value: float
    stderr: float
    low: float
    high: float


def korn_graubard(value: float, variance: float, labels: int, strata: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper–Pearson at the design's effective sample size (Korn and Graubard 1998)."""
    if labels <= 0:
        return 0.0, 1.0
    n_eff = value * (1 - value) / variance if variance > 0 else labels
    alpha = 1 - level
    if labels > strata:
        n_eff *= (stats.t.ppf(1 - alpha / 2, labels - 1) / stats.t.ppf(1 - alpha / 2, labels - strata)) ** 2
    hits = value * n_eff
    low = 0.0 if hits <= 0 else float(stats.beta.ppf(alpha / 2, hits, n_eff - hits + 1))
    high = 1.0 if hits >= n_eff else float(stats.beta.ppf(1 - alpha / 2, hits + 1, n_eff - hits))
    return low, high


def domain_share(domain: list[Stratum], level: float = 0.95) -> Estimate:
    """The counterfeit share of the listings in the ``domain`` strata."""
    population = sum(s.population for s in domain)
    value = sum(s.population * s.rate for s in domain) / population
    variance = sum(s.total_variance for s in domain) / population**2
    labels = sum(s.labelled for s in domain)
    return Estimate(value, math.sqrt(variance), *korn_graubard(value, variance, labels, len(domain), level))


def scaled(estimate_: Estimate, factor: float) -> Estimate:
    return Estimate(*(value * factor for value in estimate_))


def _sides(flagged: list[Stratum], clear: list[Stratum]):
    """Each side's population and its counterfeit share with a 97.5% interval: the two sides come
    from disjoint strata, so both intervals hold together at least 95% of the time."""
    return [(sum(s.population for s in side), domain_share(side, 0.975)) for side in (flagged, clear)]


def overall_share(flagged: list[Stratum], clear: list[Stratum]) -> Estimate:
    """Counterfeits among all listings, (T_f + T_c) / N. The interval adds the two sides'
    interval ends: a zero count on the clear side (common: misses are rare) then still widens
    it, where a pooled variance would call it certain."""
    (n_f, caught), (n_c, missed) = _sides(flagged, clear)
    total = n_f + n_c
    point = domain_share(flagged + clear)
    return Estimate(point.value, point.stderr, (n_f * caught.low + n_c * missed.low) / total,
                    (n_f * caught.high + n_c * missed.high) / total)


def recall(flagged: list[Stratum], clear: list[Stratum]) -> Estimate | None:
    """Counterfeits flagged over all counterfeits, T_f / (T_f + T_c); recall rises with T_f and
    falls with T_c, so its interval is bounded by the two sides' interval ends."""
    (n_f, caught), (n_c, missed) = _sides(flagged, clear)
    t_f, t_c = caught.value * n_f, missed.value * n_c
    if t_f + t_c <= 0:
        return None

    def share(f: float, c: float) -> float:
        return f * n_f / (f * n_f + c * n_c) if f * n_f + c * n_c > 0 else 0.0

    value = t_f / (t_f + t_c)
    variance = ((1 - value) ** 2 * sum(s.total_variance for s in flagged)
                + value**2 * sum(s.total_variance for s in clear)) / (t_f + t_c) ** 2
    return Estimate(value, math.sqrt(variance), share(caught.low, missed.high), share(caught.high, missed.low))


def estimate(strata: dict[str, Stratum]) -> dict:
    """Every metric from labelled strata keyed ``verdict|brand``; each stratum needs a label."""
    flagged = [s for key, s in strata.items() if key.startswith("flagged|")]
    clear = [s for key, s in strata.items() if key.startswith("clear|")]
    population = sum(s.population for s in strata.values())
    clear_population = sum(s.population for s in clear)
    result = {
        "listings": population,
        "flagged": population - clear_population,
        "labels": sum(s.labelled for s in strata.values()),
        "counterfeit_per_10000": scaled(overall_share(flagged, clear) if flagged and clear else domain_share(flagged + clear), PER)._asdict(),
        "missed_per_10000": scaled(domain_share(clear), PER * clear_population / population)._asdict() if clear else None,
        "precision": domain_share(flagged)._asdict() if flagged else None,
        "recall": None,
    }
    if flagged and clear:
        found = recall(flagged, clear)
        result["recall"] = found._asdict() if found else None
    return result


def parse_label(text: str) -> bool | None:
    """True for counterfeit, False for genuine, None for not reviewed; ValueError otherwise."""
    word = text.strip().lower()
    if word in COUNTERFEIT:
        return True
    if word in GENUINE:
        return False
    if word in SKIPPED:
        return None
    raise ValueError(word)


def read_labels(path: Path, strata_of: dict[str, str]) -> dict[str, bool]:
    """review_id → counterfeit? from a reviewed copy of sample.csv (or any CSV with review_id, label,
    such as `counterfeit review export` writes: its rows without a review_id, labels of listings
    outside the sample, are not part of the estimate)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            missing = {"review_id", "label"} - set(reader.fieldnames or [])
            if missing:
                raise UserError(f"{path} needs the columns review_id and label (missing: {', '.join(sorted(missing))})")
            labels: dict[str, bool] = {}
            for line, row in enumerate(reader, start=2):
                review_id = (row["review_id"] or "").strip()
                if not review_id and row.get("listing_id"):  # `review export`: a label outside the sample
                    continue
                if review_id not in strata_of:
                    raise UserError(f"{path} line {line}: review_id {review_id!r} is not in this scan's sample")
                if review_id in labels:
                    raise UserError(f"{path} line {line}: review_id {review_id} is labelled twice")
                try:
                    label = parse_label(row["label"] or "")
                except ValueError:
                    raise UserError(f"{path} line {line}: label {row['label']!r} is not one of counterfeit, genuine"
                                    " (or fake/real, yes/no, 1/0), or blank for not reviewed") from None
                if label is not None:
                    labels[review_id] = label
    except OSError as exc:
        raise UserError(f"cannot read labels {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path} is not a readable CSV file ({exc})") from None
    return labels


def prevalence(out_dir: Path, labels_path: Path) -> dict:
    """Estimate from the sample drawn in ``out_dir`` and the labels in ``labels_path``; also
    writes ``OUT_DIR/review/prevalence.json``."""
    folder = Path(out_dir) / REVIEW_DIR
    try:
        design = json.loads((folder / DESIGN_FILE).read_text(encoding="utf-8"))
        strata_of = design["reviews"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"no usable review sample in {folder}; draw one with: counterfeit sample {out_dir} --n 400") from None
    if decisions_sha256(out_dir) != design["decisions_sha256"]:
        raise UserError(f"{out_dir}/decisions.jsonl changed after the sample was drawn; draw a new sample")
    labels = read_labels(Path(labels_path), strata_of)
    counts: dict[str, list[int]] = {key: [0, 0] for key in design["strata"]}
    for review_id, counterfeit in labels.items():
        counts[strata_of[review_id]][0] += 1
        counts[strata_of[review_id]][1] += int(counterfeit)
    unlabelled = sorted(key for key, (m, _) in counts.items() if m == 0)
    if unlabelled:
        raise UserError(f"no labels yet in {len(unlabelled)} stratum(s): {', '.join(unlabelled[:5])}"
                        f"{' …' if len(unlabelled) > 5 else ''}; every stratum needs at least one reviewed listing")
    strata = {key: Stratum(design["strata"][key]["population"], m, x) for key, (m, x) in counts.items()}
    result = {**estimate(strata), "sampled": design["sampled"], "excluded": design["excluded"],
              "strata": {key: asdict(s) for key, s in strata.items()}, "method": "stratified estimator, Korn-Graubard 95% intervals"}
    write_json(folder / "prevalence.json", result)
    return result
