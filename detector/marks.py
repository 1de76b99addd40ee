"""Brand marks found in listing photos.

A registered mark (the logo file a brand owner holds, drawn on white or on transparency) is
cropped to its drawing, padded, and described once by SIFT. A listing photo's own SIFT features,
taken for geometric verification anyway, are matched against it in both contrast polarities: a
white logo on a dark product negates every gradient, which turns each keypoint's frame by half
a turn, so the inverted mark's descriptors are the plain ones with their 4 x 4 cells reversed
(no second extraction). A similarity layout of ``min_inliers`` or more keypoints places the mark,
at any position, scale and rotation, and gives its box in the photo.

Simple round marks with few corners give few keypoints: :mod:`detector.mark_shapes` searches
those by their shape. ``scripts/studies/ablate_marks.py`` measures both on a labelled folder with a
``marks.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
from PIL import Image

from detector.errors import UserError
from detector.records import Sighting
from detector.verify import MAX_SIDE, LocalFeatures, extract, fit_layout, unpack

POLARITY = np.arange(128).reshape(4, 4, 8)[::-1, ::-1].reshape(-1)
"""Descriptor permutation equal to extracting SIFT from the photo's negative."""
PAD = 0.25
"""White margin around the cropped drawing, as a share of its longer side: keypoints on the
drawing's outer edge need room for their descriptor window."""
BACKGROUND_LEVEL = 245
"""Grey level at or above which a (flattened) mark pixel is background."""
MIN_INLIERS = 4
"""Keypoints in one layout that place a mark. Chosen on shared/public-logo, where no listing
without the brand's mark reached 4 and marks in listings reached 4 to 80."""


OUTSIDE = 0.1
"""How far (a share of the photo's size) a found mark's drawing may reach beyond the photo's edges."""


@dataclass(frozen=True)
class Mark:
    """One brand's mark, ready to search for: its features as drawn and inverted, and the box of
    the drawing in the features' frame."""

    brand: str
    name: str
    plain: LocalFeatures
    inverted: LocalFeatures
    box: tuple[float, float, float, float]


def prepare_mark(image: Image.Image, brand: str, name: str) -> Mark:
    """A mark's features from its image: transparency flattened on white, cropped to the drawing,
    padded by PAD."""
    rgba = image.convert("RGBA")
    flat = Image.new("RGB", image.size, "white")
    flat.paste(rgba, mask=rgba.getchannel("A"))
    grey = np.asarray(flat.convert("L"))
    rows, cols = np.nonzero(grey < BACKGROUND_LEVEL)
    if not len(rows):
        raise UserError(f"mark {name} has no drawing: every pixel is white or transparent")
    flat = flat.crop((int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1))
    pad = round(PAD * max(flat.size))
    canvas = Image.new("RGB", (flat.width + 2 * pad, flat.height + 2 * pad), "white")
    canvas.paste(flat, (pad, pad))
    scale = MAX_SIDE / max(canvas.size)
    box = (pad * scale, pad * scale, (pad + flat.width) * scale, (pad + flat.height) * scale)
    return mark_from(brand, name, extract(canvas), tuple(round(v, 2) for v in box))


def mark_from(brand: str, name: str, features: LocalFeatures, box: tuple[float, ...]) -> Mark:
    """A mark from its stored features and drawing box (the inverted features are derived)."""
    inverted = LocalFeatures(features.points, features.descriptors[:, POLARITY], features.thumbnail)
    return Mark(brand, name, features, inverted, tuple(box))


def marks_of(brand: str, rows: list[dict], packed: bytes) -> list[Mark]:
    """A brand's marks from an index: their rows (file, drawing box) and packed features."""
    return [mark_from(brand, row["image"], features, row["box"]) for row, features in zip(rows, unpack(packed))]


def _frame(photo: LocalFeatures) -> tuple[float, float]:
    """Width and height of the frame a photo's keypoints are in (its longer side is MAX_SIDE)."""
    height, width = photo.thumbnail.shape[:2] if photo.thumbnail.size else (MAX_SIDE, MAX_SIDE)
    longer = max(width, height)
    return MAX_SIDE * width / longer, MAX_SIDE * height / longer


def find_marks(photo: LocalFeatures, marks: list[Mark], min_inliers: int = MIN_INLIERS) -> list[Sighting]:
    """The marks found in a photo (its SIFT features), most keypoints first."""
    if len(photo) == 0 or not marks:
        return []
    width, height = _frame(photo)
    found = []
    for mark in marks:
        (inliers, maps), inverted = max(((fit_layout(photo, features), inverted)
                                         for features, inverted in ((mark.plain, False), (mark.inverted, True))),
                                        key=lambda fit: fit[0][0])
        if inliers < min_inliers or not maps:
            continue
        x0, y0, x1, y1 = mark.box
        corners = np.array([[x0, y0, 1], [x1, y0, 1], [x1, y1, 1], [x0, y1, 1]]) @ maps[0].T
        xs, ys = corners[:, 0] / corners[:, 2] / width, corners[:, 1] / corners[:, 2] / height
        if min(xs.min(), ys.min()) < -OUTSIDE or max(xs.max(), ys.max()) > 1 + OUTSIDE:
            continue  # a layout that puts the mark largely outside the photo is chance
        box = (max(0.0, xs.min()), max(0.0, ys.min()), min(1.0, xs.max()), min(1.0, ys.max()))
        found.append(Sighting(mark.brand, mark.name, inliers, inverted, tuple(round(float(v), 4) for v in box)))
    return sorted(found, key=lambda s: -s.inliers)
