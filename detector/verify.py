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
- ``unique``: with several candidates verified together, the keypoints that match this one
  clearly better than any other candidate, in its layout. Sibling products of one brand share
  the logo and layout, so their plain inlier counts are close; the unique ones tell them apart.
- ``sharpness`` and ``residual``: how exactly the reference's picture is in the photo, what tells
  an edited copy of the catalogue photo from a new photo of the product. An edit (crop, turn,
  paste, recolour, re-compression) moves the catalogue picture's pixels as a whole: its edges land
  on the photo's own to the pixel, and its matching keypoints fit one rotation, scale and shift
  to a fraction of a pixel. A new photo of the product (at an angle, of a carton in 3D, through a
  phone's lens) matches the same keypoints only to a pixel or two, and the edges only nearby.
  ``sharpness`` is the share of the reference's edges, aligned, that fall on an edge of the photo
  at the same pixel of the half frame (``alignment`` allows EDGE_TOLERANCE pixels);
  ``residual`` the median distance, in MAX_SIDE pixels, of the matches the rigid fit keeps.
- ``colour``: how well the reference's colours, warped onto the listing, agree with the
  listing's there (1 is the same colours), after each photo's channels are divided by their
  mean over the matched region, so that shop light cancels out. Variants that differ mainly in
  colour (vanilla and blueberry yoghurt in one carton design) share most keypoints; their
  colours still differ. With several well-fitted candidates, each pixel counts as much as the
  candidates' colours differ there: what all siblings share (the white carton, the logo) tells
  nothing, the flavour picture tells which.

A listing is also checked mirrored (sellers flip photos, and no rotation maps a mirror image).
A pair where either photo has fewer than MIN_KEYPOINTS keypoints cannot be verified: flat
artwork gives no geometric evidence either way.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from PIL import Image

FEATURES_ID = ("sift2000-c0.02-up512-ratio0.75-similarity-ransac4-mirror-edges256-homography-layout3-unique0.9px10"
               "-colour64-region-v8")
"""What an index's stored local features, and the counts compared with them (keypoints in a layout,
unique keypoints), were made by: the manifest's ``verifier``. An index made another way is rebuilt."""
VERIFIER_ID = f"{FEATURES_ID}|exact-sharp1-residual-v1"
"""What a full verification's outcomes are cached under: the features, and every measure taken from
them (a new measure changes this, not the index)."""
MAX_SIDE = 512
"""Both photos are resized (up or down) so that their longer side is this long before SIFT: small
photos and small pasted products then keep enough keypoints to verify."""
MAX_FEATURES = 2000
CONTRAST = 0.02
"""SIFT's contrast threshold, half OpenCV's default, so that blurred, faded and greyscaled
copies keep keypoints."""
RATIO = 0.75
RANSAC_PIXELS = 4.0
UNIQUE_RATIO = 0.9
"""A listing keypoint counts for one candidate only when its distance to it is under this share of
its distance to any other candidate (Lowe's ratio test, across the candidate set)."""
UNIQUE_PIXELS = 10.0
"""How far (in the MAX_SIDE frame) a unique match may lie from where the candidate's layout puts
it: looser than RANSAC_PIXELS, because a new photo of a carton bends the layout a rigid fit sees."""
MIN_KEYPOINTS = 4
MIN_LAYOUT = 3
"""Inliers below this are no layout (two points fix a similarity transform exactly): no outline is
measured for them."""
EDGE_LEVEL = 40.0
"""Gradient magnitude (grey levels per pixel, after a 1-pixel blur) above which a pixel is an edge."""
EDGE_TOLERANCE = 5
"""A reference edge counts as found when the listing has an edge within this window (pixels)."""
SHARP_TOLERANCE = 1
"""For ``sharpness``: the window (pixels of the half frame) within which an edge is the same edge."""
MIN_EDGE_PIXELS = 20
COLOUR_SCALE = 8
"""The colour thumbnails are the MAX_SIDE frame divided by this (64 pixels on the longer side):
enough for the colour of a region, and 12 KB a reference at most."""
MIN_COLOUR_PIXELS = 20
"""Fewer matched colour-thumbnail pixels than this (a sliver of the reference in the photo) tell no colour."""
WHITE_LEVEL = 235
"""Reference pixels this bright in every channel are a product shot's white background, not the product."""
SIBLING_SHARE = 0.3
"""Candidates whose layout has at least this share of the best candidate's keypoints are compared
colour against colour (weak fits, of unrelated products, would only add noise)."""


NO_COLOUR = np.zeros((0, 0, 3), np.uint8)


@dataclass
class LocalFeatures:
    """Keypoint positions (float32 [n, 2], in a MAX_SIDE frame), SIFT descriptors (uint8 [n, 128]),
    the grey picture at half that frame (uint8 [h, w]), for checking edges once aligned, and the
    colour picture at 1/COLOUR_SCALE of it (uint8 [h, w, 3]), for comparing colours."""

    points: np.ndarray
    descriptors: np.ndarray
    thumbnail: np.ndarray
    colour: np.ndarray = field(default_factory=lambda: NO_COLOUR)

    def __len__(self) -> int:
        return len(self.points)


EMPTY = LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8), np.zeros((0, 0), np.uint8))


