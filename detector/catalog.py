"""Register a brand catalogue: read it, embed only photos the index lacks, calibrate, commit the index."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from detector.augment import EDITS_ID, seller_edits
from detector.batching import Prepared, embed_stream
from detector.brand_words import WordReader
from detector.build_samples import Verified, alike_siblings, edited_brands, product_impostors
from detector.embedders import Embedder
from detector.errors import UserError
from detector.settings import default_batch, default_workers
from detector.images import decode_image, read_image_bytes, resolve_image_path
from detector.product_words import WORDS_ID, words_of
from detector.mark_shapes import SHAPE_RULE, ShapeSearch, calibrate_level, photo_pixels, searched_by_shape
from detector.marks import find_marks, marks_of, prepare_mark
from detector.text_reading import TextReader
from detector.tables import IMAGE_SUFFIXES, CatalogRow, read_authorized, read_catalog, read_marks
from detector.verify import FEATURES_ID, LocalFeatures, extract, pack, unpack
from detector.views import REFERENCE_VIEW_ID, listing_views, reference_view
from index.calibrate import CalibrationRule, CountRule, GateRule, calibrate_counts, calibrate_gate, calibrate_thresholds
from index.files import file_sha256
from index.store import BrandEntry, IndexStoreError, ReferenceIndex, build_lock, load_edit_scores, load_index, load_shared, write_index

MAX_LISTED_ERRORS = 20
MAX_CALIBRATION_PHOTOS = 1000
"""At most this many reference photos (a fixed pseudo-random sample, by content hash) are seen
through the scanner's views to calibrate thresholds."""
MAX_SHAPE_IMPOSTORS = 100
"""At most this many other brands' reference photos calibrate a simple mark's shape level."""
MIN_SHAPE_SHARE = 1 / 3
"""The share of a brand's reference photos a simple mark's shape must be found in to count as
shown there (see :func:`_shown`)."""


@dataclass
class BuildReport:
    """What a build did: counts, skipped rows, and the committed manifest."""

    embedded: int = 0
    reused: int = 0
    edited: int = 0  # reference photos whose seller edits were embedded (a brand whose photos are unchanged reuses its)
    read: int = 0  # reference photos whose printed words were read (a photo the previous build read keeps its)
    skipped: list[str] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Previous(NamedTuple):
    """What a build reuses from the index it replaces: vectors and local features by image hash,
    each brand's authorised sellers and registered marks (rows, packed features), each brand's
    edit scores under the sorted hashes of the photos they were made from, and the words printed
    on each photo, by image hash; the keypoint counts of the verifications it made
    (:class:`detector.build_samples.Verified`) and the views of the photos it calibrated thresholds
    on, by image hash."""

    known: dict[str, tuple[np.ndarray, LocalFeatures]]
    sellers: dict[str, list[str]]
    marks: dict[str, tuple[list[dict], bytes | None]]
    edits: dict[str, tuple[tuple[str, ...], np.ndarray]]
    words: dict[str, list[str]]
    verified: dict[str, list[int]]
    views: dict[str, np.ndarray]
    index: ReferenceIndex | None = None


class _Stored(NamedTuple):
    """A reference photo whose local features the previous index holds: its brand and row there."""

    brand: str
    row: int


class _Features:
    """Each reference photo's local features by (brand, row) in this build: those extracted now,
    and the previous index's, unpacked per brand on first use (a rebuild that adds one brand to
    10,000 unpacks only the few it verifies against)."""

    def __init__(self, local: dict[str, list[LocalFeatures | _Stored]], previous: ReferenceIndex | None):
        self.local, self.previous = local, previous
        self._unpacked: dict[str, list[LocalFeatures]] = {}
        self._lock = threading.Lock()

    def __call__(self, brand: str, row: int) -> LocalFeatures:
        item = self.local[brand][row]
        if not isinstance(item, _Stored):
            return item
        with self._lock:
            if item.brand not in self._unpacked:
                self._unpacked[item.brand] = unpack(self.previous.brands[item.brand].local_features())
        return self._unpacked[item.brand][item.row]

    def unchanged(self, brand: str) -> BrandEntry | None:
        """The previous index's entry for ``brand`` when this build's photos of it are that entry's,
        in its order (its stored features can be kept as they are)."""
        items = self.local[brand]
        entry = self.previous.brands.get(brand) if self.previous is not None else None
        if entry is None or len(entry.products) != len(items):
            return None
        return entry if all(item == _Stored(brand, row) for row, item in enumerate(items)) else None

    def packed(self, brand: str) -> BrandEntry | bytes:
        """The brand's features as the index stores them: the previous entry (to keep its file)
        where unchanged, else packed anew."""
        return self.unchanged(brand) or pack([self(brand, row) for row in range(len(self.local[brand]))])


