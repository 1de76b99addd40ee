"""The front door: register a catalogue, open a detector, look up one photo or scan a dump.

    from detector import Detector, build_index

    info = build_index("catalog.csv", "IDX", authorized="authorized.csv")
    det = Detector.open("IDX")
    res = det.lookup("photo.jpg", price=20.0, currency="USD", seller="shop-1", title="...")
    res.verdict, res.score, res.visual_state, res.findings, res.matches[0].product_id
    summary = det.scan("listings.csv", "OUT")
    for decision in summary.decisions(): ...

The CLI, ``counterfeit demo`` and scripts/evaluate.py are thin layers on these calls. Options are
checked when given, before any photo is embedded; a problem the caller can fix raises
:class:`~detector.errors.UserError` with one sentence that says what to do.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from detector.decisions import Decision, Finding, Match
from detector.errors import UserError
from detector.policy import Listing, Policy, load_policy
from detector.scanner import ScanSummary
from detector.settings import BACKENDS, DEVICES, ENGINES, INDEX_TYPES, LIMITS, SCREEN, TOP_K, default_batch, default_workers

if TYPE_CHECKING:
    from detector.cache import EmbeddingCache
    from detector.embedders import Embedder
    from detector.evidence import EvidenceMaker
    from detector.judging import Judge
    from detector.records import Evidence
    from detector.profile import StageClock
    from index.store import ReferenceIndex

def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _whole(name: str, value: int | None) -> None:
    low, high = LIMITS[name]
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
        raise UserError(f"{name} must be a whole number from {low} to {high}, not {value!r}")


def _checked_facts(price: float | None, currency: str | None) -> tuple[float | None, str | None]:
    """A listing's price and currency as a scan would compare them (currency upper-cased), or a
    UserError that says what is wrong."""
    if price is not None and not currency:
        raise UserError("a price needs its currency (for example currency='USD')")
    if price is not None:
        from detector.tables import parse_price

        if isinstance(price, bool) or not isinstance(price, (int, float)):
            why = "it is not a number"
        elif not math.isfinite(price):
            why = "it is not a finite number"
        else:
            why = parse_price(price)[1]
        if why:  # the rule a scan applies to a row's price (there the row keeps a price_unreadable remark)
            raise UserError(f"price must be a non-negative number a scan would compare, not {price!r}: {why}")
    return price, currency.upper() if currency else None


@contextlib.contextmanager
def _index_errors() -> Iterator[None]:
    """An index that cannot be used (missing, damaged, locked) is the caller's to fix: a UserError."""
    from index.store import IndexStoreError

    try:
        yield
    except IndexStoreError as exc:
        raise UserError(str(exc)) from None


def _existing(what: str, path: str | Path | None) -> Path | None:
    """``path`` as a Path when it is a regular file or a folder (``None`` stays ``None``)."""
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if not (path.is_file() or path.is_dir()):
        raise UserError(f"{what} {path} is neither a file nor a folder (a named pipe or a device cannot be"
                        " read twice, as a scan reads its input); save it to a file first")
    return path


# --- build_index ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexInfo:
    """What :func:`build_index` committed."""

    path: Path
    brands: int
    products: int
    photos: int
    embedded: int
    reused: int
    skipped: list[str] = field(default_factory=list)  # bad catalogue rows left out (with skip_bad_rows)
    notes: list[str] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)


