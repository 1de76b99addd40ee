"""Where the image side meets the vector side: open an index with the embedder that built it,
and turn index hits into the candidates the policy judges."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from detector.embedders import Embedder, create_embedder
from detector.errors import UserError
from detector.mark_shapes import SHAPE_RULE
from detector.marks import Mark, marks_of
from detector.records import Candidate
from detector.verify import FEATURES_ID, LocalFeatures, Outcome, QueryFeatures, unpack, verify_candidates
from detector.views import REFERENCE_VIEW_ID
from index.search import Hit, Levels
from index.store import ReferenceIndex, load_index, read_manifest


def open_index(
    index_dir: Path,
    *,
    embedder: str | None = None,
    device: str = "auto",
    weights: str | None = None,
    backend: str = "auto",
) -> tuple[ReferenceIndex, Embedder]:
    """Load INDEX_DIR and the embedder it was built with (or ``embedder``, which must match)."""
    manifest = read_manifest(Path(index_dir))
    for key, current in (("reference_view", REFERENCE_VIEW_ID), ("verifier", FEATURES_ID)):
        if manifest.get(key, current) != current:
            raise UserError(
                f"{index_dir} was built with {key} {manifest[key]!r}, but this version uses {current!r}; rebuild it"
                f" with `counterfeit index build CATALOG --out {index_dir}`"
            )
    model = create_embedder(embedder or manifest["embedder"]["name"], device=device, weights=weights, backend=backend)
    index = load_index(Path(index_dir), fingerprint=model.fingerprint, fingerprint_id=model.fingerprint_id)
    check_shape_rule(index, Path(index_dir))
    return index.on_device(model.device), model


VERIFY_TOP = 3
VERIFY_MIN_SIMILARITY = 0.3


class ReferenceFeatures:
    """Local features of an index's reference photos, unpacked per brand on first use."""

    def __init__(self, index: ReferenceIndex):
        self.index = index
        self._brands: dict[str, list[LocalFeatures] | None] = {}

    def get(self, hit: Hit) -> LocalFeatures | None:
        if hit.brand not in self._brands:
            blob = self.index.brands[hit.brand].local_features()
            self._brands[hit.brand] = unpack(blob) if blob is not None else None
        features = self._brands[hit.brand]
        return None if features is None else features[hit.row]


def index_marks(index: ReferenceIndex) -> list[Mark]:
    """Every brand's registered marks, ready to search for in photos."""
    return [mark for name, entry in index.brands.items() if entry.mark_features is not None
            for mark in marks_of(name, entry.marks, entry.mark_features)]


def shape_levels(index: ReferenceIndex, kind: str = "shape_level") -> dict[tuple[str, str], float | None]:
    """Each mark's calibrated shape level (``kind``: ``shape_level``, or ``hull_level`` for the
    correlation within its hull; see :mod:`detector.mark_shapes`), by (brand, mark); ``None`` for
    a mark none of its brand's catalogue photos shows: a shape is weak evidence, searched only for
    marks the brand is known to put on its products, and for an index built before that level
    (:func:`open_index` refuses one whose levels were calibrated under another SHAPE_RULE)."""
    return {(name, mark["image"]): mark.get(kind)
            if mark.get("in_references", 0) > 0 and mark.get("shape_rule") == SHAPE_RULE else None
            for name, entry in index.brands.items() for mark in entry.marks}


def check_shape_rule(index: ReferenceIndex, index_dir: Path) -> None:
    """Refuse an index whose marks' shape levels were calibrated under another scoring rule."""
    for name, entry in index.brands.items():
        for mark in entry.marks:
            if (mark.get("shape_level") is not None or mark.get("hull_level") is not None) \
                    and mark.get("shape_rule") != SHAPE_RULE:
                raise UserError(
                    f"{index_dir} holds shape levels for {name}'s mark {mark['image']} calibrated under"
                    f" {mark.get('shape_rule', 'an earlier rule')!r}, but this version scores shapes by"
                    f" {SHAPE_RULE!r}; rebuild it with `counterfeit index build CATALOG --out {index_dir}` (it keeps the marks)"
                )


def marked_brands(index: ReferenceIndex, words: bool = True) -> frozenset[str]:
    """The brands whose products carry their marks: they registered marks, and at least one shows
    in their own catalogue photos (``index build`` counts them), or, where brand ``words`` count as
    marks, their name is read in those photos."""
    return frozenset(name for name, entry in index.brands.items()
                     if any(mark.get("in_references", 0) > 0 or (words and mark.get("words_in_references", 0) > 0)
                            for mark in entry.marks))


def candidates_key(index: ReferenceIndex, hits: list[Hit]) -> str:
    """What outcomes that depend on a whole candidate set are cached under: the set's reference
    photos (a rebuilt index with other references gives another key)."""
    references = sorted(index.product(hit)["image_sha256"] for hit in hits)
    return hashlib.sha256("|".join(references).encode()).hexdigest()[:16]