def _previous_index(out_dir: Path, embedder: Embedder, notes: list[str]) -> Previous:
    """What the current index offers this build, when it was built by this embedder and
    verifier (photos without stored local features are not reused)."""
    try:
        previous = load_index(out_dir, load_indexes=False)
    except IndexStoreError as exc:
        if (out_dir / "manifest.json").exists():
            notes.append(f"previous index not reused ({exc})")
        return Previous({}, {}, {}, {}, {}, {}, {})
    if previous.manifest.get("embedder_id") != embedder.fingerprint_id:
        notes.append("previous index was built by another embedder: every photo is embedded again")
        return Previous({}, {}, {}, {}, {}, {}, {})
    if (previous.manifest.get("reference_view"), previous.manifest.get("verifier")) != (REFERENCE_VIEW_ID, FEATURES_ID):
        notes.append("previous index embedded or described its photos another way: every photo is embedded again")
        return Previous({}, {}, {}, {}, {}, {}, {})
    known = {}
    for name, entry in previous.brands.items():
        if entry.local_source is None:
            continue
        for row, (product, vector) in enumerate(zip(entry.products, entry.vectors)):
            known[product["image_sha256"]] = (vector, _Stored(name, row))
    sellers = {name: entry.authorized for name, entry in previous.brands.items()}
    marks = {name: (entry.marks, entry.mark_features) for name, entry in previous.brands.items() if entry.marks}
    edits = {}
    if previous.manifest.get("gate_rule", {}).get("edits") == EDITS_ID:
        for name, entry in previous.brands.items():
            try:
                scores = load_edit_scores(previous, name)
            except IndexStoreError as exc:
                notes.append(f"{name}: stored edit scores not reused ({exc})")
                continue
            if scores is not None:
                edits[name] = (tuple(sorted(p["image_sha256"] for p in entry.products)), scores)
    words = {}
    if previous.manifest.get("product_words") == WORDS_ID:
        words = {p["image_sha256"]: p["words"] for entry in previous.brands.values() for p in entry.products
                 if p.get("words") is not None}
    try:
        verified = Verified.read(load_shared(previous, "verified"))
        views = _read_views(load_shared(previous, "calibration_views"))
    except IndexStoreError as exc:
        notes.append(f"stored calibration samples not reused ({exc})")
        verified, views = {}, {}
    return Previous(known, sellers, marks, edits, words, verified, views, previous)


def _format_errors(errors: list[str]) -> str:
    shown = "\n  ".join(errors[:MAX_LISTED_ERRORS])
    more = f"\n  … and {len(errors) - MAX_LISTED_ERRORS} more" if len(errors) > MAX_LISTED_ERRORS else ""
    return f"{len(errors)} bad catalogue row(s):\n  {shown}{more}\nFix them, or pass --skip-bad-rows to build without them."