@dataclass
class QueryFeatures:
    """A listing photo's features, as taken and mirrored, and the descriptor matches already
    found against references (the first stage's, reused by the full verification)."""

    plain: LocalFeatures
    mirrored: LocalFeatures
    _matches: dict = field(default_factory=dict, repr=False, compare=False)

    def nearest_two(self, reference: LocalFeatures, flipped: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`_nearest_two` of the photo (or its mirror) against ``reference``, found once."""
        key = (id(reference), flipped)
        known = self._matches.get(key)
        if known is None or known[0] is not reference:  # the reference is kept, so its id is never reused
            known = self._matches[key] = (reference, _nearest_two(self.mirrored if flipped else self.plain, reference))
        return known[1]

    def layout(self, reference: LocalFeatures, flipped: bool, homography: bool = True) -> tuple[int, list[np.ndarray]]:
        """:func:`fit_layout` of the photo (or its mirror) against ``reference``, from its matches."""
        query = self.mirrored if flipped else self.plain
        if len(query) < 4 or len(reference) < 4:
            return 0, []
        return _layout(query, reference, *self.nearest_two(reference, flipped), homography=homography)

    def best_layout(self, reference: LocalFeatures) -> int:
        """The most keypoints in one layout with ``reference``, the photo either way round (the
        count alone: no homography is tried)."""
        return max(self.layout(reference, False, homography=False)[0], self.layout(reference, True, homography=False)[0])


def extract_query(image: Image.Image, side: int = MAX_SIDE) -> QueryFeatures:
    """Features of a listing photo and of its mirror image (``side``: see :func:`extract`)."""
    plain = extract(image, side)
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
    return LocalFeatures(points, features.descriptors[:, _MIRROR], features.thumbnail, features.colour)


class Outcome(NamedTuple):
    """A verified pair: matching keypoints in one layout; the share of the reference's edges
    found in the listing once aligned, to 4 decimals (``None`` for fewer than MIN_LAYOUT
    keypoints, or when the reference has too few edges to tell); and ``unique``, how many of the
    listing's keypoints match this reference better than every other candidate it was verified
    with, in the same layout (what tells a product from its siblings that share the brand's
    logo and layout); ``colour``, the colour agreement once aligned, in [0, 1], to 4 decimals
    (``None`` below MIN_LAYOUT keypoints, or for too small a matched region); ``region``, where
    the reference's frame lands in the photo: its four corners as ``[x, y]`` fractions of the
    photo's width and height (``None`` below MIN_LAYOUT keypoints); ``sharpness`` and ``residual``,
    how exactly the reference's picture is in the photo (see the module's text; to 4 decimals,
    ``None`` below MIN_LAYOUT keypoints or where there is nothing to measure)."""

    inliers: int
    alignment: float | None
    unique: int = 0
    colour: float | None = None
    region: list | None = None
    sharpness: float | None = None
    residual: float | None = None


def verify_pair(query: QueryFeatures, reference: LocalFeatures) -> Outcome | None:
    """Verify a listing photo (either way round) against one reference photo, or ``None`` when
    either has too few keypoints for the evidence to mean anything."""
    return verify_candidates(query, [reference])[0]


def verify_candidates(query: QueryFeatures, references: list[LocalFeatures], counts_only: bool = False) -> list[Outcome | None]:
    """Verify a listing photo against each of its candidate references, jointly: each pair's
    layout and outline as :func:`verify_pair` finds them, and the ``unique`` keypoints that
    favour that reference over all the others (``None`` where a pair cannot be verified).
    ``counts_only``: just ``inliers`` and ``unique`` (the same numbers), without the homography,
    outline, colour and region that only a listing's evidence needs."""
    if len(query.plain) < MIN_KEYPOINTS:
        return [None] * len(references)
    fits: list[_Fit | None] = []
    for reference in references:
        if len(reference) < MIN_KEYPOINTS:
            fits.append(None)
            continue
        # The orientation is chosen on the similarity fit alone; the homography (a RANSAC that
        # runs to its iteration cap on unrelated photos) is tried for the chosen one only.
        plain, mirror = query.layout(reference, False, homography=False), query.layout(reference, True, homography=False)
        flipped = mirror[0] > plain[0]
        inliers, maps = mirror if flipped else plain
        if not counts_only and inliers >= MIN_LAYOUT:
            inliers, maps = query.layout(reference, flipped)  # the same fit (RANSAC is seeded), with the homography
        fits.append(_fit(query.mirrored if flipped else query.plain, reference, flipped, inliers, maps))
    unique = _unique_inliers(query, references, fits)
    colours = _colours(query.plain.colour, references, fits) if not counts_only else [None] * len(references)
    outcomes = []
    for reference, fit, extra, colour in zip(references, fits, unique, colours):
        if fit is None:
            outcomes.append(None)
        elif fit.inliers < MIN_LAYOUT or counts_only:
            outcomes.append(Outcome(fit.inliers, None, extra))
        else:
            found = [edge_alignment(query.plain.thumbnail, reference.thumbnail, m, fit.flipped) for m in fit.maps]
            found = [a for a in found if a is not None]
            sharp = edge_alignment(query.plain.thumbnail, reference.thumbnail, fit.maps[-1], fit.flipped,
                                   SHARP_TOLERANCE)
            residual = fit_residual(query, reference, fit)
            outcomes.append(Outcome(fit.inliers, round(max(found), 4) if found else None, extra,
                                    None if colour is None else round(colour, 4),
                                    matched_region(query.plain.thumbnail, reference.thumbnail, fit.maps[-1], fit.flipped),
                                    None if sharp is None else round(sharp, 4),
                                    None if residual is None else round(residual, 4)))
    return outcomes


