"""Per-brand match thresholds from each brand's impostor distribution.

An impostor score for brand B is the best similarity that an image known *not* to be one of
B's products reaches against B's references: every other brand's reference photo, plus any
unrelated background photos the user supplies. B's threshold sits a margin above a high
quantile of those scores, so it follows how crowded B's neighbourhood is instead of one
global constant. Brands with too few impostors borrow the pooled distribution.
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


def _impostor_scores(brand_vectors: np.ndarray, others: np.ndarray) -> np.ndarray:
    if len(others) == 0 or len(brand_vectors) == 0:
        return np.zeros(0, np.float32)
    best = np.full(len(others), -1.0, np.float32)
    for start in range(0, len(brand_vectors), 4096):
        block = others @ brand_vectors[start : start + 4096].T
        np.maximum(best, block.max(axis=1), out=best)
    return best


def calibrate_thresholds(
    vectors_by_brand: dict[str, np.ndarray],
    background: np.ndarray | None = None,
    rule: CalibrationRule = CalibrationRule(),
) -> dict[str, dict]:
    """Return ``{brand: {"threshold": t, ...evidence}}`` for every brand."""
    background = np.zeros((0, 0), np.float32) if background is None else background
    scores: dict[str, np.ndarray] = {}
    for brand, vectors in vectors_by_brand.items():
        others = [v for b, v in vectors_by_brand.items() if b != brand and len(v)]
        if len(background):
            others.append(background)
        pool = np.concatenate(others) if others else np.zeros((0, vectors.shape[1] if vectors.ndim == 2 else 0))
        scores[brand] = _impostor_scores(vectors, pool.astype(np.float32, copy=False))
    pooled = np.concatenate(list(scores.values())) if scores else np.zeros(0)
    result = {}
    for brand, own in scores.items():
        if len(own) >= rule.min_impostors:
            sample, source = own, "brand"
        elif len(pooled) >= rule.min_impostors:
            sample, source = pooled, "pooled"
        else:
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