def build_catalog_index(
    catalog_path: Path,
    out_dir: Path,
    embedder: Embedder,
    *,
    authorized_path: Path | None = None,
    marks_path: Path | None = None,
    background_dir: Path | None = None,
    skip_bad_rows: bool = False,
    allow_outside: bool = False,
    index_kind: str | None = None,
    memory_budget: int | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    rule: CalibrationRule = CalibrationRule(),
    count_rule: CountRule = CountRule(),
    gate_rule: GateRule = GateRule(),
    on_progress: Callable[[int, int], None] | None = None,
    on_calibration: Callable[[int, int], None] | None = None,
    on_step: Callable[[str, int, int], None] | None = None,
) -> BuildReport:
    """Build or update ``out_dir`` from a catalogue; the previous index stays intact on any failure.
    ``batch_size`` and ``workers`` default to :mod:`detector.settings`' choice for the embedder's device.
    ``on_step(step, done, total)`` follows the other long steps: ``editing`` (the reference photos
    edited for the first-stage levels) and ``reading`` (the words printed on them)."""
    batch_size = default_batch(embedder.device) if batch_size is None else batch_size
    workers = default_workers() if workers is None else workers
    catalog_path, out_dir = Path(catalog_path), Path(out_dir)
    report = BuildReport()
    rows, errors = read_catalog(catalog_path)
    authorized = read_authorized(authorized_path) if authorized_path else None
    root = catalog_path.resolve().parent

    located: list[tuple[CatalogRow, Path]] = []
    for row in rows:
        try:
            located.append((row, resolve_image_path(row.image, root, allow_outside=allow_outside)))
        except UserError as exc:
            errors.append(f"{catalog_path.name} line {row.line}: {exc}")

    mark_rows, mark_errors = read_marks(marks_path) if marks_path else ([], [])
    errors += mark_errors

    with build_lock(out_dir):
        previous = _previous_index(out_dir, embedder, report.notes)
        known, previous_sellers = previous.known, previous.sellers

        def prepare(item: tuple[CatalogRow, Path]) -> Prepared:
            data = read_image_bytes(item[1])
            digest = hashlib.sha256(data).hexdigest()
            if digest in known:
                vector, local = known[digest]
                return Prepared(vector=vector, info=(digest, local))
            image = decode_image(data, draft=embedder.decode_size)
            return Prepared(array=embedder.preprocess(reference_view(image)), info=(digest, extract(image)))

        products: dict[str, list[dict]] = {}
        vectors: dict[str, list[np.ndarray]] = {}
        local: dict[str, list[LocalFeatures | _Stored]] = {}
        done = 0
        for result in embed_stream(embedder, located, prepare, batch_size=batch_size, workers=workers):
            row, path = result.item
            done += 1
            if on_progress:
                on_progress(done, len(located))
            if result.error:
                errors.append(f"{catalog_path.name} line {row.line}: {result.error}")
                continue
            report.embedded += result.computed
            report.reused += not result.computed
            products.setdefault(row.brand, []).append(
                {
                    "product_id": row.product_id,
                    "image": row.image,
                    "image_path": str(path),
                    "image_sha256": result.info[0],
                    "price": row.price,
                    "currency": row.currency,
                    "title": row.title,
                }
            )
            vectors.setdefault(row.brand, []).append(result.vector)
            local.setdefault(row.brand, []).append(result.info[1])

        marks = _prepare_marks(Path(marks_path), mark_rows, set(products), allow_outside, errors) if marks_path else None

        if errors and not skip_bad_rows:
            raise UserError(_format_errors(errors))
        report.skipped = errors
        if not products:
            raise UserError(f"{catalog_path}: no usable catalogue rows, nothing to index")

        background = _embed_background(background_dir, embedder, batch_size, workers) if background_dir else None
        stacked = {brand: np.stack(vs).astype(np.float32) for brand, vs in vectors.items()}
        queries, views = _calibration_queries(products, embedder, batch_size, workers, previous.views)
        calibration = _thresholds(stacked, products, background, rule, queries, views, previous.index)
        edit_scores, report.edited = _edit_scores(products, stacked, embedder, batch_size, workers, previous.edits,
                                                  on_done=_step(on_step, "editing"))
        verified = Verified(previous.verified)
        features = _Features(local, previous.index)
        alike = alike_siblings(products, stacked, features, verified, workers)
        report.read = _product_words(products, alike, previous.words, embedder.decode_size, _step(on_step, "reading"))
        calibration_gate = calibrate_gate(edit_scores, gate_rule, brands=list(products))
        products_need = calibrate_counts(product_impostors(products, stacked, features, verified, workers, on_calibration),
                                         count_rule)
        for brand, found in [*products_need.items(), *calibration_gate.items()]:
            calibration[brand].update(found)
        if authorized is None and previous_sellers:
            report.notes.append("no --authorized given: authorised sellers kept from the previous build")
        sellers = authorized if authorized is not None else previous_sellers
        unknown = sorted(set(authorized or {}) - set(products))
        if unknown:
            report.notes.append(f"authorised sellers given for brands not in the catalogue: {', '.join(unknown)}")
        if marks is None and previous.marks:
            report.notes.append("no --marks given: registered marks kept from the previous build")
            marks = {brand: found for brand, found in previous.marks.items() if brand in products}
        marks = _calibrate_marks(marks or {}, {brand: [features(brand, row) for row in range(len(local[brand]))]
                                               for brand in marks or {} if brand in local},
                                 products, embedder.decode_size, previous.marks)
        entries = []
        for brand in products:
            packed = features.packed(brand)
            entries.append(BrandEntry(
                brand=brand,
                vectors=stacked[brand],
                products=products[brand],
                authorized=sorted(sellers.get(brand, ())),
                threshold=calibration[brand]["threshold"],
                calibration=calibration[brand],
                local=packed if isinstance(packed, bytes) else None,
                local_source=None if isinstance(packed, bytes) else packed.local_source,
                marks=marks.get(brand, ([], None))[0],
                mark_features=marks.get(brand, ([], None))[1],
                edit_scores=edit_scores.get(brand),
            ))
        extra = {
            "catalog": {"path": str(catalog_path.resolve()), "sha256": file_sha256(catalog_path), "rows": len(rows)},
            "build": {"embedded": report.embedded, "reused": report.reused, "edited": report.edited, "read": report.read,
                      "skipped_rows": len(errors)},
            "reference_view": REFERENCE_VIEW_ID,
            "verifier": FEATURES_ID,
            "calibration_rule": asdict(rule),
            "product_rule": asdict(count_rule),
            "gate_rule": {**asdict(gate_rule), "edits": EDITS_ID},
            "product_words": WORDS_ID,
            "background_images": 0 if background is None else len(background),
        }
        report.manifest = write_index(
            out_dir, entries, embedder.fingerprint, embedder.fingerprint_id, extra=extra, index_kind=index_kind,
            memory_budget=memory_budget,
            shared={"verified": verified.payload(), "calibration_views": _views_payload(views)},
            reuse=previous.index.manifest["brands"] if previous.index is not None else None,
        )
    return report


