"""INDEX_DIR on disk: per-brand FAISS indexes, vectors and product tables under one manifest.

Layout::

    INDEX_DIR/manifest.json        the single commit point: format, embedder, counts, checksums
                                   (of every data file, and of the manifest itself)
    INDEX_DIR/data/<sha>.faiss     one FAISS index per brand
    INDEX_DIR/data/<sha>.ivfdata   an on-disk IVF brand's inverted lists, memory-mapped (optional)
    INDEX_DIR/data/<sha>.npy       that brand's reference vectors (for incremental rebuilds)
    INDEX_DIR/data/<sha>.json      that brand's products (one per vector) and authorised sellers
    INDEX_DIR/data/<sha>.npz       that brand's local features for geometric verification (optional),
                                   and, in a second file, its registered marks' (optional)

Data files are content-addressed and written before the manifest; the manifest is replaced
atomically last. A build killed at any point leaves the previous manifest, and every file it
names, intact. Files no manifest names are removed after a successful commit. Every file's
SHA-256 is checked before its content is used: when the index is opened, except a brand's local
features (checked when a scan first verifies against that brand: opening an index of 10,000
brands does not read them all). Large files are hashed in chunks and then memory-mapped (vectors,
on-disk inverted lists), so opening costs page cache, not process memory. The brands with exact
(Flat) indexes are searched together, in one index made from their vectors at opening
(:class:`index.search.PooledFlat`), so their own ``.faiss`` files are read only by
``verify_files`` (``counterfeit index info``) and never used for a search: a search among a few
brands makes their index from the vectors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from index.files import atomic_write, file_sha256, publish, settle, temporary_beside, utc_now
from index.ondisk import build_ondisk_ivf, open_ondisk_ivf
from index.search import (Hit, Levels, PooledFlat, build_faiss_index, choose_index_kind, effective_kind, hnsw_ef_search,
                          search_brands)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATA = "data"


class IndexStoreError(Exception):
    """An index that cannot be used as asked: missing, corrupt, locked, or built by another embedder."""


@dataclass
class BrandEntry:
    """One brand's references: vectors row-aligned with products, plus sellers and threshold."""

    brand: str
    vectors: np.ndarray
    products: list[dict]
    authorized: list[str] = field(default_factory=list)
    threshold: float | None = None
    calibration: dict = field(default_factory=dict)
    index_kind: str | None = None
    index: faiss.Index | None = None
    local: bytes | None = None  # the image side's local features for verification, opaque here
    marks: list[dict] = field(default_factory=list)  # the brand's registered marks (logo files)
    mark_features: bytes | None = None  # their local features, opaque here, row-aligned with ``marks``
    edit_scores: np.ndarray | None = None  # the first stage's calibration sample, written (read: load_edit_scores)
    local_source: tuple[Path, dict] | None = None  # where a loaded index's ``local`` is read from on first use

    def local_features(self) -> bytes | None:
        """``local``, read (and its checksum checked) on first use: a scan verifies against few
        brands, and opening an index of many brands then does not read every brand's features."""
        if self.local is None and self.local_source is not None:
            index_dir, spec = self.local_source
            self.local = _read_checked(index_dir, spec, self.brand)
        return self.local


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def build_lock(index_dir: Path):
    """Hold the index directory's writer lock; a second concurrent build is refused."""
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
        handle = open(index_dir / ".lock", "w")
    except OSError as exc:
        raise IndexStoreError(f"cannot use {index_dir} as an index folder: {exc.strerror or exc}") from None
    with handle as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexStoreError(f"another build is writing to {index_dir}; wait for it to finish") from None
        yield