def _cv2():
    import cv2

    return cv2


def extract(image: Image.Image, side: int = MAX_SIDE) -> LocalFeatures:
    """SIFT features of an RGB picture resized so that its longer side is ``side`` (MAX_SIDE,
    the frame every stored feature is in, unless a study asks for another)."""
    cv2 = _cv2()
    grey = image.convert("L")
    scale = side / max(grey.size)
    if scale != 1:
        grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))),
                           Image.BICUBIC if scale > 1 else Image.BILINEAR)
    pixels = np.asarray(grey, dtype=np.uint8)
    if min(pixels.shape) < 16:
        return EMPTY
    thumbnail = cv2.resize(pixels, (max(1, round(pixels.shape[1] / 2)), max(1, round(pixels.shape[0] / 2))),
                           interpolation=cv2.INTER_AREA)
    colour = np.asarray(image.convert("RGB").resize(
        (max(1, round(pixels.shape[1] / COLOUR_SCALE)), max(1, round(pixels.shape[0] / COLOUR_SCALE))), Image.BOX))
    keypoints, descriptors = cv2.SIFT_create(nfeatures=MAX_FEATURES, contrastThreshold=CONTRAST).detectAndCompute(
        pixels, None)
    if descriptors is None or not keypoints:
        return LocalFeatures(EMPTY.points, EMPTY.descriptors, thumbnail, colour)
    points = cv2.KeyPoint_convert(keypoints).reshape(-1, 2).astype(np.float32, copy=False)
    return LocalFeatures(points, np.clip(descriptors, 0, 255).astype(np.uint8), thumbnail, colour)


class _Fit(NamedTuple):
    """One orientation of a listing fitted to one reference: the nearest reference keypoint of
    each listing keypoint (``nearest``, ``first``, ``second``: index and the two smallest
    distances), the fitted inliers, maps and similarity transform (2 x 3, or ``None``)."""

    flipped: bool
    nearest: np.ndarray
    first: np.ndarray
    second: np.ndarray
    inliers: int
    maps: list[np.ndarray]
    transform: np.ndarray | None


def _fit(query: LocalFeatures, reference: LocalFeatures, flipped: bool, inliers: int, maps: list[np.ndarray]) -> _Fit:
    """The layout found for one orientation, with its RootSIFT neighbours for the unique test
    (only the orientation that fits better needs them)."""
    nearest, first, second = _nearest_two(query, reference, root=True)
    return _Fit(flipped, nearest, first, second, inliers, maps, maps[0][:2] if maps else None)


