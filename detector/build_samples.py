"""What an index build verifies and edits to calibrate, within budgets that do not grow with the
number of brands, and the verifications it can reuse from the index it replaces.

A build calibrates three things per brand (docs/index.md): the keypoints a new photo of its
products needs (impostor photos verified against the brand), its first-stage level (its reference
photos edited as a seller would, and embedded), and which of its products keypoints cannot tell
apart (sibling photos verified against each other; only those are read for printed words).
Done for every brand in full, the first grows as brands x brands and the other two as the
catalogue, at a cost per photo that made 10,000 small brands a build of hours:

- **impostors**: each brand verifies the same fixed sample (the first photos by content hash,
  not its own), of :func:`impostors_per_brand` photos: 200 up to 100 brands, fewer beyond, so that
  all brands together verify at most PRODUCT_VERIFICATIONS. A brand left fewer than the rule's
  ``min_impostors`` borrows every brand's counts pooled, as brands with few impostors always did;
- **edits**: whole brands, largest first (then by name), until EDITED_PHOTOS photos; the others
  borrow the edited brands' scores pooled (:func:`index.calibrate.calibrate_gate`);
- **words**: a product is read only where its photo shares SIBLING_KEYPOINTS keypoints with one of
  its brand's other products (each photo against its nearest PRODUCT_CANDIDATES siblings): the
  products a listing photo's keypoints could leave in doubt, the only ones words are read to tell
  apart.

Up to 100 brands, 2,000 photos and the catalogue of siblings alike, that is every brand as
before, so the labelled folders indexed alone are calibrated as they were.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from detector.batching import one_openmp_thread, opencv_one_thread
from detector.stages.siblings import SIBLING_KEYPOINTS
from detector.verify import FEATURES_ID, LocalFeatures, QueryFeatures, mirrored, verify_candidates

MAX_PRODUCT_IMPOSTORS = 200
"""At most this many other brands' reference photos are verified against each brand to calibrate
how many matching keypoints a new photo of its products needs."""
PRODUCT_VERIFICATIONS = 20_000
"""At most this many impostor photos are verified in all (about two minutes on 2 cores)."""
PRODUCT_CANDIDATES = 5
"""Each photo is verified against this many of the brand's nearest references, as a scanned photo
is against its nearest hits."""
EDITED_PHOTOS = 2_000
"""Reference photos edited for the first-stage levels, at most (whole brands, largest first);
8 edits each, embedded: about three minutes on 2 cores."""
VERIFIED_ID = f"verified-{FEATURES_ID}-v1"
"""What stored verification counts are filed under: another verifier verifies again."""


def impostors_per_brand(brands: int) -> int:
    """Impostor photos verified against each brand in a catalogue of ``brands`` brands."""
    return min(MAX_PRODUCT_IMPOSTORS, max(1, PRODUCT_VERIFICATIONS // max(1, brands)))


def edited_brands(products: dict[str, list[dict]]) -> set[str]:
    """The brands whose reference photos are edited: largest first, then by name, while the
    photos edited stay within EDITED_PHOTOS (the largest brand always)."""
    chosen, photos = set(), 0
    for brand in sorted(products, key=lambda b: (-len(products[b]), b)):
        if chosen and photos + len(products[brand]) > EDITED_PHOTOS:
            break
        chosen.add(brand)
        photos += len(products[brand])
    return chosen


class Verified:
    """Keypoint counts of a photo verified against candidate references, by the photos' content
    hashes: those the previous build stored are reused, the rest verified; :meth:`payload` holds
    the ones this build used, for the next."""

    def __init__(self, stored: dict[str, list[int]] | None = None):
        self.stored = stored or {}
        self.used: dict[str, list[int]] = {}

    @staticmethod
    def key(photo: str, candidates: list[str]) -> str:
        return hashlib.sha256("|".join([photo, *candidates]).encode()).hexdigest()[:32]

    def counts(self, photo: tuple[str, Callable[[], LocalFeatures]],
               candidates: list[tuple[str, Callable[[], LocalFeatures]]]) -> list[int]:
        """For each candidate, the most keypoints the photo matches on it (plain or unique), as a
        listing photo verified against those candidates would. Photos come as (content hash, their
        features when asked): a stored count needs no features."""
        key = self.key(photo[0], [sha for sha, _ in candidates])
        if key not in self.stored:
            features = photo[1]()
            query = QueryFeatures(features, mirrored(features))
            outcomes = verify_candidates(query, [get() for _, get in candidates], counts_only=True)
            self.stored[key] = [0 if o is None else max(o.inliers, o.unique) for o in outcomes]
        self.used[key] = self.stored[key]
        return self.used[key]

    def payload(self) -> bytes:
        return json.dumps({"id": VERIFIED_ID, "counts": self.used}, sort_keys=True).encode()

    @staticmethod
    def read(payload: bytes | None) -> dict[str, list[int]]:
        found = json.loads(payload) if payload else {}
        return found.get("counts", {}) if found.get("id") == VERIFIED_ID else {}


def _run(jobs: list, work: Callable, workers: int, on_done: Callable[[int, int], None] | None) -> list:
    """``work`` over ``jobs`` on ``workers`` threads (OpenCV and FAISS release the GIL), one FAISS
    and one OpenCV thread each, as a scan's do; ``on_done(done, total)`` follows them."""
    with opencv_one_thread(), ThreadPoolExecutor(max_workers=workers, initializer=one_openmp_thread) as pool:
        found = []
        for result in pool.map(work, jobs):
            found.append(result)
            if on_done:
                on_done(len(found), len(jobs))
    return found