def _calibrate_marks(marks: dict[str, tuple[list[dict], bytes]], local: dict[str, list[LocalFeatures]],
                     products: dict[str, list[dict]], draft: int | None,
                     previous: dict[str, tuple[list[dict], bytes | None]] | None = None) -> dict[str, tuple[list[dict], bytes]]:
    """Each mark row with what the build measures, without labels:

    - ``shape_level`` and ``hull_level`` for a simple mark (see :mod:`detector.mark_shapes`):
      calibrated on other brands' reference photos (at most MAX_SHAPE_IMPOSTORS, a fixed sample by
      content hash); ``hull_level`` is ``None`` for a mark with no pattern inside its outline;
    - ``in_references``: how many of its brand's reference photos show it, by its keypoints or,
      for a simple mark, by its shape at those levels (SIFT rarely places a simple mark, so by
      keypoints alone a brand whose every product carries one would seem to carry none). A brand
      whose catalogue shows its marks puts them on its products; one whose catalogue never shows
      them (marks registered for a catalogue of unmarked goods) is judged without them;
    - ``words_in_references``: how many of the brand's reference photos show its name, read as
      :mod:`detector.brand_words` reads listing photos (a wordmark SIFT does not place is still
      its mark; the policy counts these only where it counts brand words).

    Reference photos are decoded as a scan decodes listing photos (``draft``: the embedder's
    decode size), so shapes and words are looked for at the size a listing photo shows them.
    A brand whose ``previous`` rows were calibrated on the same inputs (its photos and marks, the
    impostor photos, the brands whose names are read, the shape rule: ``calibrated_on``) keeps them."""
    pixels: dict[str, np.ndarray | None] = {}
    reader = WordReader(sorted(marks))

    def picture(product: dict):
        try:
            return decode_image(read_image_bytes(Path(product["image_path"])), draft=draft)
        except UserError:
            return None

    def pixels_of(product: dict, image=None) -> np.ndarray | None:
        """The photo's pixels for the shape search, decoded once (from ``image`` when given)."""
        if product["image_path"] not in pixels:
            image = image if image is not None else picture(product)
            pixels[product["image_path"]] = None if image is None else photo_pixels(image)
        return pixels[product["image_path"]]

    by_hash = sorted(((name, p) for name, rows in products.items() for p in rows), key=lambda item: item[1]["image_sha256"])

    def impostors(brand: str) -> list[np.ndarray]:
        others = [p for name, p in by_hash if name != brand][:MAX_SHAPE_IMPOSTORS]
        return [px for px in map(pixels_of, others) if px is not None]

    calibrated = {}
    every = sorted((p["image_sha256"], name) for name, rows in products.items() for p in rows)
    for brand, (rows, packed) in marks.items():
        sample = [sha for sha, name in every if name != brand][:MAX_SHAPE_IMPOSTORS]
        inputs = hashlib.sha256(json.dumps([sorted(p["image_sha256"] for p in products.get(brand, [])),
                                            [row["image_sha256"] for row in rows], sample, sorted(marks), SHAPE_RULE,
                                            FEATURES_ID]).encode()).hexdigest()[:16]
        before = (previous or {}).get(brand, ([], None))[0]
        if [r["image_sha256"] for r in before] == [r["image_sha256"] for r in rows] and before \
                and all(r.get("calibrated_on") == inputs for r in before):
            calibrated[brand] = (before, packed)
            continue
        found = marks_of(brand, rows, packed)
        seen = [{s.name for s in find_marks(features, found)} for features in local.get(brand, [])]
        simple = [searched_by_shape(mark) for mark in found]
        others = impostors(brand) if any(simple) else []
        levels = [(calibrate_level(mark, others), calibrate_level(mark, others, hull=True)) if is_simple else (None, None)
                  for mark, is_simple in zip(found, simple)]
        shapes = ShapeSearch(found, {(m.brand, m.name): lv for m, (lv, _) in zip(found, levels)},
                             {(m.brand, m.name): hull for m, (_, hull) in zip(found, levels)})
        words, shaped = 0, []
        for names, product in zip(seen, products.get(brand, [])):
            image = picture(product) if reader else None  # OCR reads the decoded image; shapes reuse it
            own = pixels_of(product, image) if shapes else None
            shaped.append({s.name for s in shapes.find(own)} - names if own is not None else set())
            if reader and image is not None:
                words += any(s.brand == brand for s in reader.find(image))
        calibrated[brand] = ([{**row, "in_references": _shown(row["image"], seen, shaped),
                               "words_in_references": words, "shape_level": level, "hull_level": hull,
                               "shape_rule": SHAPE_RULE, "calibrated_on": inputs}
                              for row, (level, hull) in zip(rows, levels)], packed)
    return calibrated


