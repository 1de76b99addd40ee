"""A scan: stream listing rows → evidence (read, decode, embed, search, verify; in this process,
or on Ray with ``engine="ray"``) → progress database → decisions → outputs.

Progress lives in ``OUT_DIR/.scan/state.sqlite``: every processed row with its nearest
references and a checksum, committed batch by batch. Rerunning the same command after a kill
(SIGKILL included) continues where the committed rows end. Decisions are made from that state
once every row is in and checked present, so a resumed scan writes exactly what an
uninterrupted one would, and every input listing appears exactly once.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import json
import os
import sqlite3
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from detector.cache import EmbeddingCache
from detector.decisions import CLEAR, ERROR, FLAGGED, Decision
from detector.embedders import Embedder
from detector.errors import UserError, disk_full
from detector.brand_words import READER_ID
from detector.evidence import EvidenceMaker, candidates_of, packed_bytes, pending_rows, sightings_of, unpack_vector
from detector.history import PriorEvidence, ScanHistory, parse_night
from detector.matches import authorized_sellers, marked_brands
from detector.outputs import DecisionWriter, wilson_interval, write_json
from detector.policy import Listing, Policy, combine, decide, error_decision
from detector.profile import StageClock
from detector.screening import CODE as SCREENED_OUT
from detector.screening import SCREEN_ID
from detector.report import REPORT_LIMIT, write_report
from detector.tables import LISTING_REQUIRED, count_rows, require_columns, table_columns
from detector.verify import VERIFIER_ID
from detector.views import VIEWS_ID
from index.files import file_sha256, utc_now
from index.store import ReferenceIndex

STATE_DIR = ".scan"
STATE_VERSION = 9


@dataclass
class ScanOptions:
    """How to run a scan (none of these change its decisions except ``top_k``, ``verify``,
    ``screen``, ``read_words`` and ``allow_outside``). ``engine`` is ``local`` or ``ray``; ``device`` and ``backend`` are what Ray actors use."""

    batch_size: int  # no defaults here: detector.api chooses them by device and cores
    workers: int
    top_k: int = 5
    verify: bool = True
    screen: bool | None = True  # the first-stage screen (detector/screening.py); off: every stage on every
    # photo; None (Ray only): on where the actors run on CPUs, off where they have GPUs
    read_words: bool = True  # brand names read in photos (detector/brand_words.py), where the index has marks
    allow_outside: bool = False
    restart: bool = False
    cache: EmbeddingCache | None = None
    engine: str = "local"
    device: str = "auto"
    backend: str = "auto"
    ray_address: str | None = None
    ray_actors: int | None = None
    history: Path | None = None  # the scan history file to read earlier nights from and append to
    night: str | None = None  # the night this dump belongs to (ISO date); today when None
    clock: StageClock | None = None  # where the local engine's time per stage goes (scripts/bench.py)


@dataclass(frozen=True)
class ScanSummary:
    """What a scan did and where its outputs are; ``summary`` is summary.json's whole content and
    :meth:`decisions` reads every decision back."""

    out_dir: Path
    listings: int
    flagged: int
    clear: int
    errors: int
    flagged_per_10000: float
    flagged_per_10000_ci95: tuple[float, float]
    photos_this_run: int
    screened_out: int
    embedded: int
    from_cache: int
    images_per_second: float | None
    elapsed_seconds: float
    resumed: bool
    cache_damaged: str | None
    report: Path
    summary: dict

    @classmethod
    def of(cls, out_dir: Path, summary: dict, report: Path) -> ScanSummary:
        verdicts, run = summary["verdicts"], summary["this_run"]
        return cls(out_dir=out_dir, listings=summary["listings"], flagged=verdicts[FLAGGED], clear=verdicts[CLEAR],
                   errors=verdicts[ERROR], flagged_per_10000=summary["flagged_per_10000"],
                   flagged_per_10000_ci95=tuple(summary["flagged_per_10000_ci95"]),
                   photos_this_run=run["rows_processed"], screened_out=summary.get("screened_out", 0),
                   embedded=run["embedded"], from_cache=run["cache_hits"],
                   images_per_second=summary["images_per_second"], elapsed_seconds=summary["elapsed_seconds"],
                   resumed=summary["resumed"], cache_damaged=run["cache_damaged"], report=report, summary=summary)

    @property
    def decisions_path(self) -> Path:
        return self.out_dir / "decisions.jsonl"

    def decisions(self) -> Iterator[Decision]:
        """Every listing's decision, in input order, read back from decisions.jsonl."""
        with open(self.decisions_path, encoding="utf-8") as fh:
            for line in fh:
                yield Decision.from_record(json.loads(line))


