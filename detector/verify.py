"""Geometric verification: do a listing photo and a reference photo share a rigid layout of local
features, and once aligned, the same outline? SIFT keypoints, Lowe's ratio test, one-to-one
matches, then a RANSAC similarity transform (rotation, uniform scale, translation) that carries
the reference onto the listing. Two numbers are the evidence:

- ``inliers``: distinct reference keypoints that fit the transform. Copies, crops, pastes and
  re-compressions keep many; unrelated products keep few.
- ``alignment``: the share of the reference's edges that the listing photo has too, once the
  reference is warped onto it. A copy keeps its whole outline (about 0.9 or more, less where a
  caption covers it); a look-alike of another colour or with one part changed matches some
  keypoints but leaves a quarter or more of the outline unmatched.

A listing is also checked mirrored (sellers flip photos, and no rotation maps a mirror image).
A pair where either photo has fewer than MIN_KEYPOINTS keypoints cannot be verified: flat
artwork gives no geometric evidence either way.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

VERIFIER_ID = "sift2000-c0.02-up512-ratio0.75-similarity-ransac4-mirror-edges256-homography-layout3-v5"
MAX_SIDE = 512
"""Both photos are resized (up or down) so that their longer side is this long before SIFT: small
photos and small pasted products then keep enough keypoints to verify."""
MAX_FEATURES = 2000
CONTRAST = 0.02
"""SIFT's contrast threshold, half OpenCV's default, so that blurred, faded and greyscaled
copies keep keypoints."""
RATIO = 0.75
RANSAC_PIXELS = 4.0
MIN_KEYPOINTS = 4
MIN_LAYOUT = 3
"""Inliers below this are no layout (two points fix a similarity transform exactly): no outline is
measured for them."""
EDGE_LEVEL = 40.0
"""Gradient magnitude (grey levels per pixel, after a 1-pixel blur) above which a pixel is an edge."""
EDGE_TOLERANCE = 5
"""A reference edge counts as found when the listing has an edge within this window (pixels)."""
MIN_EDGE_PIXELS = 20


@dataclass
class LocalFeatures:
    """Keypoint positions (float32 [n, 2], in a MAX_SIDE frame), SIFT descriptors (uint8 [n, 128])
    and the grey picture at half that frame (uint8 [h, w]), for checking edges once aligned."""

    points: np.ndarray
    descriptors: np.ndarray
    thumbnail: np.ndarray

    def __len__(self) -> int:
        return len(self.points)


EMPTY = LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8), np.zeros((0, 0), np.uint8))


@dataclass
class QueryFeatures:
    """A listing photo's features, as taken and mirrored."""

    plain: LocalFeatures
    mirrored: LocalFeatures


def extract_query(image: Image.Image) -> QueryFeatures:
    """Features of a listing photo and of its mirror image."""
    plain = extract(image)
    return QueryFeatures(plain, mirrored(plain))


# A SIFT descriptor is 4 x 4 spatial cells (rows along the keypoint's perpendicular axis) of 8
# orientation bins. Mirroring the photo mirrors each keypoint's frame: the cell rows reverse and
# every orientation o becomes -o. Permuting the descriptor is the same as extracting from the
# mirrored photo (tests/detector/test_verify.py checks it), at no cost.
_MIRROR = np.arange(128).reshape(4, 4, 8)[::-1][:, :, (8 - np.arange(8)) % 8].reshape(-1)


def mirrored(features: LocalFeatures) -> LocalFeatures:
    """The features of the mirror image, derived from the photo's own (x is negated: the
    verification fits a shift anyway)."""
    points = features.points.copy()
    points[:, 0] *= -1
    return LocalFeatures(points, features.descriptors[:, _MIRROR], features.thumbnail)


class Outcome(NamedTuple):
    """A verified pair: matching keypoints in one layout, and the share of the reference's edges
    found in the listing once aligned, to 4 decimals (``None`` for fewer than MIN_LAYOUT
    keypoints, or when the reference has too few edges to tell)."""

    inliers: int
    alignment: float | None