def _shown(mark: str, by_keypoints: list[set[str]], by_shape_only: list[set[str]]) -> int:
    """In how many of a brand's reference photos its mark shows: by keypoints, plus by shape
    where the shape is found in at least MIN_SHAPE_SHARE of them. A shape is weak evidence, and
    its level is the best of the impostors', so a lone sighting among many photos (a blue ring
    product "is" a round mark) is what chance gives; it would make the brand one that marks its
    products, and every unmarked photo of them ``mark_missing``."""
    keypoints = sum(mark in names for names in by_keypoints)
    shapes = sum(mark in names for names in by_shape_only)
    return keypoints + (shapes if shapes >= MIN_SHAPE_SHARE * len(by_shape_only) else 0)


def _prepare_marks(marks_path: Path, rows: list, brands: set[str], allow_outside: bool,
                   errors: list[str]) -> dict[str, tuple[list[dict], bytes]]:
    """Each brand's registered marks, read and described (see :mod:`detector.marks`); a bad row
    (a missing or unreadable file, a brand the catalogue lacks) is one message in ``errors``."""
    root = marks_path.resolve().parent
    found: dict[str, tuple[list[dict], list[LocalFeatures]]] = {}
    for row in rows:
        where = f"{marks_path.name} line {row.line}"
        if row.brand not in brands:
            errors.append(f"{where}: brand {row.brand!r} has no products in the catalogue")
            continue
        try:
            path = resolve_image_path(row.image, root, allow_outside=allow_outside)
            data = read_image_bytes(path)
            mark = prepare_mark(decode_image(data), row.brand, row.image)
        except UserError as exc:
            errors.append(f"{where}: {exc}")
            continue
        rows_of, features = found.setdefault(row.brand, ([], []))
        rows_of.append({"image": row.image, "image_path": str(path), "image_sha256": hashlib.sha256(data).hexdigest(),
                        "keypoints": len(mark.plain), "box": list(mark.box)})
        features.append(mark.plain)
    return {brand: (rows_of, pack(features)) for brand, (rows_of, features) in found.items()}