def read_manifest(index_dir: Path) -> dict:
    """Read and sanity-check ``manifest.json``, with messages that say what to do."""
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise IndexStoreError(
            f"no index at {index_dir} (no {MANIFEST}); build one with: counterfeit index build CATALOG.csv --out {index_dir}"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexStoreError(
            f"{path} is unreadable ({exc}); rebuild with: counterfeit index build CATALOG.csv --out {index_dir}"
        ) from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexStoreError(
            f"{path} has format version {manifest.get('format_version')!r}; this tool reads version {FORMAT_VERSION}."
            f" Rebuild with: counterfeit index build CATALOG.csv --out {index_dir}"
        )
    if manifest.get("manifest_sha256") != _manifest_digest(manifest):
        raise IndexStoreError(
            f"{path} is corrupt (checksum mismatch); rebuild with: counterfeit index build CATALOG.csv --out {index_dir}"
        )
    return manifest


def reference_files(index_dir: Path) -> dict[tuple[str, str], str]:
    """(brand, catalogue image as the catalogue names it) → the reference photo's file, read from
    the product tables alone (no vectors or FAISS index loaded): what a reviewer is shown."""
    manifest = read_manifest(index_dir)
    found = {}
    for brand, entry in manifest["brands"].items():
        try:
            table = json.loads((Path(index_dir) / DATA / entry["files"]["meta"]["name"]).read_text(encoding="utf-8"))
        except (OSError, KeyError, ValueError):
            continue
        for product in table.get("products", []):
            if product.get("image") and product.get("image_path"):
                found[(brand, product["image"])] = product["image_path"]
    return found


def _manifest_digest(manifest: dict) -> str:
    """SHA-256 of the manifest's content without its own checksum, in a canonical form."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return _sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode())


def _put(data_dir: Path, payload: bytes, suffix: str, written: list[Path]) -> dict:
    digest = _sha256(payload)
    name = f"{digest[:24]}{suffix}"
    target = data_dir / name
    try:
        intact = target.stat().st_size == len(payload) and _sha256(target.read_bytes()) == digest
    except OSError:
        intact = False
    if not intact:
        scratch = temporary_beside(target)
        scratch.write_bytes(payload)
        publish(scratch, target, durable=False)
        written.append(target)
    return {"name": name, "sha256": digest, "bytes": len(payload)}


def _scratch(data_dir: Path, suffix: str) -> Path:
    return data_dir / f".new-{os.getpid()}{suffix}"


def _put_file(data_dir: Path, scratch: Path, suffix: str, written: list[Path]) -> dict:
    """Commit a file written at ``written`` (a :func:`_scratch` path) under its content address,
    like :func:`_put` but without holding the content in memory."""
    digest = file_sha256(scratch)
    size = scratch.stat().st_size
    name = f"{digest[:24]}{suffix}"
    target = data_dir / name
    try:
        intact = target.stat().st_size == size and file_sha256(target) == digest
    except OSError:
        intact = False
    if intact:
        scratch.unlink()
    else:
        publish(scratch, target, durable=False)
        written.append(target)
    return {"name": name, "sha256": digest, "bytes": size}


def _put_vectors(data_dir: Path, vectors: np.ndarray, written: list[Path]) -> dict:
    scratch = _scratch(data_dir, ".npy")
    np.save(scratch, vectors, allow_pickle=False)
    return _put_file(data_dir, scratch, ".npy", written)


def _put_index(data_dir: Path, index: faiss.Index, kind: str, vectors: np.ndarray, written: list[Path]) -> dict:
    """Write a built or (for ``ivfdisk``) to-be-built brand index; the manifest's file specs."""
    scratch = _scratch(data_dir, ".faiss")
    if kind != "ivfdisk":
        faiss.write_index(index, str(scratch))  # streamed: no second copy of a large index in memory
        return {"index": _put_file(data_dir, scratch, ".faiss", written)}
    lists_scratch = _scratch(data_dir, ".ivfdata")
    index = build_ondisk_ivf(vectors, data_dir, lists_scratch.name)
    lists = _put_file(data_dir, lists_scratch, ".ivfdata", written)
    # the index names its lists file; a bare name, found beside the index file when opened
    faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists).filename = lists["name"]
    faiss.write_index(index, str(scratch))
    return {"index": _put_file(data_dir, scratch, ".faiss", written), "lists": lists}


