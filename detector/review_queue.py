"""What reviewers work through: a finished scan's flagged listings, highest risk first, then its
review sample (`counterfeit sample`), as JSON-ready items, with the photo files each may show.

The files come only from what the scan recorded: the listing photo its progress database
resolved for the decision's image, and the reference photo the index names for the decision's
reference image. A request names a listing, never a path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from detector.decisions import COPY, PRODUCT
from detector.errors import UserError
from detector.sampling import decisions_path, read_sample

FLAGGED_SECTION, SAMPLE_SECTION = "flagged", "sample"
ITEM_KEYS = ("listing_id", "verdict", "score", "brand", "product_id", "visual_state", "similarity", "threshold",
             "inliers", "seller_id", "seller_authorized", "title", "price", "currency", "catalogue_price",
             "catalogue_currency", "price_ratio", "reference_image", "image", "reasons", "error")


@dataclass
class Queue:
    """The items in review order, and for each listing the files a reviewer may be shown."""

    items: list[dict]
    photos: dict[str, str | None] = field(default_factory=dict)
    references: dict[str, str | None] = field(default_factory=dict)

    def __post_init__(self):
        self.by_id = {item["listing_id"]: item for item in self.items}

    @property
    def brands(self) -> list[str]:
        return sorted({item["brand"] for item in self.items if item["brand"]})

    @property
    def states(self) -> list[str]:
        return sorted({item["visual_state"] for item in self.items if item["visual_state"]})


def _item(decision: dict, section: str, review_id: str | None, stratum: str | None) -> dict:
    item = {key: decision.get(key) for key in ITEM_KEYS}
    item.update(section=section, review_id=review_id, stratum=stratum,
                findings=[{"code": f.get("code"), "weight": f.get("weight"), "text": f.get("text")}
                          for f in decision.get("findings") or []],
                marks=[{"brand": m.get("brand"), "mark": m.get("mark"), "box": m.get("box")}
                       for m in decision.get("marks") or [] if m.get("box")],
                region=_region(decision))
    return item


def _region(decision: dict) -> list | None:
    """Where the matched reference lies in the photo (four [x, y] corners, fractions of the
    photo), when local features established the match."""
    first = (decision.get("matches") or [None])[0]
    if decision.get("visual_match") and first and first.get("visual_state") in (COPY, PRODUCT) and first.get("region"):
        return first["region"]
    return None


def _photo_files(out_dir: Path, items: list[dict]) -> dict[str, str | None]:
    """Each item's listing photo as the scan resolved it (its progress database), or None."""
    from detector.scanner import listing_photo_paths

    found = listing_photo_paths(out_dir, [(item["listing_id"], item["image"]) for item in items])
    return {item["listing_id"]: found.get((item["listing_id"], item["image"])) for item in items}


def _reference_files(out_dir: Path, items: list[dict]) -> dict[str, str | None]:
    """Each item's reference photo as the index names it, or None (index moved, or no match)."""
    from index.store import IndexStoreError, reference_files

    try:
        summary = json.loads((Path(out_dir) / "summary.json").read_text(encoding="utf-8"))
        files = reference_files(Path(summary["index_path"]))
    except (OSError, ValueError, KeyError, TypeError, IndexStoreError):
        return {}
    return {item["listing_id"]: files.get((item["brand"], item["reference_image"])) for item in items}


def load_queue(out_dir: Path) -> Queue:
    """The review queue of the finished scan in ``out_dir``."""
    path = decisions_path(out_dir)
    in_sample = read_sample(out_dir)
    flagged, sampled = [], []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                decision = json.loads(line)
            except ValueError:
                raise UserError(f"{path} line {number} is not JSON; was the scan interrupted? rerun it") from None
            listing_id = decision.get("listing_id")
            review_id, stratum = in_sample.get(listing_id, (None, None))
            if decision.get("verdict") == "flagged":
                flagged.append(_item(decision, FLAGGED_SECTION, review_id, stratum))
            elif review_id is not None:
                sampled.append(_item(decision, SAMPLE_SECTION, review_id, stratum))
    flagged.sort(key=lambda item: (-(item["score"] or 0.0), item["listing_id"]))
    sampled.sort(key=lambda item: item["review_id"])
    items = flagged + sampled
    return Queue(items, _photo_files(out_dir, items), _reference_files(out_dir, items))