def _rootsift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT (Arandjelović and Zisserman, 2012): L1-normalised, square-rooted SIFT, whose
    Euclidean distance is the Hellinger kernel of the original histograms."""
    d = descriptors.astype(np.float32)
    return np.sqrt(d / np.maximum(d.sum(axis=1, keepdims=True), 1e-7))


def _nearest_two(query: LocalFeatures, reference: LocalFeatures, root: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each listing keypoint: its nearest reference keypoint and the two smallest descriptor
    distances (FAISS's exact k-NN: BLAS, 3-5x faster than OpenCV's brute-force matcher)."""
    import faiss

    n = len(query)
    nearest, first, second = np.full(n, -1, np.int64), np.full(n, np.inf, np.float32), np.full(n, np.inf, np.float32)
    if len(reference) == 0 or n == 0:
        return nearest, first, second
    describe = _rootsift if root else (lambda d: d.astype(np.float32))
    k = min(2, len(reference))
    squared, found = faiss.knn(np.ascontiguousarray(describe(query.descriptors)),
                               np.ascontiguousarray(describe(reference.descriptors)), k)
    distances = np.sqrt(np.maximum(squared, 0))
    nearest[:], first[:] = found[:, 0], distances[:, 0]
    if k > 1:
        second[:] = distances[:, 1]
    return nearest, first, second


def fit_layout(query: LocalFeatures, reference: LocalFeatures, homography: bool = True) -> tuple[int, list[np.ndarray]]:
    """Fit the one-to-one keypoint matches: how many distinct reference keypoints fit one
    similarity transform, and the 3 x 3 maps (reference frame to listing frame) worth aligning
    edges with: that transform, and, for a layout of MIN_LAYOUT or more, a homography when one
    fits as many matches (a photo taken at an angle bends straight layouts; not tried when
    ``homography`` is false, for a caller that needs the count alone). ``(0, [])`` when nothing
    fits."""
    if len(query) < 4 or len(reference) < 4:
        return 0, []
    return _layout(query, reference, *_nearest_two(query, reference), homography=homography)


def _layout(query: LocalFeatures, reference: LocalFeatures, nearest: np.ndarray, first: np.ndarray,
            second: np.ndarray, homography: bool = True) -> tuple[int, list[np.ndarray]]:
    if len(query) < 4 or len(reference) < 4:
        return 0, []
    cv2 = _cv2()
    best: dict[int, int] = {}  # reference keypoint -> the listing keypoint matching it best
    for i in np.flatnonzero(first < RATIO * second):
        j = int(nearest[i])
        if j not in best or first[i] < first[best[j]]:
            best[j] = int(i)
    if len(best) < 4:
        return 0, []
    src = reference.points[list(best)]
    dst = query.points[list(best.values())]
    transform, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PIXELS)
    if transform is None or mask is None:
        return 0, []
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    if not 0.1 < scale < 10:
        return 0, []  # a collapsed or exploded fit is not a copy
    inliers = _distinct(src[mask.ravel().astype(bool)])
    maps = [np.vstack([transform, [0.0, 0.0, 1.0]])]
    if homography and inliers >= MIN_LAYOUT and len(best) >= 8:
        bent, hmask = cv2.findHomography(src, dst, cv2.RANSAC, RANSAC_PIXELS)
        if bent is not None and _plausible(bent, reference) and _distinct(src[hmask.ravel().astype(bool)]) >= inliers:
            maps.append(bent)
    return inliers, maps


def _unique_inliers(query: QueryFeatures, references: list[LocalFeatures], fits: list[_Fit | None]) -> list[int]:
    """For each candidate, the distinct listing keypoints whose nearest candidate keypoint is on it,
    clearly nearer (UNIQUE_RATIO) than on any other candidate and than its own second nearest, and
    that lie within UNIQUE_PIXELS of where the candidate's fitted layout puts that keypoint. Shared
    elements (a brand's logo on every sibling product) match several candidates about equally and
    drop out; what is left is the evidence for one product."""
    usable = [i for i, fit in enumerate(fits) if fit is not None]
    counts = [0] * len(references)
    if not usable:
        return counts
    first = np.stack([fits[i].first for i in usable])
    winner = first.argmin(axis=0)
    keypoint = np.arange(first.shape[1])
    best = first[winner, keypoint]
    runner_up = np.where(np.arange(len(usable))[:, None] == winner[None], np.inf, first).min(axis=0)
    second = np.stack([fits[i].second for i in usable])[winner, keypoint]
    clear = best < UNIQUE_RATIO * np.minimum(runner_up, second)
    for slot, i in enumerate(usable):
        fit = fits[i]
        chosen = np.flatnonzero(clear & (winner == slot))
        if fit.transform is None or len(chosen) == 0:
            continue
        features = query.mirrored if fit.flipped else query.plain
        src = references[i].points[fit.nearest[chosen]]
        predicted = src @ fit.transform[:, :2].T + fit.transform[:, 2]
        near = np.linalg.norm(predicted - features.points[chosen], axis=1) < UNIQUE_PIXELS
        counts[i] = _distinct(src[near])
    return counts


