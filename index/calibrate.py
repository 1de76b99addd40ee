"""Per-brand match thresholds from each brand's impostor distribution.

An impostor score for brand B is the best similarity that an image known *not* to be one of
B's products reaches against B's references: every other brand's reference photo, plus any
unrelated background photos the user supplies. Impostors may be given as several views each
([n, views, d]); an impostor's score is then its best view, as the scanner scores listings.
B's threshold sits a margin above a high quantile of those scores, so it follows how crowded
B's neighbourhood is instead of one global constant. Brands with too few impostors borrow the pooled distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CalibrationRule:
    """The knobs of the rule; the defaults are documented in docs/index.md."""

    quantile: float = 0.95
    margin: float = 0.03
    floor: float = 0.55
    ceiling: float = 0.90
    min_impostors: int = 20
    default: float = 0.75


def _best_per_brand(queries: list[np.ndarray], references: np.ndarray, starts: np.ndarray, block: int = 512) -> np.ndarray:
    """[len(queries), brands]: each query's best similarity (over its views, [views, d]) to any
    reference of each brand (``references`` grouped by brand, brand i's rows from ``starts[i]``).
    One pass of matrix products over every query and reference, whatever the number of brands."""
    if not queries:
        return np.zeros((0, len(starts)), np.float32)
    views = np.concatenate(queries).astype(np.float32, copy=False)
    first_view = np.cumsum([0] + [len(q) for q in queries[:-1]])
    best = np.empty((len(views), len(starts)), np.float32)
    for at in range(0, len(views), block):
        best[at : at + block] = np.maximum.reduceat(views[at : at + block] @ references.T, starts, axis=1)
    return np.maximum.reduceat(best, first_view, axis=0)


def impostor_scores(vectors_by_brand: dict[str, np.ndarray], queries_by_brand: dict[str, np.ndarray],
                    background: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """For each brand, the best similarity each impostor reaches against its vectors: every other
    brand's query (``[n, d]`` or ``[n, views, d]``; its best view, as the scanner scores listings),
    then every ``background`` photo."""
    names = [b for b, v in vectors_by_brand.items() if len(v)]
    scores = {b: np.zeros(0, np.float32) for b in vectors_by_brand}
    if not names:
        return scores
    dim = vectors_by_brand[names[0]].shape[-1]
    references = np.concatenate([np.asarray(vectors_by_brand[b], np.float32) for b in names])
    starts = np.cumsum([0] + [len(vectors_by_brand[b]) for b in names[:-1]])
    owners, queries = [], []
    for brand, found in queries_by_brand.items():
        if not len(found):
            continue
        for query in np.asarray(found, np.float32).reshape(len(found), -1, dim):
            owners.append(brand)
            queries.append(query)
    best = _best_per_brand(queries, references, starts)
    owners = np.array(owners, dtype=object)
    extra = np.zeros((0, len(names)), np.float32)
    if background is not None and len(background):
        extra = _best_per_brand(list(np.asarray(background, np.float32).reshape(len(background), -1, dim)), references, starts)
    for column, brand in enumerate(names):
        scores[brand] = np.concatenate([best[owners != brand, column], extra[:, column]])
    return scores


def calibrate_thresholds(
    vectors_by_brand: dict[str, np.ndarray],
    background: np.ndarray | None = None,
    rule: CalibrationRule = CalibrationRule(),
    queries_by_brand: dict[str, np.ndarray] | None = None,
) -> dict[str, dict]:
    """Return ``{brand: {"threshold": t, ...evidence}}`` for every brand.

    ``vectors_by_brand`` are the indexed reference vectors. ``queries_by_brand`` are the same
    brands' photos as the scanner would see them (several views each); they default to the
    reference vectors themselves. ``background`` holds unrelated photos, in either form.
    """
    scores = impostor_scores(vectors_by_brand, queries_by_brand or vectors_by_brand, background)
    pooled = np.concatenate(list(scores.values())) if scores else np.zeros(0)
    result = {}
    for brand, own in scores.items():
        sample, source = _sample(own, pooled, rule.min_impostors)
        if sample is None:
            result[brand] = {"threshold": rule.default, "source": "default", "impostors": int(len(own))}
            continue
        q = float(np.quantile(sample, rule.quantile))
        threshold = float(np.clip(q + rule.margin, rule.floor, rule.ceiling))
        result[brand] = {
            "threshold": round(threshold, 4),
            "source": source,
            "impostors": int(len(sample)),
            f"impostor_q{round(rule.quantile * 100)}": round(q, 4),
            "impostor_max": round(float(sample.max()), 4),
        }
    return result


def _sample(own: np.ndarray, pooled: np.ndarray, enough: int) -> tuple[np.ndarray | None, str]:
    """The impostor scores a brand is calibrated on: its own when there are ``enough``, else every
    brand's pooled, else none (the rule's default applies)."""
    if len(own) >= enough:
        return own, "brand"
    if len(pooled) >= enough:
        return pooled, "pooled"
    return None, "default"


@dataclass(frozen=True)
class CountRule:
    """How many matching keypoints a brand's products need before local features alone say a
    new photo shows one: a high quantile of what impostors reach, plus a margin, never under a
    floor (docs/index.md)."""

    quantile: float = 0.99
    margin: int = 1
    floor: int = 5
    min_impostors: int = 20
    default: int = 8


def calibrate_counts(counts_by_brand: dict[str, np.ndarray], rule: CountRule = CountRule()) -> dict[str, dict]:
    """``{brand: {"product_inliers": n, ...evidence}}`` from each brand's impostor counts (the most
    matching keypoints each impostor reached against the brand's products). Brands with too few
    impostors borrow the pooled counts, as thresholds do; with none at all, ``rule.default``."""
    pooled = np.concatenate([np.asarray(c, np.float64) for c in counts_by_brand.values()]) if counts_by_brand else np.zeros(0)
    result = {}
    for brand, own in counts_by_brand.items():
        own = np.asarray(own, np.float64)
        sample, source = _sample(own, pooled, rule.min_impostors)
        if sample is None:
            result[brand] = {"product_inliers": rule.default, "product_source": "default", "product_impostors": int(len(own))}
            continue
        needed = max(rule.floor, int(np.ceil(np.quantile(sample, rule.quantile))) + rule.margin)
        result[brand] = {"product_inliers": needed, "product_source": source, "product_impostors": int(len(sample)),
                         "product_impostor_max": int(sample.max())}
    return result


@dataclass(frozen=True)
class GateRule:
    """How low a brand's first-stage level sits: a low quantile of its own reference photos'
    edits' similarity to the brand, less a margin (docs/index.md). Brands with too few edits
    borrow the pooled scores, as thresholds do."""

    quantile: float = 0.05
    margin: float = 0.02
    min_edits: int = 20


def calibrate_gate(scores_by_brand: dict[str, np.ndarray], rule: GateRule = GateRule(),
                   brands: list[str] | None = None) -> dict[str, dict]:
    """``{brand: {"gate_level": level, ...evidence}}`` from each brand's edit scores (the best
    whole-view similarity each edit of one of its reference photos reaches against the brand), for
    every brand of ``brands`` (default: those with scores); a brand without borrows the pooled."""
    pooled = np.concatenate([np.asarray(s, np.float64) for s in scores_by_brand.values()]) if scores_by_brand else np.zeros(0)
    result = {}
    for brand in scores_by_brand if brands is None else brands:
        own = scores_by_brand.get(brand, np.zeros(0))
        sample, source = _sample(np.asarray(own, np.float64), pooled, rule.min_edits)
        if sample is None:
            result[brand] = {"gate_level": None, "gate_source": "none", "gate_edits": int(len(own))}
            continue
        q = float(np.quantile(sample, rule.quantile))
        result[brand] = {"gate_level": round(q - rule.margin, 4), "gate_source": source, "gate_edits": int(len(sample)),
                         f"gate_edit_q{rule.quantile * 100:g}": round(q, 4)}
    return result
