"""Simple brand marks found by their shape, where SIFT finds too few corners on them.

A round mark (a disc with a swirl, three arcs in a circle) gives SIFT a handful of keypoints, so
:mod:`detector.marks` rarely places it. Such a mark is one colour on its background, and a
counterfeit prints it in another colour on another product: the photo's pixels there are an
affine function of the mark's silhouette (a·mask + b, with a negative for a light mark on a dark
product). Normalised cross-correlation is invariant to exactly that, so the silhouette is
correlated with each colour channel of the photo at several sizes and angles, and the best
absolute correlation is the mark's score. A mark counts as found when its score reaches a level
calibrated at ``index build`` from impostors: other brands' catalogue photos, which show other
marks on the same kinds of product (no labels).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from detector.marks import BACKGROUND_LEVEL, Mark, Sighting

SHAPE_KEYPOINTS = 40
"""Marks with fewer SIFT keypoints than this are also searched by shape."""
FRAME = 256
"""The photo's longer side, in pixels, for the shape search."""
SIDES = (24, 32, 40, 50, 64, 80, 100, 128)
"""The mark's longer side in that frame: from about a tenth of the photo to a half."""
ANGLES = (-30, -15, 0, 15, 30)
MARGIN = 0.02
"""A mark's level sits this far above the best score any impostor reached."""
MAX_LEVEL = 0.95
"""A mark whose impostors score above this cannot be told from them by shape: it is not searched."""


def photo_pixels(image: Image.Image) -> np.ndarray:
    """The photo as float32 RGB with its longer side FRAME pixels."""
    scale = FRAME / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return np.asarray(image.convert("RGB").resize(size, Image.BILINEAR), np.float32)


def silhouette(mark: Mark) -> np.ndarray:
    """The mark's drawing as a 0/255 mask, cut from its stored grey thumbnail (half the features'
    frame) by its box."""
    thumb = mark.plain.thumbnail
    x0, y0, x1, y1 = (max(0, round(v / 2)) for v in mark.box)
    return np.where(thumb[y0:y1, x0:x1] < BACKGROUND_LEVEL, 255, 0).astype(np.uint8)


def templates(mask: np.ndarray) -> list[tuple[np.ndarray, tuple[float, float, float, float]]]:
    """The silhouette at each size and angle, with a margin of background around it, and where
    the drawing lies in each (x0, y0, x1, y1 in the template's pixels)."""
    import cv2

    found = []
    for side in SIDES:
        scale = side / max(mask.shape)
        w, h = max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale))
        pad = max(3, round(0.2 * side))
        drawn = cv2.copyMakeBorder(cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA), pad, pad, pad, pad,
                                   cv2.BORDER_CONSTANT, value=0)
        for angle in ANGLES:
            if angle:
                centre = (drawn.shape[1] / 2, drawn.shape[0] / 2)
                turn = cv2.getRotationMatrix2D(centre, angle, 1.0)
                template = cv2.warpAffine(drawn, turn, (drawn.shape[1], drawn.shape[0]), flags=cv2.INTER_LINEAR)
            else:
                template = drawn
            rows, cols = np.nonzero(template > 127)
            if not len(rows):  # a drawing thinner than a pixel at this size
                continue
            found.append((template.astype(np.float32),
                          (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))))
    return found


def best_match(pixels: np.ndarray, shapes: list[tuple[np.ndarray, tuple]]) -> tuple[float, bool, tuple]:
    """The best absolute correlation of any template with any colour channel, whether the mark is
    inverted (lighter than its ground: the file draws it darker than its white), and the
    drawing's box as fractions of the photo."""
    import cv2

    height, width = pixels.shape[:2]
    best, inverted, box = 0.0, False, (0.0, 0.0, 0.0, 0.0)
    for template, (x0, y0, x1, y1) in shapes:
        if template.shape[0] > height or template.shape[1] > width or not template.any():
            continue
        for channel in range(pixels.shape[2]):
            scores = cv2.matchTemplate(np.ascontiguousarray(pixels[:, :, channel]), template, cv2.TM_CCOEFF_NORMED)
            low, high, low_at, high_at = cv2.minMaxLoc(scores)
            value, at, lighter = (high, high_at, True) if high >= -low else (-low, low_at, False)
            if np.isfinite(value) and value > best:
                best, inverted = float(value), lighter
                box = ((at[0] + x0) / width, (at[1] + y0) / height, (at[0] + x1) / width, (at[1] + y1) / height)
    return best, inverted, tuple(round(min(1.0, max(0.0, v)), 4) for v in box)


class ShapeSearch:
    """The index's simple marks (fewer than SHAPE_KEYPOINTS keypoints, with a calibrated level),
    searched by shape."""

    def __init__(self, marks: list[Mark], levels: dict[tuple[str, str], float | None]):
        self.marks = [(mark, levels[(mark.brand, mark.name)], templates(silhouette(mark))) for mark in marks
                      if len(mark.plain) < SHAPE_KEYPOINTS and levels.get((mark.brand, mark.name)) is not None]

    def __bool__(self) -> bool:
        return bool(self.marks)

    def find(self, pixels: np.ndarray) -> list[Sighting]:
        """The simple marks whose shape is in the photo (pixels from :func:`photo_pixels`), best first."""
        found = []
        for mark, level, shapes in self.marks:
            score, inverted, box = best_match(pixels, shapes)
            if score >= level:
                found.append(Sighting(mark.brand, mark.name, 0, inverted, box, round(score, 4)))
        return sorted(found, key=lambda s: -s.score)


def calibrate_level(mark: Mark, impostors: list[np.ndarray]) -> float | None:
    """The score a photo must reach for the mark to count as found: MARGIN above the best score
    among ``impostors`` (other brands' catalogue photos, as :func:`photo_pixels`); ``None``
    without impostors, for a drawing too thin to template, or when impostors score above MAX_LEVEL."""
    shapes = templates(silhouette(mark))
    if not impostors or not shapes:
        return None
    level = max(best_match(pixels, shapes)[0] for pixels in impostors) + MARGIN
    return round(level, 4) if level <= MAX_LEVEL else None
