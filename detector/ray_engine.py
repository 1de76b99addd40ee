"""The Ray engine: the scan's evidence stage (read, decode, embed, search, verify) on a Ray Data
actor pool. Everything else is the local engine's: the same progress database, the same policy,
the same outputs.

The driver streams the listing table, hands pending rows to Ray in chunks, and commits each batch
of evidence that comes back. Ray Data restarts a lost actor and retries its batches (its actor
pools default to unlimited restarts and task retries). Rows are keyed by their number, so a
retried batch replaces its own rows and never duplicates them. A rerun after a killed
driver sends only the rows the database does not yet hold.

Each actor loads the model and the index once. On a cluster, INDEX_DIR, the listing table and
its photos must be readable at the same paths on every node (a shared or mounted file system).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from detector.errors import UserError
from detector.evidence import Counted, EvidenceMaker, RunStats, pending_rows
from detector.records import Evidence
from detector.stages import Options
from detector.tables import ListingRow, count_rows

CHUNK_ROWS = 20_000
"""Rows handed to Ray at a time: the driver holds one chunk of rows in memory, never the dump."""


def import_ray():
    """``ray`` with Ray Data, or a clear error that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is the part the engine needs
    except ImportError:
        raise UserError("--engine ray needs Ray Data: pip install -e '.[ray]'") from None
    return ray


class EvidenceActor:
    """A Ray Data actor: opens the index and its embedder once, then turns batches of rows into
    evidence records (as JSON, one per row)."""

    def __init__(self, index_dir: str, embedder: str, device: str, backend: str, root: str, workers: int,
                 options: dict):
        from detector.matches import open_index

        index, model = open_index(Path(index_dir), embedder=embedder, device=device, backend=backend)
        self.maker = EvidenceMaker(index, model, Path(root), options=Options(**options), workers=workers)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [ListingRow(**json.loads(text)) for text in batch["listing"]]
        records, computed = [], []
        for counted in self.maker.batches(rows, batch_size=len(rows)):
            records += counted.records
            computed.append(counted.embedded)
        return {"evidence": np.array([json.dumps(r.as_record()) for r in records], dtype=object),
                "embedded": np.array([sum(computed)] + [0] * (len(records) - 1), dtype=np.int64)}


def run_on_ray(listings: Path, index, embedder, state, options, root: Path, stats: RunStats,
               on_progress: Callable[[int, int | None], None] | None) -> None:
    """Phase 1 on Ray: every row the state database lacks → evidence committed to it."""
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=options.ray_address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    _quiet(ray)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if options.device in ("auto", "cuda") else 0
        if options.device == "cuda" and not gpus:
            raise UserError("--device cuda with --engine ray needs a Ray cluster with GPUs; it has none")
        actors = options.ray_actors or (gpus or max(1, int(resources.get("CPU", 1)) // 2))
        done = state.recorded_rows()
        total = None if listings.is_dir() else count_rows(listings)
        if on_progress:
            on_progress(len(done), total)
        device = "cuda" if gpus else "cpu"
        constructor = dict(index_dir=str(index.path), embedder=embedder.fingerprint["name"], device=device,
                           backend=options.backend, root=str(root), workers=options.workers,
                           options=dataclasses.asdict(options.stage_options()))
        for chunk in _chunks(pending_rows(listings, lambda row: row not in done, stats), CHUNK_ROWS):
            dataset = ray.data.from_items([{"listing": json.dumps(dataclasses.asdict(r))} for r in chunk])
            evidence = dataset.map_batches(
                EvidenceActor, fn_constructor_kwargs=constructor, batch_size=options.batch_size,
                compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1, num_gpus=1 if gpus else 0,
                batch_format="numpy",
            )
            for batch in evidence.iter_batches(batch_size=options.batch_size, batch_format="numpy"):
                records = [Evidence.from_record(json.loads(text)) for text in batch["evidence"]]
                state.commit_batch(records)
                errors = sum(r.error is not None for r in records)
                embedded = int(batch["embedded"].sum())
                Counted(records, embedded, len(records) - embedded - errors, errors).add_to(stats)
                if on_progress:
                    on_progress(len(done) + stats.rows, total)
    finally:
        if started_here:
            ray.shutdown()


def _quiet(ray) -> None:
    """The scan has its own progress bar: Ray Data's progress lines would bury it."""
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False


def _chunks(rows: Iterator[ListingRow], size: int) -> Iterator[list[ListingRow]]:
    chunk: list[ListingRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