def cache_key(embedder: Embedder) -> str:
    """What the embedding cache keys listing vectors by: the embedder and the view set."""
    return f"{embedder.fingerprint_id}/{VIEWS_ID}"


def _identity(listings: Path, index: ReferenceIndex, embedder: Embedder, options: ScanOptions) -> dict:
    """What must be equal for a rerun to continue an earlier scan's state."""
    source = Path(listings).resolve()
    stat = source.stat()
    return {
        "state_version": STATE_VERSION,
        "listings": str(source),
        "listings_size": stat.st_size if source.is_file() else None,
        "listings_mtime_ns": stat.st_mtime_ns if source.is_file() else None,
        "index_manifest_sha256": file_sha256(index.path / "manifest.json"),
        "embedder_id": embedder.fingerprint_id,
        "views": VIEWS_ID,
        "top_k": options.top_k,
        "verifier": VERIFIER_ID if options.verify else None,
        "screen": (f"{SCREEN_ID}|by-device" if options.screen is None else SCREEN_ID if options.screen else None)
        if options.verify else None,
        "words": READER_ID if options.verify and options.read_words else None,
        "allow_outside": options.allow_outside,
        "keeps_vectors": options.history is not None,
    }


class StateDamaged(Exception):
    """The state database cannot be trusted: it fails SQLite's checks or a row's checksum."""


class ScanState:
    """The per-OUT_DIR state database: identity, committed rows and their nearest references.
    Every row carries a CRC32 of its fields, checked when decisions are made from it."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS rows (row INTEGER PRIMARY KEY, listing_id TEXT, line INTEGER,"
            " seller_id TEXT, title TEXT, price REAL, currency TEXT, image TEXT, path TEXT, error TEXT, error_code TEXT,"
            " notes TEXT, digest TEXT, hits TEXT, vector TEXT, marks TEXT, crc INTEGER)"
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS rows_listing ON rows (listing_id, row)")

    def get(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        try:
            return default if row is None else json.loads(row[0])
        except (TypeError, ValueError) as exc:
            raise StateDamaged(f"progress record {key!r} is unreadable") from exc

    def put(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def commit_batch(self, records: list[tuple], next_row: int | None = None) -> None:
        """Record a batch of rows and the resume point in one transaction. Rows that arrive in
        any order (the Ray engine) leave the resume point alone: that engine sends what is missing."""
        sealed = [(*record, _row_crc(record)) for record in records]
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("INSERT OR REPLACE INTO rows VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", sealed)
            if next_row is not None:
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('next_row', ?)", (json.dumps(next_row),))
            self.db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise

    def recorded(self) -> int:
        """How many rows are recorded."""
        return self.db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]

    def recorded_rows(self) -> set[int]:
        """The numbers of the rows already recorded."""
        return {row for (row,) in self.db.execute("SELECT row FROM rows")}

    def check_complete(self, rows_in_input: int) -> None:
        """Every input row is recorded once: no gaps, nothing beyond the input."""
        found = self.db.execute("SELECT COUNT(*), MIN(row), MAX(row) FROM rows").fetchone()
        expected = (rows_in_input, 0, rows_in_input - 1) if rows_in_input else (0, None, None)
        if tuple(found) != expected:
            raise StateDamaged(f"it records {found[0]:,} rows of an input that has {rows_in_input:,}")

    def listings(self) -> Iterator[tuple[str, list[sqlite3.Row]]]:
        """Each listing's rows, listings in order of first appearance in the input."""
        cursor = self.db.execute(
            "SELECT r.* FROM rows r JOIN (SELECT listing_id, MIN(row) AS first FROM rows GROUP BY listing_id) f"
            " USING (listing_id) ORDER BY f.first, r.row"
        )
        cursor.row_factory = sqlite3.Row
        current, group = None, []
        for row in cursor:
            if _row_crc(tuple(row)[:-1]) != row["crc"]:
                raise StateDamaged(f"row {row['row']} fails its checksum")
            if row["listing_id"] != current and group:
                yield current, group
                group = []
            current = row["listing_id"]
            group.append(row)
        if group:
            yield current, group

    def photos(self) -> Iterator[tuple[int, str | None, str | None]]:
        """(row, content hash, packed whole-image vector) of every row with a readable photo."""
        yield from self.db.execute("SELECT row, digest, vector FROM rows WHERE error IS NULL ORDER BY row")

    def close(self) -> None:
        self.db.close()