def write_index(
    index_dir: Path,
    brands: list[BrandEntry],
    fingerprint: dict,
    fingerprint_id: str,
    *,
    extra: dict | None = None,
    index_kind: str | None = None,
    memory_budget: int | None = None,
    shared: dict[str, bytes] | None = None,
    reuse: dict[str, dict] | None = None,
) -> dict:
    """Write ``brands`` as a new version of ``index_dir`` and commit it by replacing the manifest.
    ``shared`` names files of the whole index rather than of one brand (what a build keeps for the
    next: :func:`load_shared` reads them). ``reuse``: the current manifest's brand entries, which
    the caller vouches were made from the same photos by the same embedder; a brand whose products,
    calibration and files would be the same keeps its entry and files untouched, so adding one
    brand to 10,000 writes one brand's files and the manifest.

    The caller holds :func:`build_lock`. Returns the committed manifest.
    """
    index_dir = Path(index_dir)
    data_dir = index_dir / DATA
    data_dir.mkdir(parents=True, exist_ok=True)
    previous = None
    if (index_dir / MANIFEST).is_file():
        with contextlib.suppress(IndexStoreError):
            previous = read_manifest(index_dir)
    dim = int(fingerprint["dim"])
    entries = {}
    written: list[Path] = []
    for entry in sorted(brands, key=lambda b: b.brand):
        kind = effective_kind(index_kind or choose_index_kind(len(entry.vectors), dim, memory_budget), len(entry.vectors))
        meta = {"brand": entry.brand, "products": entry.products, "authorized": sorted(set(entry.authorized)),
                "marks": entry.marks}
        meta_bytes = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode()
        kept = (reuse or {}).get(entry.brand)
        if kept is not None and _unchanged(kept, entry, kind, _sha256(meta_bytes), index_dir):
            entries[entry.brand] = kept
            continue
        vectors = np.ascontiguousarray(entry.vectors, dtype=np.float32).reshape(-1, dim)
        index = None if kind == "ivfdisk" else build_faiss_index(vectors, kind)
        files = {
            **_put_index(data_dir, index, kind, vectors, written),
            "vectors": _put_vectors(data_dir, vectors, written),
            "meta": _put(data_dir, meta_bytes, ".json", written),
        }
        del index
        if entry.local is None and entry.local_source is not None and entry.local_source[0] == index_dir:
            files["local"] = dict(entry.local_source[1])  # the file is already here, under its content address
        elif entry.local_features() is not None:
            files["local"] = _put(data_dir, entry.local, ".npz", written)
        if entry.mark_features is not None:
            files["marks"] = _put(data_dir, entry.mark_features, ".npz", written)
        if entry.edit_scores is not None:
            files["edit_scores"] = _put_vectors(data_dir, np.asarray(entry.edit_scores, np.float32), written)
        entries[entry.brand] = {
            "vectors": len(vectors),
            "products": len({p["product_id"] for p in entry.products}),
            "authorized_sellers": len(meta["authorized"]),
            "marks": len(entry.marks),
            "index_kind": kind,
            "threshold": entry.threshold,
            "calibration": entry.calibration,
            "files": files,
        }
    now = utc_now()
    manifest = {
        "format_version": FORMAT_VERSION,
        "created": (previous or {}).get("created", now),
        "updated": now,
        "embedder": fingerprint,
        "embedder_id": fingerprint_id,
        "dim": dim,
        "counts": {
            "brands": len(entries),
            "products": sum(e["products"] for e in entries.values()),
            "vectors": sum(e["vectors"] for e in entries.values()),
            "authorized_sellers": sum(e["authorized_sellers"] for e in entries.values()),
        },
        "brands": entries,
        "shared": {name: _put(data_dir, payload, ".bin", written) for name, payload in sorted((shared or {}).items())},
        **(extra or {}),
    }
    manifest["manifest_sha256"] = _manifest_digest(manifest)
    settle(written, data_dir)  # every data file durable before the manifest that names them
    atomic_write(index_dir / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False).encode())
    _collect_garbage(index_dir, manifest)
    return manifest


def _unchanged(kept: dict, entry: BrandEntry, kind: str, meta_sha: str, index_dir: Path) -> bool:
    """Whether ``entry`` would be written as the manifest entry ``kept`` already is (its files
    still there): the same products, sellers and marks (so the same vectors and features),
    calibration, index kind, and the same files present."""
    files = kept["files"]
    has = {"local": entry.local is not None or entry.local_source is not None,
           "marks": entry.mark_features is not None, "edit_scores": entry.edit_scores is not None}
    return (files["meta"]["sha256"] == meta_sha and kept["index_kind"] == kind and kept["threshold"] == entry.threshold
            and kept["calibration"] == entry.calibration and kept["vectors"] == len(entry.vectors)
            and all((name in files) == present for name, present in has.items())
            and all((index_dir / DATA / spec["name"]).is_file() for spec in files.values()))


def _collect_garbage(index_dir: Path, manifest: dict) -> None:
    keep = {f["name"] for entry in manifest["brands"].values() for f in entry["files"].values()}
    keep |= {f["name"] for f in manifest.get("shared", {}).values()}
    for path in (index_dir / DATA).iterdir():
        if path.name in keep:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)  # a killed on-disk build's shards
        else:
            with contextlib.suppress(OSError):
                path.unlink()


