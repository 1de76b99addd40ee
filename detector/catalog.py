"""Register a brand catalogue: read it, embed only photos the index lacks, calibrate, commit the index."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from detector.augment import EDITS_ID, seller_edits
from detector.batching import Prepared, embed_stream, one_openmp_thread, opencv_one_thread
from detector.brand_words import WordReader
from detector.embedders import Embedder
from detector.errors import UserError
from detector.settings import default_batch, default_workers
from detector.images import decode_image, read_image_bytes, resolve_image_path
from detector.product_words import WORDS_ID, words_of
from detector.mark_shapes import SHAPE_RULE, ShapeSearch, calibrate_level, photo_pixels, searched_by_shape
from detector.marks import find_marks, marks_of, prepare_mark
from detector.text_reading import TextReader
from detector.tables import IMAGE_SUFFIXES, CatalogRow, read_authorized, read_catalog, read_marks
from detector.verify import FEATURES_ID, LocalFeatures, QueryFeatures, extract, mirrored, pack, unpack, verify_candidates
from detector.views import REFERENCE_VIEW_ID, listing_views, reference_view
from index.calibrate import CalibrationRule, CountRule, GateRule, calibrate_counts, calibrate_gate, calibrate_thresholds
from index.files import file_sha256
from index.store import BrandEntry, IndexStoreError, build_lock, load_edit_scores, load_index, write_index

MAX_LISTED_ERRORS = 20
MAX_CALIBRATION_PHOTOS = 1000
"""At most this many reference photos (a fixed pseudo-random sample, by content hash) are seen
through the scanner's views to calibrate thresholds."""
MAX_PRODUCT_IMPOSTORS = 200
"""At most this many other brands' reference photos are verified against each brand to calibrate
how many matching keypoints a new photo of its products needs."""
MAX_SHAPE_IMPOSTORS = 100
"""At most this many other brands' reference photos calibrate a simple mark's shape level."""
MIN_SHAPE_SHARE = 1 / 3
"""The share of a brand's reference photos a simple mark's shape must be found in to count as
shown there (see :func:`_shown`)."""
PRODUCT_CANDIDATES = 5
"""Each product impostor is verified against this many of the brand's nearest references, as a
scanned photo is against its nearest hits."""


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
    on each photo, by image hash."""

    known: dict[str, tuple[np.ndarray, LocalFeatures]]
    sellers: dict[str, list[str]]
    marks: dict[str, tuple[list[dict], bytes | None]]
    edits: dict[str, tuple[tuple[str, ...], np.ndarray]]
    words: dict[str, list[str]]


def _previous_index(out_dir: Path, embedder: Embedder, notes: list[str]) -> Previous:
    """What the current index offers this build, when it was built by this embedder and
    verifier (photos without stored local features are not reused)."""
    try:
        previous = load_index(out_dir, load_indexes=False)
    except IndexStoreError as exc:
        if (out_dir / "manifest.json").exists():
            notes.append(f"previous index not reused ({exc})")
        return Previous({}, {}, {}, {}, {})
    if previous.manifest.get("embedder_id") != embedder.fingerprint_id:
        notes.append("previous index was built by another embedder: every photo is embedded again")
        return Previous({}, {}, {}, {}, {})
    if (previous.manifest.get("reference_view"), previous.manifest.get("verifier")) != (REFERENCE_VIEW_ID, FEATURES_ID):
        notes.append("previous index embedded or described its photos another way: every photo is embedded again")
        return Previous({}, {}, {}, {}, {})
    known = {}
    for entry in previous.brands.values():
        if entry.local is None:
            continue
        for product, vector, local in zip(entry.products, entry.vectors, unpack(entry.local)):
            known[product["image_sha256"]] = (vector, local)
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
    return Previous(known, sellers, marks, edits, words)


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
        local: dict[str, list[LocalFeatures]] = {}
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
        queries = _calibration_queries(products, embedder, batch_size, workers)
        calibration = calibrate_thresholds(stacked, background, rule, queries)
        edit_scores, report.edited = _edit_scores(products, stacked, embedder, batch_size, workers, previous.edits,
                                                  on_done=_step(on_step, "editing"))
        report.read = _product_words(products, previous.words, embedder.decode_size, _step(on_step, "reading"))
        calibration_gate = calibrate_gate(edit_scores, gate_rule)
        products_need = calibrate_counts(_product_impostors(products, stacked, local, workers, on_calibration), count_rule)
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
        marks = _calibrate_marks(marks or {}, local, products, embedder.decode_size)
        entries = [
            BrandEntry(
                brand=brand,
                vectors=stacked[brand],
                products=products[brand],
                authorized=sorted(sellers.get(brand, ())),
                threshold=calibration[brand]["threshold"],
                calibration=calibration[brand],
                local=pack(local[brand]),
                marks=marks.get(brand, ([], None))[0],
                mark_features=marks.get(brand, ([], None))[1],
                edit_scores=edit_scores.get(brand),
            )
            for brand in products
        ]
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
        )
    return report


def _calibrate_marks(marks: dict[str, tuple[list[dict], bytes]], local: dict[str, list[LocalFeatures]],
                     products: dict[str, list[dict]], draft: int | None) -> dict[str, tuple[list[dict], bytes]]:
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
    decode size), so shapes and words are looked for at the size a listing photo shows them."""
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

    def impostors(brand: str) -> list[np.ndarray]:
        others = sorted((p for name, rows in products.items() if name != brand for p in rows),
                        key=lambda p: p["image_sha256"])[:MAX_SHAPE_IMPOSTORS]
        return [px for px in map(pixels_of, others) if px is not None]

    calibrated = {}
    for brand, (rows, packed) in marks.items():
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
                               "shape_rule": SHAPE_RULE}
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


