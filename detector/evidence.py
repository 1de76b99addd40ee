"""Listing rows → evidence: run the registered stages (:data:`detector.stages.STAGES`) over each
batch of photos, in order, each where its gate says so, and record what they found as one
:class:`~detector.records.Evidence` per row, errors included. Nothing is decided here.

The stages before the first batched one (reading and hashing the file) and that stage's own
per-photo preparation (decoding, keypoints, the whole view's pixels) run ahead in worker
threads while the previous batch is in the network. Consecutive per-photo stages run as one task
per photo in a second pool of worker threads; batched stages (the network, the index search)
run once per batch on the calling thread. A stage's failure on one photo becomes that row's
error and never stops the scan.

Both scan engines and ``Detector.lookup`` run this: the local engine in its own process, the Ray
engine inside each actor. Two engines that produce the same records produce the same decisions.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import detector.stages as registry
from detector.batching import batches_ahead, one_openmp_thread, opencv_one_thread
from detector.cache import EmbeddingCache
from detector.embedders import Embedder
from detector.images import ImageError
from detector.profile import StageClock, timed
from detector.records import Evidence
from detector.stages import Context, Options, Photo, Stage, run_cached
from detector.tables import ListingRow, iter_listings
from index.store import ReferenceIndex

EAGER_INPUTS = ("keypoints", "shape_pixels")
"""Inputs made ahead for a photo the network has not seen, when an enabled stage needs them and
no enabled stage can stop photos first: such a photo is new, so its later stages cannot come from
the cache. With the first stage on, a photo pays for them only once it goes on."""


@dataclass
class RunStats:
    """What a scan's evidence stage did this run."""

    rows: int = 0  # rows turned into evidence
    embedded: int = 0  # photos the network ran on
    cache_hits: int = 0  # photos whose every view came from the cache
    errors: int = 0  # rows that ended with an error
    rows_in_input: int = 0  # rows read from the table, recorded earlier or not
    cache_damaged: str | None = None  # why the embedding cache was turned off mid-run


class Counted(NamedTuple):
    """A batch's evidence, and how many of its photos the model embedded or the cache supplied."""

    records: list[Evidence]
    embedded: int
    cache_hits: int
    errors: int

    def add_to(self, stats: RunStats) -> None:
        """Add this batch to a scan's running counts."""
        stats.rows += len(self.records)
        stats.embedded += self.embedded
        stats.cache_hits += self.cache_hits
        stats.errors += self.errors


def pending_rows(listings: Path, wanted: Callable[[int], bool], stats: RunStats) -> Iterator[ListingRow]:
    """The table's rows whose number is ``wanted`` (not yet recorded), counting every row read
    into ``stats.rows_in_input`` so the caller can check nothing was skipped."""
    for row in iter_listings(listings):
        stats.rows_in_input = row.row + 1
        if wanted(row.row):
            yield row


def _failure(exc: BaseException, code: str, doing: str) -> ImageError:
    """A photo's failure as its error: an image problem keeps its own code."""
    if isinstance(exc, ImageError):
        return exc
    if isinstance(exc, MemoryError):
        return ImageError("out_of_memory", "ran out of memory decoding this image")
    return ImageError(code, f"{doing}: {type(exc).__name__}: {exc}")


def _segments(stages: list[Stage]) -> list[Stage | list[Stage]]:
    """Batched stages alone, runs of per-photo stages together."""
    out: list[Stage | list[Stage]] = []
    for stage in stages:
        if stage.batched:
            out.append(stage)
        elif out and isinstance(out[-1], list):
            out[-1].append(stage)
        else:
            out.append([stage])
    return out