def verify_pair(query: QueryFeatures, reference: LocalFeatures) -> Outcome | None:
    """Verify a listing photo (either way round) against a reference photo, or ``None`` when
    either has too few keypoints for the evidence to mean anything."""
    if len(query.plain) < MIN_KEYPOINTS or len(reference) < MIN_KEYPOINTS:
        return None
    best = None
    for flipped, features in ((False, query.plain), (True, query.mirrored)):
        inliers, maps = fit_layout(features, reference)
        if best is None or inliers > best[0]:
            best = (inliers, maps, flipped)
    inliers, maps, flipped = best
    if inliers < MIN_LAYOUT:
        return Outcome(inliers, None)
    found = [edge_alignment(query.plain.thumbnail, reference.thumbnail, m, flipped) for m in maps]
    found = [a for a in found if a is not None]
    return Outcome(inliers, round(max(found), 4) if found else None)


def _cv2():
    import cv2

    return cv2


def extract(image: Image.Image) -> LocalFeatures:
    """SIFT features of an RGB picture resized so that its longer side is MAX_SIDE."""
    cv2 = _cv2()
    grey = image.convert("L")
    scale = MAX_SIDE / max(grey.size)
    if scale != 1:
        grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))),
                           Image.BICUBIC if scale > 1 else Image.BILINEAR)
    pixels = np.asarray(grey, dtype=np.uint8)
    if min(pixels.shape) < 16:
        return EMPTY
    thumbnail = cv2.resize(pixels, (max(1, round(pixels.shape[1] / 2)), max(1, round(pixels.shape[0] / 2))),
                           interpolation=cv2.INTER_AREA)
    keypoints, descriptors = cv2.SIFT_create(nfeatures=MAX_FEATURES, contrastThreshold=CONTRAST).detectAndCompute(
        pixels, None)
    if descriptors is None or not keypoints:
        return LocalFeatures(EMPTY.points, EMPTY.descriptors, thumbnail)
    points = np.array([kp.pt for kp in keypoints], np.float32)
    return LocalFeatures(points, np.clip(descriptors, 0, 255).astype(np.uint8), thumbnail)


def fit_layout(query: LocalFeatures, reference: LocalFeatures) -> tuple[int, list[np.ndarray]]:
    """Fit the one-to-one keypoint matches: how many distinct reference keypoints fit one
    similarity transform, and the 3 x 3 maps (reference frame to listing frame) worth aligning
    edges with: that transform, and, for a layout of MIN_LAYOUT or more, a homography when one
    fits as many matches (a photo taken at an angle bends straight layouts). ``(0, [])`` when
    nothing fits."""
    if len(query) < 4 or len(reference) < 4:
        return 0, []
    cv2 = _cv2()
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    pairs = matcher.knnMatch(query.descriptors.astype(np.float32), reference.descriptors.astype(np.float32), k=2)
    best: dict[int, object] = {}
    for pair in pairs:
        if len(pair) == 2 and pair[0].distance < RATIO * pair[1].distance:
            match = pair[0]
            if match.trainIdx not in best or match.distance < best[match.trainIdx].distance:
                best[match.trainIdx] = match
    if len(best) < 4:
        return 0, []
    matches = list(best.values())
    src = reference.points[[m.trainIdx for m in matches]]
    dst = query.points[[m.queryIdx for m in matches]]
    transform, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PIXELS)
    if transform is None or mask is None:
        return 0, []
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    if not 0.1 < scale < 10:
        return 0, []  # a collapsed or exploded fit is not a copy
    inliers = _distinct(src[mask.ravel().astype(bool)])
    maps = [np.vstack([transform, [0.0, 0.0, 1.0]])]
    if inliers >= MIN_LAYOUT and len(matches) >= 8:
        homography, hmask = cv2.findHomography(src, dst, cv2.RANSAC, RANSAC_PIXELS)
        if homography is not None and _plausible(homography, reference) and _distinct(src[hmask.ravel().astype(bool)]) >= inliers:
            maps.append(homography)
    return inliers, maps


def _distinct(points: np.ndarray) -> int:
    return len({(round(x / 3), round(y / 3)) for x, y in points})


