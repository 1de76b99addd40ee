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

That correlation also expects the ground around the mark to differ from the mark, which fails
when a dark disc is printed on a dark product: the disc's edge vanishes. A mark with a pattern
inside its outline (arcs in a disc, a swirl) is therefore also correlated within its convex hull
alone (a masked correlation, ``hull`` templates), which ignores the ground; it has its own level,
calibrated the same way, and is tried only when the first correlation found nothing.

A filled silhouette's correlation is dominated by its area: a plain disc scores almost as well as
a round mark with a pattern inside. The outline's score is therefore the correlation times how
many of the silhouette's edges the photo has there, at the same orientation (modulo half a turn,
so either polarity): its detail must be in the photo too. The best few places by correlation are
checked this way, and the best product is the score.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

from detector.marks import BACKGROUND_LEVEL, Mark
from detector.records import Sighting

SHAPE_KEYPOINTS = 40
"""Marks with fewer SIFT keypoints than this are also searched by shape."""
SMALL_WIDTHS = (0.1, 0.15)
"""Shares of a photo's width at which SIFT must place a mark's drawing (printed plainly, upright
and turned 20 degrees) for the mark to be left to its keypoints: a mark of rings and discs can
have many keypoints in its file and still lose them all when small."""
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


def searched_by_shape(mark: Mark) -> bool:
    """Whether the mark is simple, and is also searched by shape: it has fewer than
    SHAPE_KEYPOINTS keypoints, or SIFT misses its drawing printed at one of SMALL_WIDTHS of a
    plain photo's width (see :func:`detector.marks.find_marks`)."""
    if len(mark.plain) < SHAPE_KEYPOINTS:
        return True
    from detector.marks import find_marks
    from detector.verify import MAX_SIDE, extract

    drawing = Image.fromarray(silhouette(mark))
    for width in SMALL_WIDTHS:
        scale = width * MAX_SIDE / max(drawing.size)
        small = drawing.resize((max(1, round(drawing.width * scale)), max(1, round(drawing.height * scale))),
                               Image.BILINEAR)
        for angle in (0, 20):
            shape = small.rotate(angle, expand=True)
            photo = Image.new("RGB", (MAX_SIDE, MAX_SIDE), (170, 175, 180))
            x, y = (MAX_SIDE - shape.width) // 2, (MAX_SIDE - shape.height) // 2
            photo.paste((30, 40, 60), (x, y, x + shape.width, y + shape.height), shape)
            if not find_marks(extract(photo), [mark]):
                return True
    return False


def silhouette(mark: Mark) -> np.ndarray:
    """The mark's drawing as a 0/255 mask, cut from its stored grey thumbnail (half the features'
    frame) by its box."""
    thumb = mark.plain.thumbnail
    x0, y0, x1, y1 = (max(0, round(v / 2)) for v in mark.box)
    return np.where(thumb[y0:y1, x0:x1] < BACKGROUND_LEVEL, 255, 0).astype(np.uint8)


EDGE_BINS = 8
"""Edge orientations, over half a turn (a light mark on a dark ground has the same edges)."""
PHOTO_EDGE = 60.0
"""Sobel gradient magnitude (of the strongest colour channel) at which a photo pixel is an edge."""
CANDIDATES = 3
"""Places, best by correlation over every size, angle and channel, whose edges are checked."""
SHAPE_RULE = "correlation-x-edges-v1"
"""How a shape is scored: levels an index stores were calibrated by this rule, and are only
meaningful under it (an index built under another must be rebuilt)."""


class Edges(NamedTuple):
    """Where a picture has edges of each orientation, each widened by a pixel and by one
    orientation bin either way: ``near[b, y, x]``."""

    near: np.ndarray


class Template(NamedTuple):
    """The silhouette at one size and angle (0/255 float32) and where its drawing lies (x0, y0,
    x1, y1 in its pixels); for an outline template (a margin of ground around the drawing) its
    edges: rows, columns and orientation bins; for a hull template the hull it is correlated
    within."""

    pixels: np.ndarray
    box: tuple[float, float, float, float]
    edges: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    within: np.ndarray | None = None


def _template(pixels: np.ndarray, within: np.ndarray | None = None) -> Template:
    rows, cols = np.nonzero(within if within is not None else pixels > 127)
    box = (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))
    if within is not None:
        return Template(pixels, box, None, within)
    edges, bins = _orientations(pixels, 4 * PHOTO_EDGE)  # a 0/255 step scores 1020 across
    return Template(pixels, box, (*np.nonzero(edges), bins[edges]))