def _distinct(points: np.ndarray) -> int:
    """How many 3-pixel cells the points fall in (a keypoint found twice counts once)."""
    return len(set(map(tuple, np.round(points / 3).astype(np.int64).tolist())))


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


def fit_residual(query: QueryFeatures, reference: LocalFeatures, fit: _Fit) -> float | None:
    """The median distance (MAX_SIDE pixels) between the listing keypoints that pass the ratio test
    and where the rigid fit puts their reference keypoints, over those within RANSAC_PIXELS;
    ``None`` without a fit."""
    if fit.transform is None:
        return None
    nearest, first, second = query.nearest_two(reference, fit.flipped)
    kept = np.flatnonzero(first < RATIO * second)
    features = query.mirrored if fit.flipped else query.plain
    predicted = reference.points[nearest[kept]] @ fit.transform[:, :2].T + fit.transform[:, 2]
    distances = np.linalg.norm(predicted - features.points[kept], axis=1)
    distances = distances[distances < RANSAC_PIXELS]
    return float(np.median(distances)) if len(distances) else None


def edge_alignment(query: np.ndarray, reference: np.ndarray, transform: np.ndarray, flipped: bool,
                   tolerance: int = EDGE_TOLERANCE) -> float | None:
    """Share of the reference thumbnail's edges, mapped by ``transform`` (3 x 3, fitted in the
    MAX_SIDE frames; for ``flipped``, onto the listing's mirrored keypoints), that fall within
    ``tolerance`` pixels (a window) of an edge of the listing thumbnail; ``None`` when fewer than
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
    near = cv2.dilate(_edges(query).astype(np.uint8), np.ones((tolerance, tolerance), np.uint8)) > 0
    return float((wanted & near).sum() / wanted.sum())


def _onto_photo(transform: np.ndarray, flipped: bool) -> np.ndarray:
    """A fitted map (3 x 3, reference frame to listing frame) onto the photo as taken: a fit to the
    mirrored keypoints, whose x is negated, is negated back."""
    return np.diag([-1.0, 1.0, 1.0]) @ transform if flipped else transform


def matched_region(query: np.ndarray, reference: np.ndarray, transform: np.ndarray, flipped: bool) -> list | None:
    """The reference's frame mapped into the photo by ``transform`` (3 x 3, in the MAX_SIDE frames;
    for ``flipped``, onto the mirrored keypoints, whose x is negated): its corners as fractions of
    the photo's width and height, given the two grey thumbnails (half those frames)."""
    cv2 = _cv2()
    if min(query.shape) < 1 or min(reference.shape) < 1:
        return None
    height, width = (2 * n for n in reference.shape)
    corners = np.float32([[0, 0], [width, 0], [width, height], [0, height]]).reshape(-1, 1, 2)
    mapped = cv2.perspectiveTransform(corners, _onto_photo(transform, flipped))
    if mapped is None or not np.isfinite(mapped).all():
        return None
    frame = np.array([2 * query.shape[1], 2 * query.shape[0]], np.float32)
    return [[round(float(x), 4), round(float(y), 4)] for x, y in np.clip(mapped.reshape(-1, 2) / frame, -1.0, 2.0)]


class _Colours(NamedTuple):
    """One candidate's colours in the listing's colour frame: where its reference lands (less the
    white background), and the chromaticities of the listing and of the warped reference there."""

    region: np.ndarray
    listing: np.ndarray
    reference: np.ndarray


def _chromaticity(pixels: np.ndarray) -> np.ndarray:
    """Grey world, then chromaticity: each channel divided by its mean over the region (shop
    light and white balance cancel out), each pixel by its sum (brightness cancels out)."""
    pixels = pixels / np.maximum(pixels.mean(axis=0), 1.0)
    return pixels / np.maximum(pixels.sum(axis=1, keepdims=True), 1e-6)