def _row_crc(record: tuple) -> int:
    # numbers as floats: SQLite hands a REAL column's 10 back as 10.0
    fields = [float(v) if isinstance(v, (int, float)) else v for v in record]
    return zlib.crc32(json.dumps(fields).encode())


@contextlib.contextmanager
def _exclusive(out_dir: Path):
    state_dir = out_dir / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = open(state_dir / "lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise UserError(f"another scan (pid {holder}) is writing to {out_dir}; wait for it, or choose another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield state_dir
    finally:
        handle.close()


def scan(
    listings: Path,
    index: ReferenceIndex,
    embedder: Embedder,
    policy: Policy,
    out_dir: Path,
    *,
    options: ScanOptions,
    authorized_override: dict[str, set[str]] | None = None,
    on_progress: Callable[[int, int | None], None] | None = None,
) -> ScanSummary:
    """Scan ``listings`` (a table or a folder of images) into ``out_dir``; resumable."""
    listings, out_dir = Path(listings), Path(out_dir)
    if not listings.exists():
        raise UserError(f"listings not found: {listings}")
    if listings.is_file():
        require_columns(listings, LISTING_REQUIRED, table_columns(listings))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot use {out_dir} as the output folder: {exc.strerror or exc}") from None
    started = time.monotonic()
    with _exclusive(out_dir) as state_dir:
        for stale in out_dir.glob(".*.tmp-*"):  # left by a killed scan; the lock says none is writing now
            stale.unlink(missing_ok=True)
        identity = _identity(listings, index, embedder, options)
        state_path = state_dir / "state.sqlite"
        if options.restart:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{state_path}{suffix}").unlink(missing_ok=True)
        state = None
        try:
            state = ScanState(state_path)
            earlier = state.get("identity")
            if earlier is not None and earlier != identity:
                changed = ", ".join(sorted(k for k in identity if identity[k] != earlier.get(k)))
                raise UserError(
                    f"{out_dir} holds a scan of different input (changed: {changed}); "
                    "pass --restart to discard it, or choose another --out"
                )
            resumed = earlier is not None and state.recorded() > 0
            state.put("identity", identity)
            if state.get("started") is None:
                state.put("started", utc_now())
            if options.engine == "ray":
                from detector.ray_engine import run_on_ray

                stats = _new_stats()
                run_on_ray(listings, index, embedder, state, options, listing_root(listings), stats, on_progress)
            else:
                stats = _embed_rows(listings, index, embedder, state, options, on_progress)
            state.check_complete(stats["rows_in_input"])
            embed_seconds = time.monotonic() - started
            return _finalise(listings, index, embedder, policy, out_dir, state, authorized_override,
                             stats, embed_seconds, started, resumed, options)
        except (OSError, sqlite3.DatabaseError, StateDamaged) as exc:
            if disk_full(exc):
                raise UserError(
                    f"disk full while writing {out_dir}; free some space and rerun the same command"
                    " to resume from the last committed batch"
                ) from None
            if isinstance(exc, (sqlite3.DatabaseError, StateDamaged)):
                raise UserError(
                    f"the scan progress in {state_path} is damaged ({exc}), so it is not used; rerun with"
                    " --restart to scan again from the first row"
                ) from None
            raise
        finally:
            if state is not None:
                state.close()


def _embed_rows(listings, index, embedder, state: ScanState, options: ScanOptions, on_progress) -> dict:
    """Phase 1, in this process: every row not yet committed → evidence in the state database."""
    next_row = state.get("next_row", 0)
    total = None if listings.is_dir() else count_rows(listings)
    stats = _new_stats()

    maker = EvidenceMaker(index, embedder, listing_root(listings), cache=options.cache, verify=options.verify,
                          top_k=options.top_k, allow_outside=options.allow_outside, workers=options.workers,
                          keep_vectors=options.history is not None,
                          screen=options.screen if options.screen is not None else embedder.device == "cpu",
                          read_words=options.read_words, clock=options.clock)
    if on_progress:
        on_progress(next_row, total)
    rows = pending_rows(listings, lambda row: row >= next_row, stats)
    for counted in maker.batches(rows, options.batch_size):
        state.commit_batch(counted.records, counted.records[-1].row + 1)
        counted.add_to(stats)
        if on_progress:
            on_progress(counted.records[-1].row + 1, total)
    stats["cache_damaged"] = options.cache.damaged if options.cache is not None else None
    return stats


def listing_root(listings: Path) -> Path:
    """The folder image paths are relative to: the table's folder, or the scanned folder itself."""
    return listings.resolve() if listings.is_dir() else listings.resolve().parent


def _new_stats() -> dict:
    return {"rows": 0, "embedded": 0, "cache_hits": 0, "errors": 0, "rows_in_input": 0, "cache_damaged": None}


def _finalise(listings, index, embedder, policy, out_dir, state, authorized_override, stats, embed_seconds,
              started, resumed, options: ScanOptions) -> ScanSummary:
    """Phase 2: decide every listing from the committed state and write all outputs (and, with
    a history, read earlier nights first and record this one last)."""
    authorized = authorized_sellers(index, authorized_override)
    marked = marked_brands(index, options.read_words)
    verdicts = {FLAGGED: 0, CLEAR: 0, ERROR: 0}
    by_brand: dict[str, dict[str, int]] = {}
    top: list[tuple] = []
    n_listings = n_rows = n_images = 0
    history = ScanHistory(options.history) if options.history is not None else None
    night = parse_night(options.night)
    prior = PriorEvidence(night)
    if history is not None:
        photos = ((row, digest, unpack_vector(vector) if vector else None) for row, digest, vector in state.photos())
        prior = history.prior_evidence(night, photos, policy.history.link_similarity)
    repeat_offenders: set[str] = set()
    comebacks: list[dict] = []
    cleared_by_review = 0
    screened_out = 0
    writer = DecisionWriter(out_dir)
    try:
        scan_id = history.begin_night(night, out_dir) if history is not None else None
        for listing_id, rows in state.listings():
            decisions, paths = [], {}
            for row in rows:
                facts = Listing(listing_id=listing_id, seller_id=row["seller_id"], title=row["title"] or "",
                                price=row["price"], currency=row["currency"], image=row["image"],
                                notes=[(code, text) for code, text in json.loads(row["notes"] or "[]")],
                                prior_flags=prior.prior_flags(row["seller_id"]),
                                comebacks=[link.as_record() for link in prior.comebacks(row["row"], row["seller_id"])],
                                confirmed=prior.confirmed_offences(row["seller_id"]),
                                cleared=cleared.as_record() if (cleared := prior.cleared_for(row["row"], row["seller_id"]))
                                else None)
                if row["error"]:
                    decisions.append(error_decision(facts, row["error"], row["error_code"]))
                    continue
                paths[row["image"]] = row["path"]
                screened_out += any(code == SCREENED_OUT for code, _ in facts.notes)
                decisions.append(decide(facts, candidates_of(index, row["hits"]), authorized, policy,
                                        sightings_of(row["marks"]), marked))
            decision = combine(decisions)
            writer.write(decision)
            if history is not None:
                history.add_listing(scan_id, decision.as_record(),
                                    [(row["digest"], packed_bytes(row["vector"]) if row["vector"] else None)
                                     for row in rows if not row["error"]])
            n_listings += 1
            n_rows += len(rows)
            n_images += len(paths)
            verdicts[decision.verdict] += 1
            if decision.verdict == FLAGGED and any(f.code == "repeat_offender" for f in decision.findings):
                repeat_offenders.add(decision.seller_id)
            cleared_by_review += any(f.code == "cleared_by_review" for f in decision.findings)
            if decision.comeback and len(comebacks) < REPORT_LIMIT:
                comebacks.append({"listing_id": listing_id, "seller_id": decision.seller_id, "verdict": decision.verdict,
                                  "brand": decision.brand, "links": decision.comeback})
            if decision.visual_match:
                counts = by_brand.setdefault(decision.brand, {FLAGGED: 0, CLEAR: 0})
                counts[decision.verdict] += 1
            if decision.verdict == FLAGGED:
                record = {**decision.as_record(), "image_path": paths.get(decision.image),
                          "reference_path": decision.reference_path}
                item = (decision.score, listing_id, n_listings, record)
                if len(top) < REPORT_LIMIT:
                    heapq.heappush(top, item)
                else:
                    heapq.heappushpop(top, item)
        writer.commit()
        if history is not None:
            history.commit_night(scan_id, verdicts)
    except BaseException:
        writer.abort()
        if history is not None:
            history.abort_night()
            history.close()
        raise
    history_summary = None
    if history is not None:
        history_summary = {
            "file": str(Path(options.history).resolve()),
            "night": night,
            "repeat_offenders": len(repeat_offenders),
            "comeback_sellers": len({c["seller_id"] for c in comebacks}),
            "cleared_by_review": cleared_by_review,
            "comebacks": comebacks,
            "trend": history.trend(),
        }
        history.close()
    judged = verdicts[FLAGGED] + verdicts[CLEAR]
    low, high = wilson_interval(verdicts[FLAGGED], judged)
    per_10000, ci95 = 1e4 * verdicts[FLAGGED] / judged if judged else 0.0, [round(1e4 * low, 2), round(1e4 * high, 2)]
    elapsed = time.monotonic() - started
    finished = utc_now()
    state.put("finished", finished)
    summary = {
        "listings_source": str(Path(listings).resolve()),
        "index_path": str(index.path.resolve()),
        "out_dir": str(out_dir.resolve()),
        "started": state.get("started"),
        "finished": finished,
        "resumed": resumed,
        "listings": n_listings,
        "rows": n_rows,
        "images": n_images,
        "screened_out": screened_out,
        "verdicts": verdicts,
        "by_brand": dict(sorted(by_brand.items())),
        "flagged_per_10000": per_10000,
        "flagged_per_10000_ci95": ci95,
        "flagged_per_10k": per_10000,  # the old names, kept as aliases for now (README)
        "flagged_per_10k_ci95": ci95,
        "flagged_rate_denominator": "listings with a verdict other than error",
        "this_run": {
            "rows_processed": stats["rows"],
            "embedded": stats["embedded"],
            "cache_hits": stats["cache_hits"],
            "row_errors": stats["errors"],
            "embed_seconds": round(embed_seconds, 3),
            "cache_damaged": stats["cache_damaged"],
        },
        "images_per_second": round(stats["rows"] / embed_seconds, 2) if embed_seconds > 0 else None,
        "elapsed_seconds": round(elapsed, 3),
        "embedder": embedder.fingerprint,
        "embedder_id": embedder.fingerprint_id,
        "index": index.manifest,
        "history": history_summary,
    }
    report = write_report(out_dir, summary, [item[3] for item in top])
    summary["elapsed_seconds"] = round(time.monotonic() - started, 3)
    write_json(out_dir / "summary.json", summary)
    return ScanSummary.of(out_dir, summary, report)
