"""Geometric verification: do a listing photo and a reference photo share a rigid layout of local
features? SIFT keypoints, Lowe's ratio test, one-to-one matches, then a RANSAC similarity
transform (rotation, uniform scale, translation). The number of distinct inlier keypoints is the
evidence: copies, crops, pastes and re-compressions keep many; look-alike products keep few.
A listing is also checked mirrored (sellers flip photos, and no rotation maps a mirror image).
A pair where either photo has fewer than MIN_KEYPOINTS keypoints cannot be verified: flat
artwork gives no geometric evidence either way.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

VERIFIER_ID = "sift500-ratio0.75-similarity-ransac4-mirror-v3"
MAX_SIDE = 512
MAX_FEATURES = 500
RATIO = 0.75
RANSAC_PIXELS = 4.0
MIN_KEYPOINTS = 4


@dataclass
class LocalFeatures:
    """Keypoint positions (float32 [n, 2], in a MAX_SIDE frame) and SIFT descriptors (uint8 [n, 128])."""

    points: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.points)


EMPTY = LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8))


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
    return LocalFeatures(points, features.descriptors[:, _MIRROR])


def verify_pair(query: QueryFeatures, reference: LocalFeatures) -> int | None:
    """Matching keypoints between a listing photo (either way round) and a reference photo, or
    ``None`` when either has too few keypoints for the count to mean anything."""
    if len(query.plain) < MIN_KEYPOINTS or len(reference) < MIN_KEYPOINTS:
        return None
    return max(count_inliers(query.plain, reference), count_inliers(query.mirrored, reference))


def _cv2():
    import cv2

    return cv2


def extract(image: Image.Image) -> LocalFeatures:
    """SIFT features of an RGB picture, scaled so that its longer side is at most MAX_SIDE."""
    cv2 = _cv2()
    grey = image.convert("L")
    scale = MAX_SIDE / max(grey.size)
    if scale < 1:
        grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))), Image.BILINEAR)
    pixels = np.asarray(grey, dtype=np.uint8)
    if min(pixels.shape) < 16:
        return EMPTY
    keypoints, descriptors = cv2.SIFT_create(nfeatures=MAX_FEATURES).detectAndCompute(pixels, None)
    if descriptors is None or not keypoints:
        return EMPTY
    points = np.array([kp.pt for kp in keypoints], np.float32)
    return LocalFeatures(points, np.clip(descriptors, 0, 255).astype(np.uint8))


def count_inliers(query: LocalFeatures, reference: LocalFeatures) -> int:
    """Distinct reference keypoints consistent with one similarity transform (0 when none)."""
    if len(query) < 4 or len(reference) < 4:
        return 0
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
        return 0
    matches = list(best.values())
    src = query.points[[m.queryIdx for m in matches]]
    dst = reference.points[[m.trainIdx for m in matches]]
    transform, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PIXELS)
    if transform is None or mask is None:
        return 0
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    if not 0.1 < scale < 10:
        return 0  # a collapsed or exploded fit is not a copy
    inlying = dst[mask.ravel().astype(bool)]
    return len({(round(x / 3), round(y / 3)) for x, y in inlying})


def pack(features: list[LocalFeatures]) -> bytes:
    """Serialise a list of feature sets into one .npz payload (row-aligned with products)."""
    offsets = np.cumsum([0] + [len(f) for f in features]).astype(np.int64)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        offsets=offsets,
        points=np.concatenate([f.points for f in features]) if features else EMPTY.points,
        descriptors=np.concatenate([f.descriptors for f in features]) if features else EMPTY.descriptors,
    )
    return buffer.getvalue()


def unpack(payload: bytes) -> list[LocalFeatures]:
    """Inverse of :func:`pack`."""
    with np.load(io.BytesIO(payload), allow_pickle=False) as data:
        offsets, points, descriptors = data["offsets"], data["points"], data["descriptors"]
    return [LocalFeatures(points[a:b], descriptors[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