def product_impostors(products: dict[str, list[dict]], vectors: dict[str, np.ndarray],
                      local: Callable[[str, int], LocalFeatures], verified: Verified, workers: int,
                      on_done: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """For each brand, the most matching keypoints each of its impostors reaches against the
    brand's PRODUCT_CANDIDATES references nearest to it (see the module's docstring)."""
    every = sorted((p["image_sha256"], brand, row) for brand, ps in products.items() for row, p in enumerate(ps))
    per = impostors_per_brand(len(vectors))
    pairs = [(brand, other, row) for brand in vectors
             for _, other, row in itertools.islice((item for item in every if item[1] != brand), per)]

    def most_matched(pair: tuple[str, str, int]) -> int:
        brand, other, row = pair
        nearest = np.argsort(-(vectors[brand] @ vectors[other][row]))[:PRODUCT_CANDIDATES]
        counts = verified.counts((products[other][row]["image_sha256"], lambda: local(other, row)),
                                 [(products[brand][i]["image_sha256"], functools.partial(local, brand, i)) for i in nearest])
        return max(counts, default=0)

    found = _run(pairs, most_matched, workers, on_done)
    counts = {brand: [] for brand in vectors}
    for (brand, _, _), count in zip(pairs, found):
        counts[brand].append(count)
    return {brand: np.array(c, np.float64) for brand, c in counts.items()}


def alike_siblings(products: dict[str, list[dict]], vectors: dict[str, np.ndarray],
                   local: Callable[[str, int], LocalFeatures], verified: Verified, workers: int) -> set[str]:
    """The content hashes of reference photos that share at least SIBLING_KEYPOINTS keypoints with
    a photo of another product of their brand (each photo verified against its brand's
    PRODUCT_CANDIDATES nearest photos of other products)."""
    jobs = []
    for brand, ps in products.items():
        for row, product in enumerate(ps):
            others = np.array([i for i, p in enumerate(ps) if p["product_id"] != product["product_id"]], np.int64)
            if len(others):
                nearest = others[np.argsort(-(vectors[brand][others] @ vectors[brand][row]), kind="stable")]
                jobs.append((brand, row, nearest[:PRODUCT_CANDIDATES].tolist()))

    def alike(job: tuple[str, int, list[int]]) -> list[str]:
        brand, row, nearest = job
        ps = products[brand]
        counts = verified.counts((ps[row]["image_sha256"], lambda: local(brand, row)),
                                 [(ps[i]["image_sha256"], functools.partial(local, brand, i)) for i in nearest])
        shared = [ps[i]["image_sha256"] for i, count in zip(nearest, counts) if count >= SIBLING_KEYPOINTS]
        return [ps[row]["image_sha256"], *shared] if shared else []

    return {sha for found in _run(jobs, alike, workers, None) for sha in found}