def _product_impostors(products: dict[str, list[dict]], vectors: dict[str, np.ndarray],
                       local: dict[str, list[LocalFeatures]], workers: int,
                       on_done: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """For each brand, the most matching keypoints each impostor reaches against the brand's
    products: other brands' reference photos (a fixed sample of at most MAX_PRODUCT_IMPOSTORS,
    by content hash), each verified as a listing photo would be, against the PRODUCT_CANDIDATES
    of the brand's references nearest to it. That is up to 200 verifications per brand, most of
    a many-brand build's time, so they run on ``workers`` threads (OpenCV and FAISS release the
    GIL), one FAISS and one OpenCV thread each, as a scan's do; ``on_done(done, total)`` follows
    them."""
    every = sorted((p["image_sha256"], brand, row) for brand, ps in products.items() for row, p in enumerate(ps))
    pairs = [(brand, other, row) for brand in vectors
             for _, other, row in [item for item in every if item[1] != brand][:MAX_PRODUCT_IMPOSTORS]]

    def most_matched(pair: tuple[str, str, int]) -> int:
        brand, other, row = pair
        nearest = np.argsort(-(vectors[brand] @ vectors[other][row]))[:PRODUCT_CANDIDATES]
        query = QueryFeatures(local[other][row], mirrored(local[other][row]))
        outcomes = verify_candidates(query, [local[brand][i] for i in nearest], counts_only=True)
        return max((max(o.inliers, o.unique) for o in outcomes if o is not None), default=0)

    with opencv_one_thread(), ThreadPoolExecutor(max_workers=workers, initializer=one_openmp_thread) as pool:
        found = []
        for count in pool.map(most_matched, pairs):
            found.append(count)
            if on_done:
                on_done(len(found), len(pairs))
    counts = {brand: [] for brand in vectors}
    for (brand, _, _), count in zip(pairs, found):
        counts[brand].append(count)
    return {brand: np.array(c, np.float64) for brand, c in counts.items()}


def _views_of(path: Path, embedder: Embedder) -> Prepared:
    image = decode_image(read_image_bytes(path), draft=embedder.decode_size)
    return Prepared(array=embedder.preprocess_views(listing_views(image)))


def _step(on_step: Callable[[str, int, int], None] | None, name: str) -> Callable[[int, int], None] | None:
    """``on_step`` for one named step, as a ``(done, total)`` callback."""
    return None if on_step is None else (lambda done, total: on_step(name, done, total))


def _product_words(products: dict[str, list[dict]], previous: dict[str, list[str]], draft: int | None,
                   on_done: Callable[[int, int], None] | None = None) -> int:
    """Read the words printed on each reference photo (:mod:`detector.product_words`), decoded as
    a scan decodes listing photos (``draft``), into its product's ``words``; a photo the previous
    build read keeps its words. Returns how many photos were read this build (an unreadable one
    gets no words, and its siblings are then never told apart by words)."""
    todo = [p for ps in products.values() for p in ps if p["image_sha256"] not in previous]
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
    """Each brand's edit scores for the first stage's level: every reference photo edited as a
    seller would (:func:`detector.augment.seller_edits`), its whole view embedded as the scanner
    embeds a listing's, and the best similarity each edit reaches against the brand. A brand whose
    photos are the ones the ``previous`` build edited keeps its scores (the same embedder made them).
    Also returns how many photos were edited this build."""
    kept = {brand: previous[brand][1] for brand, ps in products.items() if brand in previous
            and previous[brand][0] == tuple(sorted(p["image_sha256"] for p in ps))}
    items = [(brand, p) for brand, ps in products.items() if brand not in kept for p in ps]

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


def _calibration_queries(
    products: dict[str, list[dict]], embedder: Embedder, batch_size: int, workers: int
) -> dict[str, np.ndarray]:
    """A sample of reference photos seen as the scanner sees listings ([n, views, d] per brand)."""
    every = sorted(((p["image_sha256"], brand, p["image_path"]) for brand, ps in products.items() for p in ps))
    sample = every[:MAX_CALIBRATION_PHOTOS]
    found: dict[str, list[np.ndarray]] = {}
    paths = [(brand, Path(path)) for _, brand, path in sample]
    for result in embed_stream(embedder, paths, lambda item: _views_of(item[1], embedder),
                               batch_size=max(1, batch_size // 4), workers=workers):
        if result.error is None:
            found.setdefault(result.item[0], []).append(result.vector)
    return {brand: np.stack(views) for brand, views in found.items()}


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
