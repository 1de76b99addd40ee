"""Brand marks found in listing photos.

A registered mark (the logo file a brand owner holds, drawn on white or on transparency) is
cropped to its drawing, padded, and described once by SIFT. A listing photo's own SIFT features,
taken for geometric verification anyway, are matched against it in both contrast polarities: a
white logo on a dark product negates every gradient, which turns each keypoint's frame by half
a turn, so the inverted mark's descriptors are the plain ones with their 4 x 4 cells reversed
(no second extraction). A similarity layout of ``min_inliers`` or more keypoints places the mark,
at any position, scale and rotation, and gives its box in the photo.

Simple round marks with few corners give few keypoints; ``scripts/ablate_marks.py`` measures
what this finds on a labelled folder with a ``marks.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from detector.verify import MAX_SIDE, LocalFeatures, extract, fit_layout

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


@dataclass(frozen=True)
class Mark:
    """One brand's mark, ready to search for: its features as drawn and inverted, and the box of
    the drawing in the features' frame."""

    brand: str
    name: str
    plain: LocalFeatures
    inverted: LocalFeatures
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Sighting:
    """A mark found in a photo: keypoints in its layout, whether it was found in the other
    polarity, and its box (x0, y0, x1, y1) as fractions of the photo's width and height."""

    brand: str
    name: str
    inliers: int
    inverted: bool
    box: tuple[float, float, float, float]


def prepare_mark(image: Image.Image, brand: str, name: str) -> Mark:
    """A mark's features from its image: transparency flattened on white, cropped to the drawing,
    padded by PAD."""
    flat = Image.new("RGB", image.size, "white")
    flat.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
    grey = np.asarray(flat.convert("L"))
    rows, cols = np.nonzero(grey < BACKGROUND_LEVEL)
    if len(rows):
        flat = flat.crop((int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1))
    pad = round(PAD * max(flat.size))
    canvas = Image.new("RGB", (flat.width + 2 * pad, flat.height + 2 * pad), "white")
    canvas.paste(flat, (pad, pad))
    features = extract(canvas)
    scale = MAX_SIDE / max(canvas.size)
    box = (pad * scale, pad * scale, (pad + flat.width) * scale, (pad + flat.height) * scale)
    inverted = LocalFeatures(features.points, features.descriptors[:, POLARITY], features.thumbnail)
    return Mark(brand, name, features, inverted, box)


def find_marks(photo: LocalFeatures, size: tuple[int, int], marks: list[Mark],
               min_inliers: int = MIN_INLIERS) -> list[Sighting]:
    """The marks found in a photo (its SIFT features and its size in pixels), most keypoints first."""
    frame = MAX_SIDE / max(size)
    width, height = size[0] * frame, size[1] * frame
    found = []
    for mark in marks:
        best = max(((fit_layout(photo, features), inverted)
                    for features, inverted in ((mark.plain, False), (mark.inverted, True))),
                   key=lambda fit: fit[0][0])
        (inliers, maps), inverted = best
        if inliers < min_inliers or not maps:
            continue
        x0, y0, x1, y1 = mark.box
        corners = np.array([[x0, y0, 1], [x1, y0, 1], [x1, y1, 1], [x0, y1, 1]]) @ maps[0].T
        xs, ys = corners[:, 0] / corners[:, 2], corners[:, 1] / corners[:, 2]
        box = (max(0.0, xs.min() / width), max(0.0, ys.min() / height),
               min(1.0, xs.max() / width), min(1.0, ys.max() / height))
        found.append(Sighting(mark.brand, mark.name, inliers, inverted, tuple(round(v, 4) for v in box)))
    return sorted(found, key=lambda s: -s.inliers)