def _views_of(path: Path, embedder: Embedder) -> Prepared:
    image = decode_image(read_image_bytes(path), draft=embedder.decode_size)
    return Prepared(array=embedder.preprocess_views(listing_views(image)))


def _step(on_step: Callable[[str, int, int], None] | None, name: str) -> Callable[[int, int], None] | None:
    """``on_step`` for one named step, as a ``(done, total)`` callback."""
    return None if on_step is None else (lambda done, total: on_step(name, done, total))


def _product_words(products: dict[str, list[dict]], alike: set[str], previous: dict[str, list[str]],
                   draft: int | None, on_done: Callable[[int, int], None] | None = None) -> int:
    """Read the words printed on each reference photo in ``alike`` (by content hash: the siblings
    keypoints may not tell apart, :func:`detector.build_samples.alike_siblings`;
    :mod:`detector.product_words`), decoded as a scan decodes listing photos (``draft``), into its
    product's ``words``; a photo the previous build read keeps its words. Returns how many photos were read this build (an unreadable one
    gets no words, and its siblings are then never told apart by words)."""
    todo = [p for ps in products.values() for p in ps if p["image_sha256"] in alike and p["image_sha256"] not in previous]
    reader = TextReader() if todo else None
    for ps in products.values():
        for p in ps:
            if p["image_sha256"] in previous:
                p["words"] = previous[p["image_sha256"]]
    for done, product in enumerate(todo, 1):
        try:
            image = decode_image(read_image_bytes(Path(product["image_path"])), draft=draft)
            product["words"] = words_of(reader.lines(image))
        except UserError:
            product["words"] = None
        if on_done:
            on_done(done, len(todo))
    return len(todo)


