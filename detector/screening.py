"""The scan's first stage: which photos go on to the window views and full verification.

A night's dump is mostly photos of things no brand here protects. Screening embeds only the
whole photo, searches it, and fits its SIFT keypoints to the closest references; a photo goes on
to the five window views, their search and the full verification only when some candidate is
near its brand's threshold, or fits in one layout at least ``KEYPOINTS`` keypoints, or a mark's
keypoints are in it. The rest end with what the first stage found, and say so in their decision.
The descriptor matches the screen finds stay with the photo's features, and the full verification
of a photo sent on uses them instead of matching again.

The levels were chosen with ``scripts/studies/gate_study.py`` on the labelled folders (docs/performance.md):
lower, and the gate lets through most unrelated pictures; higher, and it stops cropped copies
whose right reference only a window view finds.
"""

from __future__ import annotations

from typing import NamedTuple

from detector.marks import Mark, find_marks
from detector.matches import ReferenceFeatures
from detector.verify import VERIFIER_ID, QueryFeatures
from index.search import Hit
from index.store import ReferenceIndex

CANDIDATES = 10
"""References the whole view's search hands to the screen."""
KEYPOINTS = 4
"""Keypoints in one layout with one candidate that send a photo on."""
MARGIN = 0.05
"""A candidate this close below its brand's calibrated threshold sends a photo on."""
SCREEN_ID = f"{VERIFIER_ID}|screen-{CANDIDATES}-{KEYPOINTS}-{MARGIN}-v1"
"""What a cached screening outcome is filed under."""
CODE = "screened_out"
"""The remark (a finding code of weight 0) a screened-out photo's decision carries."""
NOTE = (CODE, "first stage only: the whole photo matched no protected product closely enough, "
        "and no reference's keypoints or mark fitted it, so the window views and full verification were skipped")
"""The remark with its sentence, as the evidence's notes carry it."""


class Screen(NamedTuple):
    """Whether a photo goes on, and why (``near``, ``keypoints``, ``mark``, or ``None`` when it stops)."""

    go_on: bool
    why: str | None


def near_threshold(index: ReferenceIndex, hits: list[Hit]) -> bool:
    """Whether some candidate is within MARGIN of its brand's threshold (no keypoints needed)."""
    return any(hit.similarity >= index.brands[hit.brand].threshold - MARGIN for hit in hits)


def screen(index: ReferenceIndex, hits: list[Hit], local: QueryFeatures, references: ReferenceFeatures,
           marks: list[Mark]) -> Screen:
    """Screen one photo given its whole view's closest ``hits`` and its keypoints."""
    if near_threshold(index, hits):
        return Screen(True, "near")
    for hit in hits:
        reference = references.get(hit)
        if reference is not None and local.best_layout(reference) >= KEYPOINTS:
            return Screen(True, "keypoints")
    if marks and find_marks(local.plain, marks):
        return Screen(True, "mark")
    return Screen(False, None)