def build_index(
    catalog: str | Path,
    out: str | Path,
    *,
    authorized: str | Path | None = None,
    marks: str | Path | None = None,
    background: str | Path | None = None,
    embedder: str = "lite0",
    weights: str | Path | None = None,
    device: str = "auto",
    backend: str = "auto",
    index_type: str = "auto",
    memory_budget_mb: float | None = None,
    skip_bad_rows: bool = False,
    allow_outside_paths: bool = False,
    batch_size: int | None = None,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_calibration: Callable[[int, int], None] | None = None,
    on_step: Callable[[str, int, int], None] | None = None,
) -> IndexInfo:
    """Embed a catalogue's reference photos into per-brand FAISS indexes at ``out`` (what
    ``counterfeit index build`` does). Rebuilding embeds only photos the index lacks; the previous
    index stays usable until the new one is committed. ``batch_size`` defaults to ``SCAN_BATCH``
    for the model's device and ``workers`` (threads decoding and taking keypoints) to one per
    CPU core. ``on_progress(done, total)`` follows the photos embedded; ``on_calibration(done,
    total)`` the verifications that calibrate each brand's keypoint count (up to 200 per brand:
    most of a many-brand build's time); ``on_step(step, done, total)`` the other long steps,
    ``editing`` (reference photos edited for the first-stage levels) and ``reading`` (the words
    printed on them)."""
    catalog = _existing("catalogue", catalog)
    _existing("authorised-seller table", authorized)
    _existing("marks table", marks)
    _existing("background folder", background)
    _choice("device", device, DEVICES)
    _choice("backend", backend, BACKENDS)
    _choice("index_type", index_type, INDEX_TYPES)
    _whole("batch_size", batch_size)
    _whole("workers", workers)
    if memory_budget_mb is not None and not memory_budget_mb > 0:
        raise UserError(f"memory_budget_mb must be a positive number of MB, not {memory_budget_mb!r}")
    from detector.catalog import build_catalog_index
    from detector.embedders import create_embedder

    model = create_embedder(embedder, device=device, weights=weights, backend=backend)
    batch_size = default_batch(model.device) if batch_size is None else batch_size
    workers = default_workers() if workers is None else workers
    with _index_errors():
        report = build_catalog_index(
            catalog, Path(out), model, authorized_path=authorized and Path(authorized),
            marks_path=marks and Path(marks), background_dir=background and Path(background), skip_bad_rows=skip_bad_rows,
            allow_outside=allow_outside_paths, index_kind=None if index_type == "auto" else index_type,
            memory_budget=None if memory_budget_mb is None else int(memory_budget_mb * 2**20),
            batch_size=batch_size, workers=workers, on_progress=on_progress, on_calibration=on_calibration,
            on_step=on_step,
        )
    counts = report.manifest["counts"]
    return IndexInfo(path=Path(out), brands=counts["brands"], products=counts["products"], photos=counts["vectors"],
                     embedded=report.embedded, reused=report.reused, skipped=report.skipped, notes=report.notes,
                     manifest=report.manifest)


# --- lookup results -------------------------------------------------------------------------


@dataclass
class LookupResult:
    """One photo's nearest protected products and its decision. ``verdict`` and ``score`` are
    ``None`` when no listing facts (price, seller, title) were given to judge."""

    photo: str
    decision: Decision
    judged: bool

    @property
    def verdict(self) -> str | None:
        return self.decision.verdict if self.judged else None

    @property
    def score(self) -> float | None:
        return self.decision.score if self.judged else None

    @property
    def visual_state(self) -> str:
        return self.decision.visual_state

    @property
    def findings(self) -> list[Finding]:
        return self.decision.findings

    @property
    def reasons(self) -> list[str]:
        return self.decision.reasons

    @property
    def matches(self) -> list[Match]:
        """The nearest references, as the policy ranks them: the first is the one decided on."""
        return self.decision.matches

    @property
    def marks(self) -> list[dict]:
        """The registered marks found in the photo: brand, mark, inliers, inverted, box (fractions)."""
        return self.decision.marks

    @property
    def plausible(self) -> list[str]:
        """The products a visual match could show, likeliest first (more than one: siblings in doubt)."""
        return self.decision.plausible

    @property
    def evidence(self) -> dict[str, dict]:
        """The fields stages report (``Stage.reports``), by stage name."""
        return self.decision.evidence

    def as_json(self) -> dict:
        """What ``counterfeit lookup --json`` prints."""
        d = self.decision
        return {
            "photo": self.photo,
            "verdict": self.verdict,
            "score": self.score,
            "visual_state": d.visual_state,
            "reasons": d.reasons,
            "findings": [f.as_record() for f in d.findings],
            "best": {"brand": d.brand, "product_id": d.product_id, "similarity": d.similarity, "threshold": d.threshold,
                     "inliers": d.inliers, "alignment": d.alignment, "visual_match": d.visual_match,
                     "price_ratio": d.price_ratio, "seller_authorized": d.seller_authorized},
            "matches": [{**m.as_record(), "image": m.reference_image, "price": m.price, "currency": m.currency}
                        for m in d.matches],
            "plausible": d.plausible,
            "marks": d.marks,
            "evidence": d.evidence,
        }