def _edit_scores(products: dict[str, list[dict]], vectors: dict[str, np.ndarray], embedder: Embedder,
                 batch_size: int, workers: int, previous: dict[str, tuple[tuple[str, ...], np.ndarray]],
                 on_done: Callable[[int, int], None] | None = None) -> tuple[dict[str, np.ndarray], int]:
    """Each edited brand's edit scores for the first stage's level (the brands
    :func:`detector.build_samples.edited_brands` chooses; the others borrow theirs pooled): every
    reference photo edited as a seller would (:func:`detector.augment.seller_edits`), its whole view
    embedded as the scanner embeds a listing's, and the best similarity each edit reaches against
    the brand. A brand whose photos are the ones the ``previous`` build edited keeps its scores (the
    same embedder made them). Also returns how many photos were edited this build."""
    chosen = edited_brands(products)
    kept = {brand: previous[brand][1] for brand, ps in products.items() if brand in previous and brand in chosen
            and previous[brand][0] == tuple(sorted(p["image_sha256"] for p in ps))}
    items = [(brand, p) for brand, ps in products.items() if brand in chosen and brand not in kept for p in ps]

    def prepare(item: tuple[str, dict]) -> Prepared:
        picture = decode_image(read_image_bytes(Path(item[1]["image_path"])), draft=embedder.decode_size)
        edits = seller_edits(picture, item[1]["image_sha256"])
        return Prepared(array=np.concatenate([embedder.preprocess_views([edit]) for edit in edits]))

    found: dict[str, list[np.ndarray]] = {}
    stream = embed_stream(embedder, items, prepare, batch_size=max(1, batch_size // 4), workers=workers)
    for done, result in enumerate(stream, 1):
        if result.error is None:
            brand = result.item[0]
            found.setdefault(brand, []).append((result.vector @ vectors[brand].T).max(axis=1))
        if on_done:
            on_done(done, len(items))
    fresh = {brand: np.concatenate(scores).astype(np.float32) for brand, scores in found.items()}
    return {**kept, **fresh}, len(items)


def _calibration_queries(products: dict[str, list[dict]], embedder: Embedder, batch_size: int, workers: int,
                         previous: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A sample of reference photos seen as the scanner sees listings ([n, views, d] per brand):
    the first MAX_CALIBRATION_PHOTOS by content hash, those the ``previous`` build saw reused.
    Also returns each sampled photo's views by content hash, for the next build."""
    every = sorted(((p["image_sha256"], brand, p["image_path"]) for brand, ps in products.items() for p in ps))
    sample = every[:MAX_CALIBRATION_PHOTOS]
    views = {sha: previous[sha] for sha, _, _ in sample if sha in previous}
    todo = [(sha, Path(path)) for sha, _, path in sample if sha not in views]
    for result in embed_stream(embedder, todo, lambda item: _views_of(item[1], embedder),
                               batch_size=max(1, batch_size // 4), workers=workers):
        if result.error is None:
            views[result.item[0]] = result.vector
    found: dict[str, list[np.ndarray]] = {}
    for sha, brand, _ in sample:
        if sha in views:
            found.setdefault(brand, []).append(views[sha])
    return {brand: np.stack(v) for brand, v in found.items()}, views


def _thresholds(stacked: dict[str, np.ndarray], products: dict[str, list[dict]], background: np.ndarray | None,
                rule: CalibrationRule, queries: dict[str, np.ndarray], views: dict[str, np.ndarray],
                previous: ReferenceIndex | None) -> dict[str, dict]:
    """Each brand's threshold calibration (:func:`index.calibrate.calibrate_thresholds`), kept from
    the ``previous`` index for a brand whose photos and impostors are the ones it was calibrated on:
    the same calibration sample (recorded as ``threshold_sample``), no background photos, and its
    own impostors (not the pooled). Adding a brand then calibrates that brand alone, unless its
    photos enter the sample. The rest are calibrated together, every brand when one of them has
    too few impostors of its own to be calibrated without the pooled."""
    key = hashlib.sha256(json.dumps([sorted(views), asdict(rule)]).encode()).hexdigest()[:16]
    kept = {}
    if previous is not None and background is None:
        for brand, ps in products.items():
            entry = previous.brands.get(brand)
            if (entry is not None and entry.calibration.get("threshold_sample") == key
                    and entry.calibration.get("source") == "brand"
                    and sorted(p["image_sha256"] for p in entry.products) == sorted(p["image_sha256"] for p in ps)):
                kept[brand] = {k: v for k, v in entry.calibration.items()  # the others' keys carry their prefixes
                               if not k.startswith(("product_", "gate_", "threshold_sample"))}
    todo = [brand for brand in stacked if brand not in kept]
    sampled = sum(len(q) for q in queries.values())
    if any(sampled - len(queries.get(brand, ())) < rule.min_impostors for brand in todo):
        todo, kept = list(stacked), {}
    found = calibrate_thresholds({brand: stacked[brand] for brand in todo}, background, rule, queries) if todo else {}
    return {brand: {**(kept.get(brand) or found[brand]), "threshold_sample": key} for brand in stacked}


def _views_payload(views: dict[str, np.ndarray]) -> bytes:
    """The calibration sample's views, stored for the next build (an .npz of hashes and views)."""
    buffer = io.BytesIO()
    hashes = sorted(views)
    np.savez(buffer, hashes=np.array(hashes, dtype="U64"),
             views=np.stack([views[h] for h in hashes]).astype(np.float32) if hashes else np.zeros((0, 0, 0), np.float32))
    return buffer.getvalue()


def _read_views(payload: bytes | None) -> dict[str, np.ndarray]:
    if not payload:
        return {}
    with np.load(io.BytesIO(payload), allow_pickle=False) as data:
        return dict(zip(data["hashes"].tolist(), data["views"]))


def _embed_background(folder: Path, embedder: Embedder, batch_size: int, workers: int) -> np.ndarray:
    """Embed a folder of unrelated photos through the scanner's views (impostors for calibration);
    unreadable files are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--background {folder} is not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())

    found = [r.vector for r in embed_stream(embedder, paths, lambda p: _views_of(p, embedder),
                                            batch_size=max(1, batch_size // 4), workers=workers) if r.error is None]
    if not found:
        raise UserError(f"--background {folder} holds no readable images")
    return np.stack(found).astype(np.float32)