class EvidenceMaker:
    """Turns listing rows into evidence records, batch by batch, in input order."""

    def __init__(self, index: ReferenceIndex, embedder: Embedder, root: Path, *, options: Options, workers: int,
                 cache: EmbeddingCache | None = None, clock: StageClock | None = None):
        self.ctx = Context(index, embedder, root, options, cache=cache, clock=clock)
        self.workers = max(1, workers)
        self.registered = list(registry.STAGES)
        active = [stage for stage in self.registered if stage.enabled(self.ctx)]
        first = next(i for i, stage in enumerate(active) if stage.batched)
        self.leading, self.first, self.rest = active[:first], active[first], _segments(active[first + 1:])
        stopping = any(stage.stops for stage in active)
        self.eager = [] if stopping else [name for name in EAGER_INPUTS if any(name in stage.needs for stage in active)]
        self.active = active

    def batches(self, rows: Iterable[ListingRow], batch_size: int) -> Iterator[Counted]:
        """Yield the evidence of each batch of ``batch_size`` rows (the last may be shorter)."""
        with opencv_one_thread(), \
                ThreadPoolExecutor(self.workers, thread_name_prefix="decode", initializer=one_openmp_thread) as ahead, \
                ThreadPoolExecutor(self.workers, thread_name_prefix="verify", initializer=one_openmp_thread) as pool:
            for batch in batches_ahead(ahead, rows, self._lead, batch_size):  # the next batch is read meanwhile
                yield self._finish([future.result() for _, future in batch], pool)

    def one(self, row: ListingRow) -> Evidence:
        """The evidence of a single row."""
        return next(self.batches([row], 1)).records[0]

    def _lead(self, row: ListingRow) -> Photo:
        """A photo through the stages that need its row alone, and the first batched stage's
        preparation; a new photo also gets the inputs later stages need (EAGER_INPUTS)."""
        photo = Photo(row)
        try:
            for stage in self.leading:
                self._apply(stage, photo)
            if photo.ok and self._gated(self.first, photo):
                with timed(self.ctx.clock, f"{self.first.name} (prepare)"):
                    self.first.prepare(photo, self.ctx)
                if photo.decoded():
                    for name in self.eager:
                        photo.input(name, self.ctx)
        except Exception as exc:  # noqa: BLE001 - one hostile file must not stop a nightly scan
            photo.error = _failure(exc, "decode_failed", "could not process image")
        return photo

    def _gated(self, stage: Stage, photo: Photo) -> bool:
        """Whether ``stage`` runs for ``photo``, noted on the photo either way."""
        photo.ran[stage.name] = go = stage.gate(photo, self.ctx)
        return go

    def _apply(self, stage: Stage, photo: Photo) -> None:
        """One per-photo stage on one photo, from the cache where it can."""
        if photo.ok and self._gated(stage, photo):
            photo.fields.update(run_cached(stage, photo, self.ctx))

    def _run_segment(self, stages: list[Stage], photo: Photo) -> None:
        try:
            for stage in stages:
                self._apply(stage, photo)
        except Exception as exc:  # noqa: BLE001 - one photo's failure must not stop a nightly scan
            photo.error = _failure(exc, "analysis_failed", "could not analyse image")

    def _prepare(self, stage: Stage, photo: Photo) -> None:
        try:
            with timed(self.ctx.clock, f"{stage.name} (prepare)"):
                stage.prepare(photo, self.ctx)
        except Exception as exc:  # noqa: BLE001 - one photo's failure must not stop a nightly scan
            photo.error = _failure(exc, "analysis_failed", "could not analyse image")

    def _run_batched(self, stage: Stage, photos: list[Photo], pool: ThreadPoolExecutor, prepared: bool) -> None:
        gated = []
        for photo in photos:
            if photo.ok:
                try:
                    if self._gated(stage, photo):
                        gated.append(photo)
                except Exception as exc:  # noqa: BLE001 - a gate that fails on one photo fails that photo
                    photo.error = _failure(exc, "analysis_failed", "could not analyse image")
        if not prepared and type(stage).prepare is not Stage.prepare:
            list(pool.map(lambda photo: self._prepare(stage, photo), gated))
        gated = [photo for photo in gated if photo.ok]
        if gated:
            with timed(self.ctx.clock, stage.name):
                outputs = stage.run_batch(gated, self.ctx)
            for photo, fields in zip(gated, outputs):
                photo.fields.update(fields)

    def _finish(self, batch: list[Photo], pool: ThreadPoolExecutor) -> Counted:
        with timed(self.ctx.clock, self.first.name):
            outputs = self.first.run_batch(ready := [p for p in batch if p.ok and p.ran.get(self.first.name)], self.ctx)
        for photo, fields in zip(ready, outputs):
            photo.fields.update(fields)
        for segment in self.rest:
            if isinstance(segment, list):
                list(pool.map(lambda photo, stages=segment: self._run_segment(stages, photo),
                              [p for p in batch if p.ok]))
            else:
                self._run_batched(segment, batch, pool, prepared=False)
        for stage in self.active:
            stage.finish(batch, self.ctx)
        records = [self._record(photo) for photo in batch]
        counted = Counted(records, embedded=sum(p.computed for p in batch),
                          cache_hits=sum(1 for p in batch if "vector" in p.fields and not p.computed),
                          errors=sum(not p.ok for p in batch))
        for photo in batch:
            photo.release()
        return counted

    def _record(self, photo: Photo) -> Evidence:
        stages = {}
        for stage in self.registered:
            ran = photo.ran.get(stage.name, False)
            entry = {"version": stage.version, "ran": ran}
            if ran and all(name in photo.fields for name in stage.adds):
                entry.update(stage.record(photo, self.ctx))
                if stage.reports:
                    entry["reports"] = list(stage.reports)
            elif ran:
                entry["ran"] = False  # it failed on this photo before adding its fields
            stages[stage.name] = entry
        row, error = photo.row, photo.error
        return Evidence(row=row.row, listing_id=row.listing_id, line=row.line, seller_id=row.seller_id,
                        title=row.title, price=row.price, currency=row.currency, image=row.image,
                        notes=[list(note) for note in row.notes], error=None if error is None else str(error),
                        error_code=None if error is None else error.code, stages=stages)