@dataclass(frozen=True)
class Upload:
    """One listing to check whose photo is in memory (:meth:`Detector.check`): the photo's bytes
    and the listing's facts, each optional."""

    photo: bytes
    listing_id: str | None = None
    seller: str | None = None
    price: float | None = None
    currency: str | None = None
    title: str | None = None


@dataclass
class Checked:
    """What :meth:`Detector.check` found for one upload: its ``result``, or why it has none
    (``error_code``, one of docs/decisions.md's, and ``error``); the photo's content hash and
    whole-view vector (packed, when kept) where it was read."""

    listing_id: str
    result: LookupResult | None = None
    error_code: str | None = None
    error: str | None = None
    digest: str | None = None
    vector: str | None = None


# --- the detector ---------------------------------------------------------------------------


def _cache_path(cache: str | Path | bool) -> Path | None:
    """The embedding cache file ``cache`` names: True, the default one; False, none."""
    from detector.cache import default_cache_path

    return default_cache_path() if cache is True else (Path(cache) if cache else None)


class Detector:
    """An opened index with its embedder, a policy and an embedding cache: looks up photos and
    scans dumps. Open it with :meth:`open`; close it (or use ``with``) to release the cache."""

    def __init__(self, index: ReferenceIndex, embedder: Embedder, policy: Policy, *, device: str, backend: str,
                 cache: Path | None, workers: int | None = None):
        self.index, self.embedder, self.policy = index, embedder, policy
        self.device, self.backend, self.cache_path = device, backend, cache
        self.workers = default_workers() if workers is None else workers
        self._cache: EmbeddingCache | None = None
        self._makers: dict[tuple, EvidenceMaker] = {}
        self._judge: Judge | None = None

    @classmethod
    def open(
        cls,
        index_dir: str | Path,
        *,
        policy: str | Path | Policy | None = None,
        device: str = "auto",
        backend: str = "auto",
        cache: str | Path | bool = True,
        embedder: str | None = None,
        weights: str | Path | None = None,
        workers: int | None = None,
    ) -> Detector:
        """Open INDEX_DIR with the embedder that built it. ``policy``: a TOML file overriding the
        defaults, or a :class:`Policy`; ``cache``: True for the default embedding cache, a file
        for another, False for none; ``workers``: threads decoding and verifying a
        :meth:`check` batch (one per CPU core by default)."""
        policy = policy if isinstance(policy, Policy) else load_policy(_existing("policy file", policy))
        _choice("device", device, DEVICES)
        _choice("backend", backend, BACKENDS)
        _whole("workers", workers)
        from detector.matches import open_index

        with _index_errors():
            index, model = open_index(Path(index_dir), embedder=embedder, device=device, weights=weights,
                                      backend=backend)
        return cls(index, model, policy, device=device, backend=backend, cache=_cache_path(cache), workers=workers)

    def using(self, *, policy: str | Path | Policy | None = None, cache: str | Path | bool | None = None) -> Detector:
        """The same index and model with another policy or cache (nothing is loaded again)."""
        if policy is not None and not isinstance(policy, Policy):
            policy = load_policy(_existing("policy file", policy))
        cache_path = self.cache_path if cache is None else _cache_path(cache)
        return Detector(self.index, self.embedder, policy or self.policy, device=self.device, backend=self.backend,
                        cache=cache_path, workers=self.workers)

    def close(self) -> None:
        """Release the embedding cache."""
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def cache(self) -> EmbeddingCache | None:
        """The embedding cache, opened on first use (``None`` when opened with ``cache=False``)."""
        if self._cache is None and self.cache_path is not None:
            from detector.cache import EmbeddingCache
            from detector.scanner import cache_key

            self._cache = EmbeddingCache(self.cache_path, cache_key(self.embedder), self.embedder.dim)
        return self._cache

    @property
    def _reads_product_words(self) -> bool:
        """Whether photos are read for the words printed on siblings: only where the policy uses them."""
        return self.policy.product.enabled and self.policy.product.words

    @property
    def _reads_words(self) -> bool:
        """Whether photos are read for brand names: only where the policy counts them."""
        return self.policy.marks.enabled and self.policy.marks.words

    def lookup(
        self,
        photo: str | Path,
        *,
        price: float | None = None,
        currency: str | None = None,
        seller: str | None = None,
        title: str | None = None,
        top_k: int = TOP_K,
        screen: bool = False,
    ) -> LookupResult:
        """Is this photo one of ours? Its nearest protected products, and a verdict when listing
        facts (``price`` with ``currency``, ``seller``, ``title``) are given. The photo's path is
        the caller's, so it is trusted (no folder boundary). ``screen``: let the first stage end a
        photo far from every protected product, as a scan and ``counterfeit serve`` do (off by
        default: a lookup shows every stage's evidence)."""
        price, currency = _checked_facts(price, currency)
        _whole("top_k", top_k)
        from detector.tables import ListingRow

        row = ListingRow(row=0, line=0, listing_id=str(photo), seller_id=seller, title=title or "", price=price,
                         currency=currency, image=str(Path(photo).absolute()))
        evidence = self._maker(top_k, screen, keep_vectors=False).one(row)
        if evidence.error:
            raise UserError(evidence.error)
        return self._judged(evidence, str(photo), str(photo),
                            judged=price is not None or seller is not None or title is not None)

    def check(self, uploads: list[Upload], *, top_k: int = TOP_K, screen: bool = SCREEN,
              keep_vectors: bool = False) -> list[Checked]:
        """Check listings whose photos are in memory (what ``counterfeit serve`` answers), in one
        batch: one :class:`Checked` per upload, in order. A photo's result is the decision
        :meth:`lookup` gives for the same bytes, facts and ``screen``; a bad photo or bad facts
        is that upload's ``error_code`` (docs/decisions.md), never an exception. ``keep_vectors``
        keeps each photo's whole-view vector (for a scan history)."""
        _whole("top_k", top_k)
        from detector.tables import ListingRow

        out: list[Checked | None] = [None] * len(uploads)
        rows = []
        for i, upload in enumerate(uploads):
            label = upload.listing_id or ""
            try:
                price, currency = _checked_facts(upload.price, upload.currency)
            except UserError as exc:
                out[i] = Checked(label, error_code="bad_facts", error=str(exc))
                continue
            rows.append((i, ListingRow(row=i, line=0, listing_id=label, seller_id=upload.seller, title=upload.title or "",
                                       price=price, currency=currency, image="", data=upload.photo)))
        if rows:
            batch = next(self._maker(top_k, screen, keep_vectors).batches([row for _, row in rows], len(rows)))
            for (i, _), evidence in zip(rows, batch.records):
                if evidence.error:
                    out[i] = Checked(evidence.listing_id, error_code=evidence.error_code, error=evidence.error,
                                     digest=evidence.digest)
                else:
                    upload = uploads[i]
                    judged = upload.price is not None or upload.seller is not None or upload.title is not None
                    out[i] = Checked(evidence.listing_id, result=self._judged(evidence, evidence.listing_id, "", judged=judged),
                                     digest=evidence.digest, vector=evidence.vector)
        return out

    def _maker(self, top_k: int, screen: bool, keep_vectors: bool) -> EvidenceMaker:
        """The evidence maker of one photo at a time (lookup) or one batch (check), kept per options."""
        key = (top_k, screen, keep_vectors)
        if key not in self._makers:
            from detector.evidence import EvidenceMaker
            from detector.stages import Options

            self._makers[key] = EvidenceMaker(
                self.index, self.embedder, Path("/"), cache=self.cache, workers=self.workers,
                options=Options(top_k=top_k, screen=screen, keep_vectors=keep_vectors, read_words=self._reads_words,
                                product_words=self._reads_product_words, allow_outside=True))
        return self._makers[key]

    def _judged(self, evidence: Evidence, label: str, image: str, *, judged: bool) -> LookupResult:
        """The decision on one photo's evidence; ``judged``: listing facts were given to judge."""
        from detector.judging import Judge

        facts = Listing(listing_id=label, seller_id=evidence.seller_id, title=evidence.title, price=evidence.price,
                        currency=evidence.currency, image=image)
        if self._judge is None:
            self._judge = Judge(self.index, self.policy, words=self._reads_words)
        decision = self._judge.decide(evidence, facts)
        if not judged:  # the visual finding alone: there is nothing else to judge
            decision.reasons, decision.findings = decision.reasons[:1], []
        return LookupResult(photo=label, decision=decision, judged=judged)

    def scan(
        self,
        listings: str | Path,
        out: str | Path,
        *,
        authorized: str | Path | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        top_k: int = TOP_K,
        verify: bool = True,
        screen: bool = SCREEN,
        allow_outside_paths: bool = False,
        restart: bool = False,
        engine: str = "local",
        address: str | None = None,
        ray_actors: int | None = None,
        history: str | Path | None = None,
        night: str | None = None,
        on_progress: Callable[[int, int | None], None] | None = None,
        clock: StageClock | None = None,
    ) -> ScanSummary:
        """Scan a night's listings (a table, or a folder of images) into ``out``: decisions.jsonl,
        flagged.csv, summary.json and report.html (what ``counterfeit scan`` does). Rerunning
        into the same ``out`` resumes a killed scan. ``authorized`` replaces the index's
        authorised sellers for the brands it names; ``batch_size`` defaults to ``SCAN_BATCH`` for
        the model's device and ``workers`` to one thread per CPU core (2 per Ray actor);
        ``screen``: the first stage (detector/screening.py), which ends a photo far from every
        protected product after its whole view (``detector.settings.SCREEN``); ``history`` is the file earlier
        nights are read from and this one appended to; ``engine="ray"`` runs the evidence stage
        on Ray (no embedding cache there)."""
        from detector.history import parse_night
        from detector.scanner import ScanOptions, scan
        from detector.tables import read_authorized

        listings = _existing("listings", listings)
        for name, value in (("batch_size", batch_size), ("workers", workers), ("top_k", top_k),
                            ("ray_actors", ray_actors)):
            _whole(name, value)
        _choice("engine", engine, ENGINES)
        night = parse_night(night)
        override = read_authorized(Path(authorized)) if authorized is not None else None
        if history is not None:
            history = Path(history)
            if history.exists() and not history.is_file() or not history.parent.is_dir():
                raise UserError(f"cannot keep a scan history at {history}: its folder must exist and it must be a file")
        if engine == "ray":
            from detector.ray_engine import import_ray

            import_ray()  # a missing Ray is a clear error before anything is embedded
        if batch_size is None:
            batch_size = default_batch(self.embedder.device if engine == "local" else "cpu")
        if workers is None:
            workers = default_workers(engine)
        options = ScanOptions(batch_size=batch_size, workers=workers, top_k=top_k, verify=verify, screen=screen,
                              read_words=self._reads_words, product_words=self._reads_product_words,
                              allow_outside=allow_outside_paths, restart=restart,
                              cache=self.cache if engine == "local" else None, engine=engine, device=self.device,
                              backend=self.backend, ray_address=address, ray_actors=ray_actors, history=history,
                              night=night, clock=clock)
        return scan(listings, self.index, self.embedder, self.policy, Path(out), options=options,
                    authorized_override=override, on_progress=on_progress)