def _plausible(homography: np.ndarray, reference: LocalFeatures) -> bool:
    """Whether a homography is a view of the reference at an angle: its frame stays a convex,
    not collapsed quadrilateral."""
    cv2 = _cv2()
    h, w = (2 * n for n in reference.thumbnail.shape) if reference.thumbnail.size else (MAX_SIDE, MAX_SIDE)
    corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]]).reshape(-1, 1, 2)
    mapped = cv2.perspectiveTransform(corners, homography)
    if mapped is None or not np.isfinite(mapped).all():
        return False
    mapped = mapped.reshape(-1, 2)
    area = abs(cv2.contourArea(mapped))
    return cv2.isContourConvex(mapped) and 0.01 < area / (w * h) < 100


def _edges(grey: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    blurred = cv2.GaussianBlur(grey.astype(np.float32), (0, 0), 1.0)
    gx, gy = cv2.Sobel(blurred, cv2.CV_32F, 1, 0), cv2.Sobel(blurred, cv2.CV_32F, 0, 1)
    return np.sqrt(gx * gx + gy * gy) > EDGE_LEVEL


def edge_alignment(query: np.ndarray, reference: np.ndarray, transform: np.ndarray, flipped: bool) -> float | None:
    """Share of the reference thumbnail's edges, mapped by ``transform`` (3 x 3, fitted in the
    MAX_SIDE frames; for ``flipped``, onto the listing's mirrored keypoints), that fall within
    EDGE_TOLERANCE pixels of an edge of the listing thumbnail; ``None`` when fewer than
    MIN_EDGE_PIXELS reference edges land inside the listing."""
    cv2 = _cv2()
    if min(query.shape) < 2 or min(reference.shape) < 2:
        return None
    half = np.diag([0.5, 0.5, 1.0])
    warp = half @ transform @ np.linalg.inv(half)  # the thumbnails are half the MAX_SIDE frame
    if flipped:  # mirrored keypoints have x negated: in the flipped thumbnail x is (width - 1) - x
        query = np.ascontiguousarray(query[:, ::-1])
        warp = np.array([[1.0, 0.0, query.shape[1] - 1], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ warp
    size = (query.shape[1], query.shape[0])
    inside = cv2.warpPerspective(np.ones_like(reference), warp, size, flags=cv2.INTER_NEAREST, borderValue=0) > 0
    warped = cv2.warpPerspective(reference, warp, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    wanted = _edges(warped) & inside
    if wanted.sum() < MIN_EDGE_PIXELS:
        return None
    near = cv2.dilate(_edges(query).astype(np.uint8), np.ones((EDGE_TOLERANCE, EDGE_TOLERANCE), np.uint8)) > 0
    return float((wanted & near).sum() / wanted.sum())


def pack(features: list[LocalFeatures]) -> bytes:
    """Serialise a list of feature sets into one compressed .npz payload (row-aligned with
    products; compression takes the flat grey thumbnails to about a third)."""
    offsets = np.cumsum([0] + [len(f) for f in features]).astype(np.int64)
    shapes = np.array([f.thumbnail.shape for f in features], np.int64).reshape(-1, 2)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        offsets=offsets,
        points=np.concatenate([f.points for f in features]) if features else EMPTY.points,
        descriptors=np.concatenate([f.descriptors for f in features]) if features else EMPTY.descriptors,
        shapes=shapes,
        thumbnails=np.concatenate([f.thumbnail.ravel() for f in features]) if features else np.zeros(0, np.uint8),
    )
    return buffer.getvalue()


def unpack(payload: bytes) -> list[LocalFeatures]:
    """Inverse of :func:`pack`."""
    with np.load(io.BytesIO(payload), allow_pickle=False) as data:
        offsets, points, descriptors = data["offsets"], data["points"], data["descriptors"]
        shapes, pixels = data["shapes"], data["thumbnails"]
    starts = np.cumsum([0] + [int(h * w) for h, w in shapes])
    return [
        LocalFeatures(points[a:b], descriptors[a:b], pixels[s : s + h * w].reshape(h, w))
        for a, b, s, (h, w) in zip(offsets[:-1], offsets[1:], starts[:-1], shapes)
    ]
