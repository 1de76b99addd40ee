"""The scan's first stage: which photos go on to the keypoints, the window views and verification.

A night's dump is mostly photos of things no brand here protects. The first stage embeds only the
whole photo and searches it; a photo goes on to everything else only when its whole view reaches,
for some brand, that brand's **gate level**, or is within ``MARGIN`` of the brand's match
threshold, or (in an index with registered marks) a mark's keypoints are in it. The rest end with
what the first stage found, and say so in their decision; without marks they never pay for SIFT.

A brand's gate level is calibrated at ``index build`` on the catalogue alone
(:func:`index.calibrate.calibrate_gate`): its reference photos are edited as a seller would
(:mod:`detector.augment`), and the level sits a margin below a low quantile of the similarities
those edits reach. A brand the build could not calibrate (an index built before levels existed)
stops nothing, so every photo goes on. How the rule was chosen, and what it stops on which
folders: ``scripts/studies/catalogue_gate_study.py`` and docs/performance.md#screening.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from detector.marks import Mark, find_marks
from detector.verify import FEATURES_ID, QueryFeatures
from index.search import Hit, Levels
from index.store import ReferenceIndex

CANDIDATES = 10
"""References the whole view's search hands to the first stage."""
MARGIN = 0.05
"""A candidate this close below its brand's calibrated threshold sends a photo on."""
SCREEN_ID = f"{FEATURES_ID}|gate-{CANDIDATES}-{MARGIN}-v2"
"""What a cached first-stage outcome is filed under."""
CODE = "screened_out"
"""The remark (a finding code of weight 0) a screened-out photo's decision carries."""
NOTE = (CODE, "first stage only: the whole photo came nowhere near any protected product (below every brand's "
        "gate level) and showed no registered mark, so the keypoints, window views and full verification were skipped")
"""The remark with its sentence, as the evidence's notes carry it."""


class Screen(NamedTuple):
    """Whether a photo goes on, and why (``near``, ``catalogue``, ``uncalibrated``, ``mark``, or
    ``None`` when it stops)."""

    go_on: bool
    why: str | None


def near_threshold(index: ReferenceIndex, hits: list[Hit]) -> bool:
    """Whether some candidate is within MARGIN of its brand's threshold."""
    return any(hit.similarity >= index.brands[hit.brand].threshold - MARGIN for hit in hits)


def gate_levels(index: ReferenceIndex) -> dict[str, float] | None:
    """Each brand's calibrated gate level; ``None`` where some brand has none (an index built
    before levels existed), and then the first stage lets every photo through. Read once per scan."""
    levels = {brand: entry.calibration.get("gate_level") for brand, entry in index.brands.items()}
    return None if any(level is None for level in levels.values()) else levels


def screen_levels(index: ReferenceIndex, levels: dict[str, float] | None) -> Levels:
    """Each brand's first-stage level: the lower of its gate level (``levels``; none in an index
    built before them) and MARGIN below its threshold, the similarity at which its reference sends
    a photo on. The whole view's search ranks its CANDIDATES against these, so the ones it hands on
    are those nearest to sending the photo on: among thousands of brands, the most similar
    references would be other brands' products far below their own levels."""
    return Levels({brand: min(entry.threshold - MARGIN, levels[brand]) if levels else entry.threshold - MARGIN
                   for brand, entry in index.brands.items()})


def without_keypoints(index: ReferenceIndex, levels: dict[str, float] | None, hits: list[Hit]) -> Screen | None:
    """The first stage's verdict where the whole view's ``hits`` settle it, else ``None`` (a
    photo below every level, in an index whose marks its keypoints may still show)."""
    if near_threshold(index, hits):
        return Screen(True, "near")
    if levels is None:
        return Screen(True, "uncalibrated")
    if any(hit.similarity >= levels[hit.brand] for hit in hits):
        return Screen(True, "catalogue")
    return None


def screen(index: ReferenceIndex, levels: dict[str, float] | None, hits: list[Hit],
           keypoints: Callable[[], QueryFeatures], marks: list[Mark]) -> Screen:
    """Screen one photo given the index's :func:`gate_levels` and its whole view's closest
    ``hits``; its ``keypoints`` are made only where the index has marks and the whole view
    settles nothing."""
    settled = without_keypoints(index, levels, hits)
    if settled is not None:
        return settled
    if marks and find_marks(keypoints().plain, marks):
        return Screen(True, "mark")
    return Screen(False, None)
