"""Listing rows → evidence: read and decode each photo, embed it (cache first), search the index,
and verify the nearest references geometrically. One :class:`Evidence` record per row, errors
included; nothing is decided here.

With ``screen`` on (the scanner's default), each photo first goes through the whole view alone
and :mod:`detector.screening`; only the photos it sends on pay for the five window views and the
full verification, and their evidence is the same as without the screen.

Both scan engines run this stage: the local engine in its own process, the Ray engine inside
each actor. The records are what the scan's progress database stores and what the policy later
judges, so two engines that produce the same records produce the same decisions.
"""

from __future__ import annotations

import base64
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np
from PIL import Image

from detector.brand_words import READER_ID, WordReader
from detector.batching import Embedded, Prepared, embed_stream, one_openmp_thread, opencv_one_thread
from detector.cache import EmbeddingCache
from detector.embedders import Embedder
from detector.images import (
    ImageError,
    decode_image,
    read_image_bytes,
    resolve_image_path,
)
from detector.mark_shapes import ShapeSearch, photo_pixels
from detector.marks import Sighting, find_marks
from detector.matches import (
    ReferenceFeatures, candidates, candidates_key, index_marks, marks_key, search_views, shape_levels, to_verify,
    verify_hits,
)
from detector.policy import Candidate
from detector.profile import StageClock, timed
from detector.screening import CANDIDATES, NOTE, SCREEN_ID, near_threshold
from detector.screening import screen as screen_photo
from detector.tables import ListingRow, iter_listings
from detector.verify import VERIFIER_ID, Outcome, QueryFeatures, extract_query
from detector.views import LISTING_VIEWS, listing_views
from index.search import Hit
from index.store import ReferenceIndex

MARKS_ID = f"{VERIFIER_ID}|marks-v3"
"""What a cached mark search is filed under: the verifier's features, searched as detector/marks.py does."""
SHAPE_GATE = 0.5
"""A photo is searched for simple marks by shape (the slow search) only when no mark's keypoints
were found and it looks like some protected product at least this much: elsewhere no mark can
make it one."""
MARK_PRODUCTS = 3
"""A brand whose mark is in a photo adds its closest products (by similarity) to the candidates."""
RECENT_PHOTOS = 2_000
"""Vectors of this many recently embedded photos stay in memory, so a photo repeated across a
dump's rows is embedded once even without a cache (about 60 MB at six 1280-d views each)."""


class Evidence(NamedTuple):
    """One listing row and what was found for its photo: ``hits`` is a JSON list of
    ``[brand, row, similarity, inliers, alignment, unique, colour, region]`` (the last five
    ``null`` where not verified; see :class:`detector.verify.Outcome`),
    or ``None`` when ``error`` says why there is none (and ``error_code`` names it);
    ``notes`` is the table reader's remarks, a JSON list of ``[code, text]``;
    ``vector`` is the photo's whole-image embedding (:func:`pack_vector`) when the scan keeps
    them for its history, else ``None``; ``marks`` is a JSON list of the registered marks found
    in the photo, as :class:`detector.marks.Sighting` fields."""

    row: int
    listing_id: str
    line: int
    seller_id: str | None
    title: str
    price: float | None
    currency: str | None
    image: str
    path: str | None
    error: str | None
    error_code: str | None
    notes: str
    digest: str | None
    hits: str | None
    vector: str | None = None
    marks: str | None = None


def pack_vector(vector: np.ndarray) -> str:
    """A unit vector as compact text: float16, base64 (3.4 KB for 1280-d)."""
    return base64.b64encode(np.asarray(vector, np.float16).tobytes()).decode("ascii")


def packed_bytes(text: str) -> bytes:
    """The float16 bytes inside a :func:`pack_vector` text."""
    return base64.b64decode(text)


def unit_vector(raw: bytes) -> np.ndarray:
    """A float32 unit vector from float16 bytes."""
    vector = np.frombuffer(raw, np.float16).astype(np.float32)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def unpack_vector(text: str) -> np.ndarray:
    """The float32 unit vector :func:`pack_vector` wrote."""
    return unit_vector(packed_bytes(text))