def _warped_colours(query: np.ndarray, reference: np.ndarray, transform: np.ndarray, flipped: bool) -> _Colours | None:
    """The reference's colours warped by ``transform`` (3 x 3, fitted in the MAX_SIDE frames; for
    ``flipped``, onto the mirrored keypoints, whose x is negated) onto the listing's colour
    thumbnail; ``None`` when fewer than MIN_COLOUR_PIXELS pixels land."""
    cv2 = _cv2()
    if min(query.shape[:2]) < 2 or min(reference.shape[:2]) < 2:
        return None
    small = np.diag([1.0 / COLOUR_SCALE, 1.0 / COLOUR_SCALE, 1.0])
    warp = small @ _onto_photo(transform, flipped) @ np.linalg.inv(small)
    size = (query.shape[1], query.shape[0])
    warped = cv2.warpPerspective(reference.astype(np.float32), warp, size, flags=cv2.INTER_LINEAR)
    inside = cv2.warpPerspective(np.ones(reference.shape[:2], np.uint8), warp, size, flags=cv2.INTER_NEAREST) > 0
    region = inside & (warped.min(axis=2) < WHITE_LEVEL)
    if region.sum() < MIN_COLOUR_PIXELS:
        return None
    listing, theirs = np.zeros(warped.shape, np.float32), np.zeros(warped.shape, np.float32)
    listing[region] = _chromaticity(query[region].astype(np.float32))
    theirs[region] = _chromaticity(warped[region])
    return _Colours(region, listing, theirs)


def _colours(query: np.ndarray, references: list[LocalFeatures], fits: list[_Fit | None]) -> list[float | None]:
    """Each candidate's colour agreement, in [0, 1]: 1 minus 3 times the mean absolute difference
    of the listing's and the warped reference's chromaticities over the reference's region,
    each pixel weighted by how much the well-fitted candidates' colours differ there (plain mean
    where no two of them overlap, or they agree everywhere); ``None`` where there is none to measure."""
    layers: list[_Colours | None] = [None] * len(references)
    for i, (reference, fit) in enumerate(zip(references, fits)):
        if fit is not None and fit.inliers >= MIN_LAYOUT:
            layers[i] = _warped_colours(query, reference.colour, fit.maps[-1], fit.flipped)
    best = max((fit.inliers for fit, layer in zip(fits, layers) if layer is not None), default=0)
    siblings = [layer for fit, layer in zip(fits, layers) if layer is not None and fit.inliers >= SIBLING_SHARE * best]
    spread = np.zeros(query.shape[:2], np.float32)
    for a in siblings:
        for b in siblings:
            both = a.region & b.region
            spread = np.maximum(spread, np.where(both, np.abs(a.reference - b.reference).sum(axis=2), 0.0))
    agreement: list[float | None] = []
    for layer in layers:
        if layer is None:
            agreement.append(None)
            continue
        difference = np.abs(layer.listing - layer.reference).sum(axis=2) / 3.0
        weight = spread * layer.region
        if weight.sum() <= 1.0:
            weight = layer.region.astype(np.float32)
        agreement.append(float(np.clip(1.0 - 3.0 * (weight * difference).sum() / weight.sum(), 0.0, 1.0)))
    return agreement


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
        colour_shapes=np.array([f.colour.shape[:2] for f in features], np.int64).reshape(-1, 2),
        colours=np.concatenate([f.colour.ravel() for f in features]) if features else np.zeros(0, np.uint8),
    )
    return buffer.getvalue()


def unpack(payload: bytes) -> list[LocalFeatures]:
    """Inverse of :func:`pack`."""
    with np.load(io.BytesIO(payload), allow_pickle=False) as data:
        offsets, points, descriptors = data["offsets"], data["points"], data["descriptors"]
        shapes, pixels = data["shapes"], data["thumbnails"]
        colour_shapes = data["colour_shapes"] if "colour_shapes" in data else np.zeros((len(shapes), 2), np.int64)
        colours = data["colours"] if "colours" in data else np.zeros(0, np.uint8)
    starts = np.cumsum([0] + [int(h * w) for h, w in shapes])
    colour_starts = np.cumsum([0] + [int(h * w * 3) for h, w in colour_shapes])
    return [
        LocalFeatures(points[a:b], descriptors[a:b], pixels[s : s + h * w].reshape(h, w),
                      colours[c : c + ch * cw * 3].reshape(ch, cw, 3))
        for a, b, s, (h, w), c, (ch, cw) in zip(offsets[:-1], offsets[1:], starts[:-1], shapes, colour_starts[:-1],
                                                 colour_shapes)
    ]