def _checked(index_dir: Path, spec: dict, brand: str, *, keep: bool) -> tuple[Path, bytes | None]:
    """A data file whose size and SHA-256 match the manifest's: its path, and its bytes when
    ``keep`` (small files); large files are hashed in chunks instead and left on disk."""
    path = index_dir / DATA / spec["name"]
    rebuild = f"rebuild with: counterfeit index build CATALOG.csv --out {index_dir}"
    try:
        payload = path.read_bytes() if keep else None
        size = len(payload) if keep else path.stat().st_size
        intact = size == spec["bytes"] and (_sha256(payload) if keep else file_sha256(path)) == spec["sha256"]
    except OSError as exc:
        raise IndexStoreError(f"index file {path} for brand {brand!r} is missing ({exc.strerror}); {rebuild}") from None
    if not intact:
        raise IndexStoreError(f"index file {path} for brand {brand!r} is corrupt (checksum mismatch); {rebuild}")
    return path, payload


def _present(index_dir: Path, spec: dict, brand: str) -> None:
    """A data file read later (its checksum checked then) is at least there, at its size."""
    path = index_dir / DATA / spec["name"]
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise IndexStoreError(f"index file {path} for brand {brand!r} is missing ({exc.strerror}); rebuild with:"
                              f" counterfeit index build CATALOG.csv --out {index_dir}") from None
    if size != spec["bytes"]:
        raise IndexStoreError(f"index file {path} for brand {brand!r} is corrupt (size mismatch); rebuild with:"
                              f" counterfeit index build CATALOG.csv --out {index_dir}")


def _checked_path(index_dir: Path, spec: dict, brand: str) -> Path:
    return _checked(index_dir, spec, brand, keep=False)[0]


def _read_checked(index_dir: Path, spec: dict, brand: str) -> bytes:
    return _checked(index_dir, spec, brand, keep=True)[1]


def load_edit_scores(index: ReferenceIndex, brand: str) -> np.ndarray | None:
    """The brand's stored edit scores (checked), which only a rebuild reads, so opening an index
    for a scan does not."""
    spec = index.manifest["brands"][brand]["files"].get("edit_scores")
    return None if spec is None else np.load(_checked_path(index.path, spec, brand), allow_pickle=False)


def load_shared(index: ReferenceIndex, name: str) -> bytes | None:
    """A file the build kept for the whole index (checked), or ``None`` where it has none."""
    spec = index.manifest.get("shared", {}).get(name)
    return None if spec is None else _read_checked(index.path, spec, f"(the index's {name})")


def verify_files(index_dir: Path) -> int:
    """Check every data file of INDEX_DIR against the manifest's size and SHA-256 (the FAISS
    indexes included, which ``load_index(load_indexes=False)`` does not read); the number checked."""
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    checked = 0
    for brand, entry in manifest["brands"].items():
        for spec in entry["files"].values():
            _checked_path(index_dir, spec, brand)
            checked += 1
    for name, spec in manifest.get("shared", {}).items():
        _checked_path(index_dir, spec, f"(the index's {name})")
        checked += 1
    return checked


def _open_brand_index(index_dir: Path, files: dict, brand: str) -> faiss.Index:
    if "lists" in files:
        _checked_path(index_dir, files["lists"], brand)
        return open_ondisk_ivf(_checked_path(index_dir, files["index"], brand))
    # read from the checked file, not from a copy in memory: a 5 GB index then needs 5 GB, not 10
    index = faiss.read_index(str(_checked_path(index_dir, files["index"], brand)))
    if index.metric_type == faiss.METRIC_INNER_PRODUCT and hasattr(index, "hnsw"):
        index.hnsw.efSearch = hnsw_ef_search(index.ntotal)
    return index


def check_embedder(manifest: dict, fingerprint: dict, fingerprint_id: str, index_dir: Path) -> None:
    """Refuse to mix vectors: the index's embedder must be the one in use."""
    if manifest.get("embedder_id") != fingerprint_id:
        built = manifest.get("embedder", {})
        raise IndexStoreError(
            f"the index at {index_dir} was built with embedder {built.get('name')!r} "
            f"(fingerprint {manifest.get('embedder_id')}), but this run uses {fingerprint.get('name')!r} "
            f"(fingerprint {fingerprint_id}); use --embedder {built.get('name')} or rebuild the index"
        )