def sightings_of(marks: str | None) -> list[Sighting]:
    """The marks found in a photo, from an evidence record's ``marks``."""
    return _sightings(json.loads(marks or "[]"))


def _sightings(rows: list[list]) -> list[Sighting]:
    return [Sighting(brand, name, inliers, inverted, tuple(box), *rest) for brand, name, inliers, inverted, box, *rest
            in rows]


def _analysis_failed(result: Embedded[ListingRow], exc: Exception) -> None:
    """Make an unexpected failure while analysing one photo that row's error."""
    result.error = ImageError("analysis_failed", f"could not analyse image: {type(exc).__name__}: {exc}")


def candidates_of(index: ReferenceIndex, hits: str) -> list[Candidate]:
    """The policy's candidates from an evidence record's ``hits`` (see :class:`Evidence`)."""
    stored = json.loads(hits)
    found = [Hit(brand, row, similarity) for brand, row, similarity, *_ in stored]
    outcomes = {hit: Outcome(inliers, alignment, unique, colour, region)
                for hit, (_, _, _, inliers, alignment, unique, colour, region) in zip(found, stored) if inliers is not None}
    return candidates(index, found, outcomes)


class Counted(NamedTuple):
    """A batch's evidence, and how many of its photos the model embedded or the cache supplied."""

    records: list[Evidence]
    embedded: int
    cache_hits: int
    errors: int

    def add_to(self, stats: dict) -> None:
        """Add this batch to a scan's running counts."""
        stats["rows"] += len(self.records)
        stats["embedded"] += self.embedded
        stats["cache_hits"] += self.cache_hits
        stats["errors"] += self.errors


def pending_rows(listings: Path, wanted: Callable[[int], bool], stats: dict) -> Iterator[ListingRow]:
    """The table's rows whose number is ``wanted`` (not yet recorded), counting every row read
    into ``stats["rows_in_input"]`` so the caller can check nothing was skipped."""
    for row in iter_listings(listings):
        stats["rows_in_input"] = row.row + 1
        if wanted(row.row):
            yield row