def marks_key(index: ReferenceIndex) -> str:
    """A short digest of an index's registered marks and the levels they are found at: what a
    cached search for them is keyed by (an index rebuilt with other levels searches again)."""
    rows = sorted((name, m["image_sha256"], m.get("in_references", 0), m.get("shape_level"), m.get("hull_level"),
                   m.get("shape_rule"))
                  for name, entry in index.brands.items() for m in entry.marks)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def search_views(index: ReferenceIndex, vectors: list[np.ndarray], k: int,
                 brands: set[str] | None = None, levels: Levels | None = None) -> list[list[Hit]]:
    """Top-``k`` references per photo (among ``brands`` when given), where a photo is one vector
    [d] or several views [v, d] and its similarity to a reference is the best over its views: the
    most similar, or with ``levels`` those furthest above their brand's level."""
    if not vectors:
        return []
    counts = [1 if v.ndim == 1 else len(v) for v in vectors]
    flat = index.search(np.concatenate([v.reshape(-1, v.shape[-1]) for v in vectors]), k=k, brands=brands,
                        levels=levels)
    level = (lambda brand: 0.0) if levels is None else levels.by_brand.__getitem__
    merged, start = [], 0
    for count in counts:
        best: dict[tuple[str, int], Hit] = {}
        for hits in flat[start : start + count]:
            for hit in hits:
                key = (hit.brand, hit.row)
                if key not in best or hit.similarity > best[key].similarity:
                    best[key] = hit
        start += count
        merged.append(sorted(best.values(), key=lambda h: (-(h.similarity - level(h.brand)), h.brand, h.row))[:k])
    return merged


def to_verify(
    index: ReferenceIndex, hits: list[Hit], top: int = VERIFY_TOP, min_similarity: float = VERIFY_MIN_SIMILARITY
) -> list[Hit]:
    """The hits worth a geometric check: the closest few that are not plainly unrelated, the other
    hits of their brands (a new photo of a product must be verified beside its siblings, which
    share the brand's logo and layout, for the keypoints unique to one of them to tell which
    product it is), and every hit at or above its brand's calibrated threshold (any of those could
    become the match once closer ones are vetoed, and none should win unchecked)."""
    closest = [hit for hit in hits[:top] if hit.similarity >= min_similarity]
    brands = {hit.brand for hit in closest}
    return [
        hit for hit in hits
        if hit in closest or (hit.brand in brands and hit.similarity >= min_similarity)
        or hit.similarity >= index.brands[hit.brand].threshold
    ]


def verify_hits(features: QueryFeatures, hits: list[Hit], references: ReferenceFeatures) -> dict[Hit, Outcome | None]:
    """Geometric evidence between a photo and each hit's reference, the hits verified together
    (see :func:`detector.verify.verify_candidates`); ``None`` where the pair has too few
    keypoints to tell (hits whose index holds no features are left out)."""
    found = [(hit, references.get(hit)) for hit in hits]
    found = [(hit, reference) for hit, reference in found if reference is not None]
    outcomes = verify_candidates(features, [reference for _, reference in found])
    return {hit: outcome for (hit, _), outcome in zip(found, outcomes)}


def candidates(
    index: ReferenceIndex, hits: list[Hit], outcomes: dict[tuple[str, int], Outcome] | None = None
) -> list[Candidate]:
    """One policy candidate per hit, carrying the product's catalogue facts, brand threshold and
    (where verified) the geometric evidence (``outcomes`` by the hit's brand and row)."""
    outcomes = outcomes or {}
    found = []
    for hit in hits:
        product, outcome = index.product(hit), outcomes.get((hit.brand, hit.row))
        found.append(
            Candidate(
                brand=hit.brand,
                product_id=product["product_id"],
                similarity=hit.similarity,
                reference_image=product["image"],
                reference_path=product["image_path"],
                price=product.get("price"),
                currency=product.get("currency"),
                title=product.get("title", ""),
                calibrated_threshold=index.brands[hit.brand].threshold,
                product_inliers=index.brands[hit.brand].calibration.get("product_inliers"),
                inliers=None if outcome is None else outcome.inliers,
                alignment=None if outcome is None else outcome.alignment,
                unique=None if outcome is None else outcome.unique,
                colour=None if outcome is None else outcome.colour,
                region=None if outcome is None else outcome.region,
                sharpness=None if outcome is None else outcome.sharpness,
                residual=None if outcome is None else outcome.residual,
                words=product.get("words"),
            )
        )
    return found


def authorized_sellers(index: ReferenceIndex, override: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    """Authorised sellers per brand: the index's lists, replaced brand by brand by ``override``."""
    sellers = {brand: set(entry.authorized) for brand, entry in index.brands.items()}
    if override:
        sellers.update(override)
    return sellers