def _orientations(picture: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Edge pixels (gradient magnitude of the strongest channel above ``level``) and their
    orientation bins."""
    import cv2

    planes = picture[:, :, None] if picture.ndim == 2 else picture
    gx = np.stack([cv2.Sobel(planes[:, :, c], cv2.CV_32F, 1, 0, ksize=3) for c in range(planes.shape[2])], -1)
    gy = np.stack([cv2.Sobel(planes[:, :, c], cv2.CV_32F, 0, 1, ksize=3) for c in range(planes.shape[2])], -1)
    strongest = (gx * gx + gy * gy).argmax(-1)[..., None]
    gx, gy = np.take_along_axis(gx, strongest, -1)[..., 0], np.take_along_axis(gy, strongest, -1)[..., 0]
    bins = (np.mod(np.arctan2(gy, gx), np.pi) / np.pi * EDGE_BINS).astype(np.int32) % EDGE_BINS
    return gx * gx + gy * gy > level * level, bins


def photo_edges(pixels: np.ndarray) -> Edges:
    """The photo's edges (pixels from :func:`photo_pixels`), ready for :func:`edge_agreement`."""
    import cv2

    edges, bins = _orientations(pixels, PHOTO_EDGE)
    widened = np.stack([cv2.dilate((edges & (bins == b)).astype(np.uint8), np.ones((3, 3), np.uint8))
                        for b in range(EDGE_BINS)])
    near = np.stack([widened[b] | widened[(b - 1) % EDGE_BINS] | widened[(b + 1) % EDGE_BINS]
                     for b in range(EDGE_BINS)]) > 0
    return Edges(near)


def edge_agreement(edges: Edges, template: Template, x: int, y: int) -> float:
    """The share of the template's edges that the photo has at the same orientation, with the
    template's top-left corner at (x, y)."""
    rows, cols, bins = template.edges
    if not len(rows):
        return 0.0
    return float(edges.near[bins, rows + y, cols + x].mean())


def templates(mask: np.ndarray) -> list[Template]:
    """The silhouette at each size and angle, with a margin of background around it, where the
    drawing lies in each (x0, y0, x1, y1 in the template's pixels), and its edges."""
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
            if (template > 127).any():  # not a drawing thinner than a pixel at this size
                found.append(_template(template.astype(np.float32)))
    return found


FLAT_VARIANCE = 4.0
"""Pixels under a hull whose variance is below this (a spread of 2 grey levels) are flat: no score."""
HULL_HOLES = 0.1
"""A hull template needs this share of its hull (away from the outline) left empty by the
drawing: a solid silhouette has nothing inside to correlate."""


def hull_templates(mask: np.ndarray) -> list[Template]:
    """The silhouette at each size and angle with the convex hull it is correlated within (the
    ground outside is ignored), for marks with a pattern inside their outline; empty otherwise."""
    import cv2

    found = []
    for side in SIDES:
        scale = side / max(mask.shape)
        w, h = max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale))
        drawn = cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA)
        points = cv2.findNonZero((drawn > 127).astype(np.uint8))
        if points is None:
            continue
        hull = np.zeros_like(drawn)
        cv2.fillConvexPoly(hull, cv2.convexHull(points), 255)
        for angle in ANGLES:
            if angle:
                turn = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
                template = cv2.warpAffine(drawn, turn, (w, h), flags=cv2.INTER_LINEAR)
                inside = cv2.warpAffine(hull, turn, (w, h), flags=cv2.INTER_NEAREST) > 127
            else:
                template, inside = drawn, hull > 127
            core = cv2.erode(inside.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            if not core.any() or np.mean(template[core] < 128) < HULL_HOLES:
                continue
            found.append(_template(template.astype(np.float32), inside.astype(np.uint8)))
    return found


def masked_correlation(channel: np.ndarray, template: np.ndarray, within: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation of ``template`` with ``channel`` counting only the pixels where
    ``within`` is set, at every position; 0 where the photo is flat there. Three plain
    correlations (4-5x faster than OpenCV's masked matching, which computes more): the zero-mean
    template, and the mask with the pixels and with their squares."""
    import cv2

    mask = within.astype(np.float32)
    count = float(mask.sum())
    centred = (template - template[within > 0].mean()) * mask
    spread = float(np.sqrt((centred * centred).sum()))
    pixels = channel - channel.mean()  # smaller sums, less float32 rounding in the squares
    product = cv2.matchTemplate(pixels, centred, cv2.TM_CCORR)
    total = cv2.matchTemplate(pixels, mask, cv2.TM_CCORR)
    squares = cv2.matchTemplate(pixels * pixels, mask, cv2.TM_CCORR)
    variance = squares - total * total / count
    flat = variance < FLAT_VARIANCE * count
    scores = product / (np.sqrt(np.where(flat, 1.0, variance)) * max(spread, 1e-6))
    return np.where(flat, 0.0, scores).astype(np.float32)


def best_match(pixels: np.ndarray, shapes: list, edges: Edges | None = None) -> tuple[float, bool, tuple]:
    """The mark's score in the photo, whether it is inverted (lighter than its ground: the file
    draws it darker than its white), and the drawing's box as fractions of the photo.

    For :func:`templates`, the best absolute correlation of any template with any colour channel,
    at the CANDIDATES best places times the share of the template's edges found there
    (:func:`edge_agreement`; ``edges`` from :func:`photo_edges`, computed when not given). For
    :func:`hull_templates`, the best correlation within the hull alone (where a mark's outline
    vanishes on the product, so do its edges: weighting by them made public-logo's hull search
    "find" Firefox's mark in 23 photos that do not show it)."""
    import cv2

    height, width = pixels.shape[:2]
    places = []  # (correlation, template, x, y, lighter)
    for template in shapes:
        pattern = template.pixels
        if pattern.shape[0] > height or pattern.shape[1] > width or not pattern.any():
            continue
        for channel in range(pixels.shape[2]):
            plane = np.ascontiguousarray(pixels[:, :, channel])
            scores = (masked_correlation(plane, pattern, template.within) if template.within is not None
                      else cv2.matchTemplate(plane, pattern, cv2.TM_CCOEFF_NORMED))
            low, high, low_at, high_at = cv2.minMaxLoc(scores)
            value, at, lighter = (high, high_at, True) if high >= -low else (-low, low_at, False)
            if np.isfinite(value):
                places.append((float(value), template, at[0], at[1], lighter))
    if not places:
        return 0.0, False, (0.0, 0.0, 0.0, 0.0)
    places.sort(key=lambda place: -place[0])
    if places[0][1].within is None:  # outline templates: the drawing's edges must be there too
        edges = edges if edges is not None else photo_edges(pixels)
        places = [max(((value * edge_agreement(edges, template, x, y), template, x, y, lighter)
                       for value, template, x, y, lighter in places[:CANDIDATES]), key=lambda place: place[0])]
    best, template, x, y, inverted = places[0]
    x0, y0, x1, y1 = template.box
    box = ((x + x0) / width, (y + y0) / height, (x + x1) / width, (y + y1) / height)
    return best, inverted, tuple(round(min(1.0, max(0.0, v)), 4) for v in box)


class ShapeSearch:
    """The index's simple marks (those with a calibrated level: :func:`searched_by_shape` at
    ``index build``), searched by shape: by outline, then, where that finds nothing and a hull
    level was calibrated, within the hull."""

    def __init__(self, marks: list[Mark], levels: dict[tuple[str, str], float | None],
                 hull_levels: dict[tuple[str, str], float | None] | None = None):
        hull_levels = hull_levels or {}
        self.marks = []
        for mark in marks:
            key = (mark.brand, mark.name)
            if levels.get(key) is None:
                continue
            mask = silhouette(mark)
            hull = hull_levels.get(key)
            self.marks.append((mark, levels[key], templates(mask), hull, hull_templates(mask) if hull else []))

    def __bool__(self) -> bool:
        return bool(self.marks)

    def find(self, pixels: np.ndarray) -> list[Sighting]:
        """The simple marks whose shape is in the photo (pixels from :func:`photo_pixels`), best first."""
        found = []
        edges = photo_edges(pixels) if self.marks else None
        for mark, level, shapes, hull_level, hulls in self.marks:
            score, inverted, box = best_match(pixels, shapes, edges)
            if score < level and hulls:
                score, inverted, box = best_match(pixels, hulls)
                level = hull_level
            if score >= level:
                found.append(Sighting(mark.brand, mark.name, 0, inverted, box, round(score, 4)))
        return sorted(found, key=lambda s: -s.score)


def calibrate_level(mark: Mark, impostors: list[np.ndarray], hull: bool = False) -> float | None:
    """The score a photo must reach for the mark to count as found: MARGIN above the best score
    among ``impostors`` (other brands' catalogue photos, as :func:`photo_pixels`); ``None``
    without impostors, for a drawing too thin to template (or, with ``hull``, without a pattern
    inside its outline), or when impostors score above MAX_LEVEL."""
    shapes = hull_templates(silhouette(mark)) if hull else templates(silhouette(mark))
    if not impostors or not shapes:
        return None
    level = max(best_match(pixels, shapes)[0] for pixels in impostors) + MARGIN
    return round(level, 4) if level <= MAX_LEVEL else None