class EvidenceMaker:
    """Turns listing rows into evidence records, batch by batch, in input order."""

    def __init__(
        self,
        index: ReferenceIndex,
        embedder: Embedder,
        root: Path,
        *,
        cache: EmbeddingCache | None = None,
        verify: bool = True,
        top_k: int = 5,
        allow_outside: bool = False,
        workers: int = 2,
        keep_vectors: bool = False,
        screen: bool = False,
        read_words: bool = True,
        clock: StageClock | None = None,
    ):
        self.index, self.embedder, self.root = index, embedder, Path(root)
        self.cache, self.verify, self.top_k = cache, verify, top_k
        self.allow_outside, self.workers, self.keep_vectors = allow_outside, workers, keep_vectors
        self.screen = screen and verify
        self.clock = clock
        self.references = ReferenceFeatures(index)
        self.marks, self.marks_key = index_marks(index), marks_key(index)
        self.shapes = ShapeSearch(self.marks, shape_levels(index), shape_levels(index, "hull_level"))
        self.reader = WordReader(sorted({m.brand for m in self.marks})) if read_words and self.marks else None
        if self.reader:
            self.marks_key = f"{self.marks_key}|{READER_ID}"
        self.recent: dict[str, np.ndarray] = {}

    def batches(self, rows: Iterable[ListingRow], batch_size: int) -> Iterator[Counted]:
        """Yield the evidence of each batch of ``batch_size`` rows (the last may be shorter)."""
        batch: list[Embedded[ListingRow]] = []
        with opencv_one_thread(), ThreadPoolExecutor(max_workers=max(1, self.workers), thread_name_prefix="verify",
                                                     initializer=one_openmp_thread) as pool:
            for result in embed_stream(self.embedder, rows, self._prepare, batch_size=batch_size,
                                       workers=self.workers, clock=self.clock):
                batch.append(result)
                if len(batch) >= batch_size:
                    yield self._finish(batch, pool)
                    batch = []
            if batch:
                yield self._finish(batch, pool)

    def one(self, row: ListingRow) -> Evidence:
        """The evidence of a single row."""
        return next(self.batches([row], 1)).records[0]

    def _prepare(self, row: ListingRow) -> Prepared:
        if row.error:
            raise ImageError("bad_row", row.error)
        with timed(self.clock, "read"):
            path = resolve_image_path(row.image, self.root, allow_outside=self.allow_outside)
            data = read_image_bytes(path)
            digest = hashlib.sha256(data).hexdigest()
        vector = self.recent.get(digest)
        if vector is None and self.cache is not None:
            with timed(self.clock, "cache"):
                vector = self.cache.get(digest)
        if vector is not None:
            vector = vector.reshape(-1, vector.shape[-1])  # the cache gives a single view back as [d]
        # A screened scan can start from the whole view alone; a full scan needs all six views, so a
        # cached whole view (what a screened scan keeps of a photo it stopped) is a miss for it.
        if vector is not None and (self.screen or len(vector) == LISTING_VIEWS):
            return Prepared(vector=vector, info=(digest, str(path), None, None, None))
        image = self._decode(data)
        local = self._keypoints(image) if self.verify else None
        pixels = photo_pixels(image) if self.verify and self.shapes else None
        with timed(self.clock, "views"):
            views = self.embedder.preprocess_views([image] if self.screen else listing_views(image))
        return Prepared(array=views, info=(digest, str(path), local, pixels, image if self._keeps_image else None))

    def _decode(self, data: bytes) -> Image.Image:
        with timed(self.clock, "decode"):
            return decode_image(data, draft=self.embedder.decode_size)

    def _keypoints(self, image: Image.Image) -> QueryFeatures:
        with timed(self.clock, "keypoints"):
            return extract_query(image)

    def _decoded(self, result: Embedded[ListingRow], image_too: bool = False) -> tuple:
        """``result.info`` (digest, path, keypoints, pixels, picture) with the keypoints and pixels,
        and with ``image_too`` the decoded picture, filled in: a photo known from the cache is decoded
        once more (:class:`ImageError` when it no longer can be)."""
        digest, path, local, pixels, image = result.info
        if local is None or (image_too and image is None):
            image = self._decode(read_image_bytes(Path(path)))
            if local is None:
                local = self._keypoints(image)
                pixels = photo_pixels(image) if self.shapes else None
            result.info = (digest, path, local, pixels, image)
        return result.info

    def _local_or_error(self, result: Embedded[ListingRow], hits: list[Hit],
                        closest: list[Hit] | None) -> tuple[dict[Hit, Outcome | None], list[Sighting]]:
        """:meth:`_local`, where an unexpected failure on one photo becomes that row's error
        (``analysis_failed``) instead of stopping the scan."""
        try:
            return self._local(result, hits, closest)
        except Exception as exc:  # noqa: BLE001 - one photo's failure must not stop a nightly scan
            _analysis_failed(result, exc)
            return {}, []

    def _local(self, result: Embedded[ListingRow], hits: list[Hit],
               closest: list[Hit] | None) -> tuple[dict[Hit, Outcome | None], list[Sighting]]:
        """What the photo's local features show: geometric evidence against the closest
        references, verified together (each outcome depends on the whole candidate set, so the
        cache keys it by the set too), and the registered marks found in it. Both are cached.
        ``closest`` is the whole view's CANDIDATES closest references for a photo the screen did
        not send on (``None`` for one it did): see :meth:`_worth_reading`."""
        digest = result.info[0]
        chosen = to_verify(self.index, hits)
        group = candidates_key(self.index, chosen)
        keys = {hit: f"{self.index.product(hit)['image_sha256']}|{group}" for hit in chosen}
        outcomes: dict[Hit, Outcome | None] | None = {} if not chosen else None
        sightings: list[Sighting] | None = [] if not self.marks else None
        if self.cache is not None and outcomes is None:
            cached = {hit: self.cache.get_outcome(VERIFIER_ID, digest, key) for hit, key in keys.items()}
            if all(found for found, _ in cached.values()):
                outcomes = {hit: outcome for hit, (_, outcome) in cached.items()}
        if self.cache is not None and sightings is None:
            found, stored = self.cache.get_json(MARKS_ID, digest, self.marks_key)
            sightings = _sightings(stored) if found and stored is not None else None
        if outcomes is not None and sightings is not None:
            return outcomes, sightings
        try:
            _, _, local, pixels, _ = self._decoded(result)
        except ImageError:
            return outcomes or {}, sightings or []
        if outcomes is None:
            with timed(self.clock, "verify"):
                outcomes = verify_hits(local, chosen, self.references)
            if self.cache is not None:
                self.cache.put_outcomes(VERIFIER_ID, {(digest, keys[hit]): o for hit, o in outcomes.items()})
        if sightings is None:
            with timed(self.clock, "marks"):
                sightings = find_marks(local.plain, self.marks)
            worth = not sightings and self._worth_reading(hits, local, closest)
            if worth and self.shapes:
                with timed(self.clock, "mark shapes"):
                    sightings = self.shapes.find(pixels)
            if worth and not sightings and self.reader:
                try:
                    image = self._decoded(result, image_too=True)[4]
                except ImageError:
                    image = None
                if image is not None:
                    with timed(self.clock, "brand words"):
                        sightings = self.reader.find(image)
            if self.cache is not None:
                self.cache.put_json(MARKS_ID, {(digest, self.marks_key): [list(s) for s in sightings]})
        return outcomes, sightings

    @property
    def _keeps_image(self) -> bool:
        """Whether a decoded photo is kept for a later stage: the screen's window views, or the
        brand words read from it."""
        return self.screen or bool(self.reader)

    def _worth_reading(self, hits: list[Hit], local: QueryFeatures, closest: list[Hit] | None) -> bool:
        """Whether the slow searches (marks by shape, brand words) run on a photo where no mark's
        keypoints were found: it must look like some protected product (SHAPE_GATE), and be a
        photo the screen sends on. Without the screen (``--no-screen``, the CUDA default) the
        screen's test is applied here to the whole view's ``closest`` references, so both scans
        search the same photos: on a photo nothing else ties to a product, the shape correlation's
        sightings are mostly false (docs/performance.md, "On a nightly mix with marks")."""
        if not (hits and hits[0].similarity >= SHAPE_GATE):
            return False
        return closest is None or screen_photo(self.index, closest, local, self.references, []).go_on

    def _screen_or_error(self, result: Embedded[ListingRow], hits: list[Hit]) -> bool:
        """:meth:`_screen_one`, where an unexpected failure on one photo becomes that row's error
        (``analysis_failed``, the photo stopped) instead of stopping the scan."""
        try:
            return self._screen_one(result, hits)
        except Exception as exc:  # noqa: BLE001 - one photo's failure must not stop a nightly scan
            _analysis_failed(result, exc)
            return False

    def _screen_one(self, result: Embedded[ListingRow], hits: list[Hit]) -> bool:
        """Whether the photo goes on past the first stage (cached by its candidates). A photo read
        from the cache is decoded again for its keypoints only when the answer is not cached."""
        digest = result.info[0]
        if near_threshold(self.index, hits):
            return True
        key = candidates_key(self.index, hits)
        if self.cache is not None:
            found, stored = self.cache.get_json(SCREEN_ID, digest, key)
            if found and isinstance(stored, bool):
                return stored
        try:
            local = self._decoded(result)[2]
        except ImageError:
            return False
        with timed(self.clock, "screen"):
            go_on = screen_photo(self.index, hits, local, self.references, self.marks).go_on
        if self.cache is not None:
            self.cache.put_json(SCREEN_ID, {(digest, key): go_on})
        return go_on

    def _windows(self, result: Embedded[ListingRow]) -> np.ndarray | None:
        """The five window views of a photo the screen sent on, preprocessed (``None`` when a
        photo known from the cache can no longer be decoded: it then ends at the first stage)."""
        try:
            digest, path, local, pixels, image = self._decoded(result, image_too=True)
        except ImageError:
            return None
        result.info = (digest, path, local, pixels, image if self.reader else None)
        with timed(self.clock, "views"):
            return self.window_arrays(image)

    def window_arrays(self, image) -> np.ndarray:
        """A decoded photo's five window views, preprocessed for the embedder."""
        return self.embedder.preprocess_views(listing_views(image)[1:])

    def _first_stage(self, found: list[Embedded[ListingRow]], pool: ThreadPoolExecutor) -> tuple[dict[int, list[Hit]], set[int]]:
        """Screen the photos known by their whole view alone; give those sent on their window
        views (``vector`` becomes all six). Returns the stopped photos' hits and the ``id`` of
        each photo sent on."""
        whole = [r for r in found if len(r.vector) == 1]
        if not whole:
            return {}, set()
        with timed(self.clock, "search"):
            hits = search_views(self.index, [r.vector for r in whole], CANDIDATES)
        going = list(pool.map(self._screen_or_error, whole, hits))
        onward = [(r, h) for r, h, go in zip(whole, hits, going) if go]
        stopped = {id(r): h[:self.top_k] for r, h, go in zip(whole, hits, going) if not go}
        windows = []
        for (r, h), arrays in zip(onward, pool.map(self._windows, [r for r, _ in onward])):
            if arrays is None:
                stopped[id(r)] = h[:self.top_k]
            else:
                windows.append((r, arrays))
        if windows:
            with timed(self.clock, "embed"):
                vectors = self.embedder.embed_arrays(np.concatenate([w for _, w in windows]))
            for i, (r, _) in enumerate(windows):
                r.vector = np.concatenate([r.vector, vectors[i * (LISTING_VIEWS - 1):(i + 1) * (LISTING_VIEWS - 1)]])
                r.computed = True
        return stopped, {id(r) for r, _ in windows}

    def _finish(self, batch: list[Embedded[ListingRow]], pool: ThreadPoolExecutor) -> Counted:
        found = [r for r in batch if r.vector is not None]
        stopped, sent_on = self._first_stage(found, pool) if self.screen else ({}, set())
        onward = [r for r in found if id(r) not in stopped]
        unscreened = [r for r in onward if id(r) not in sent_on]
        with timed(self.clock, "search"):
            hits = search_views(self.index, [r.vector for r in onward], self.top_k)
            closest = dict(zip(map(id, unscreened), search_views(self.index, [r.vector[:1] for r in unscreened], CANDIDATES)
                               if self.verify and (self.shapes or self.reader) and unscreened else []))
        hits_of = {id(r): h for r, h in zip(onward, hits)}
        hits_of.update(stopped)
        local_of = {}
        if self.verify and onward:
            local_of = dict(zip((id(r) for r in onward),
                                pool.map(self._local_or_error, onward, hits, [closest.get(id(r)) for r in onward])))
        for r in onward:
            sighted = {s.brand for s in local_of.get(id(r), ({}, []))[1]}
            if sighted:  # the products of a brand whose mark is in the photo are candidates, however far
                with timed(self.clock, "search"):
                    extra = search_views(self.index, [r.vector], MARK_PRODUCTS, brands=sighted)[0]
                known = {(h.brand, h.row) for h in hits_of[id(r)]}
                hits_of[id(r)] = hits_of[id(r)] + [h for h in extra if (h.brand, h.row) not in known]
        fresh = {r.info[0]: r.vector for r in found if r.computed}
        if self.cache is not None:
            self.cache.put_many(fresh)
        if len(self.recent) > RECENT_PHOTOS:
            self.recent.clear()
        self.recent.update(fresh)
        records = []
        for r in batch:
            row = r.item
            digest, path = r.info[:2] if r.info else (None, None)
            error, code = (str(r.error), r.error.code) if r.error else (None, None)
            verified, sightings = local_of.get(id(r), ({}, []))
            hit_list = [[h.brand, h.row, round(h.similarity, 6), *(verified.get(h) or (None, None, None, None, None))]
                        for h in hits_of.get(id(r), [])]
            kept = pack_vector(r.vector[0]) if self.keep_vectors and r.vector is not None else None
            notes = [*row.notes, NOTE] if id(r) in stopped else row.notes
            records.append(Evidence(row.row, row.listing_id, row.line, row.seller_id, row.title, row.price,
                                    row.currency, row.image, path, error, code, json.dumps(notes), digest,
                                    None if error else json.dumps(hit_list), kept,
                                    None if error else json.dumps([list(s) for s in sightings])))
        return Counted(records, embedded=sum(r.computed for r in batch),
                       cache_hits=sum(1 for r in found if not r.computed),
                       errors=sum(r.error is not None for r in batch))