@dataclass
class ReferenceIndex:
    """A loaded INDEX_DIR: the manifest and each brand's index, products and sellers. Brands
    whose index is exact (Flat) are searched together in ``pooled``, one index for all of them;
    a search among a few brands uses each one's own."""

    path: Path
    manifest: dict
    brands: dict[str, BrandEntry]
    pooled: PooledFlat | None = None
    _own: dict[str, faiss.Index] = field(default_factory=dict, repr=False)

    def search(self, queries: np.ndarray, k: int = 5, brands: set[str] | None = None,
               levels: Levels | None = None) -> list[list[Hit]]:
        """Top-``k`` references over all brands (or over ``brands``) for each query vector: the most
        similar, or with ``levels`` those furthest above their brand's level."""
        if brands is None:
            return search_brands({name: entry.index for name, entry in self.brands.items() if entry.index is not None},
                                 queries, k, self.pooled, levels)
        return search_brands({name: self.brand_index(name) for name in sorted(brands) if name in self.brands},
                             queries, k, levels=levels)

    def read_all(self) -> None:
        """Read now every file read on first use (each brand's local features), so that a rebuild
        that later removes them cannot fail a long-lived reader (``counterfeit serve``)."""
        for entry in self.brands.values():
            entry.local_features()

    def brand_index(self, brand: str) -> faiss.Index:
        """The brand's own index; for a pooled brand, an exact one made from its vectors on first use."""
        entry = self.brands[brand]
        if entry.index is not None:
            return entry.index
        if brand not in self._own:
            self._own[brand] = build_faiss_index(np.asarray(entry.vectors), "flat")
        return self._own[brand]

    def on_device(self, device: str) -> ReferenceIndex:
        """The same index searched exactly on a torch ``device`` (the GPU path), every brand in one
        pooled search; "cpu" keeps FAISS."""
        if device == "cpu":
            return self
        from index.torch_search import TorchFlatIndex

        brands = {name: dataclasses.replace(entry, index=None) for name, entry in self.brands.items()}
        pooled = PooledFlat({name: entry.vectors for name, entry in self.brands.items()}, int(self.manifest["dim"]),
                            exact=lambda vectors: TorchFlatIndex(vectors, device))
        return ReferenceIndex(self.path, self.manifest, brands, pooled)

    def product(self, hit: Hit) -> dict:
        """The product row a hit points at."""
        return self.brands[hit.brand].products[hit.row]

    def authorized(self, brand: str) -> set[str]:
        """Sellers authorised for ``brand`` (empty when the brand declared none)."""
        entry = self.brands.get(brand)
        return set(entry.authorized) if entry else set()


def load_index(
    index_dir: Path,
    *,
    fingerprint: dict | None = None,
    fingerprint_id: str | None = None,
    load_indexes: bool = True,
) -> ReferenceIndex:
    """Load and verify INDEX_DIR. With a fingerprint, refuse an index built by another embedder."""
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    if fingerprint is not None:
        check_embedder(manifest, fingerprint, fingerprint_id, index_dir)
    brands = {}
    for name, spec in manifest["brands"].items():
        files = spec["files"]
        meta = json.loads(_read_checked(index_dir, files["meta"], name))
        vectors = np.load(_checked_path(index_dir, files["vectors"], name), mmap_mode="r", allow_pickle=False)
        if "local" in files:
            _present(index_dir, files["local"], name)
        mark_features = _read_checked(index_dir, files["marks"], name) if "marks" in files else None
        pooled = spec.get("index_kind") == "flat"
        index = _open_brand_index(index_dir, files, name) if load_indexes and not pooled else None
        brands[name] = BrandEntry(
            brand=name,
            vectors=vectors,
            products=meta["products"],
            authorized=meta["authorized"],
            threshold=spec.get("threshold"),
            calibration=spec.get("calibration", {}),
            index_kind=spec.get("index_kind"),
            index=index,
            local_source=(index_dir, files["local"]) if "local" in files else None,
            marks=meta.get("marks", []),
            mark_features=mark_features,
        )
    pooled = None
    if load_indexes:
        pooled = PooledFlat({name: entry.vectors for name, entry in brands.items() if entry.index_kind == "flat"},
                            int(manifest["dim"]))
    return ReferenceIndex(path=index_dir, manifest=manifest, brands=brands, pooled=pooled)
