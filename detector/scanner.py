"""A scan: stream listing rows → evidence (the registered stages: in this process, or on Ray with
``engine="ray"``) → progress database → decisions → outputs.

Progress lives in ``OUT_DIR/.scan/state.sqlite``: every processed row's evidence record, with each
stage's fields under the stage's name and version, and a checksum, committed batch by batch.
Rerunning the same command after a kill (SIGKILL included) continues where the committed rows
end; rows recorded under another version of a stage are run again, never misread. Decisions are
made from that state once every row is in and checked present, so a resumed scan writes exactly
what an uninterrupted one would, and every input listing appears exactly once.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import detector.stages as registry
from detector.cache import EmbeddingCache
from detector.decisions import CLEAR, ERROR, FLAGGED, Decision
from detector.embedders import Embedder
from detector.errors import UserError, disk_full
from detector.evidence import EvidenceMaker, RunStats, pending_rows
from detector.history import PriorEvidence, ScanHistory, parse_night
from detector.judging import Judge
from detector.outputs import DecisionWriter, wilson_interval, write_json
from detector.policy import Listing, Policy, combine
from detector.profile import StageClock
from detector.records import Evidence, packed_bytes, unpack_vector
from detector.report import REPORT_LIMIT, write_report
from detector.settings import SCREEN, TOP_K
from detector.stages import Options
from detector.tables import LISTING_REQUIRED, count_rows, require_columns, table_columns
from detector.views import VIEWS_ID
from index.files import file_sha256, utc_now
from index.store import ReferenceIndex

STATE_DIR = ".scan"
STATE_VERSION = 10
"""The progress database's layout (its tables and columns); what stages add is versioned per stage."""


@dataclass
class ScanOptions:
    """How to run a scan (none of these change its decisions except ``top_k``, ``verify``,
    ``screen``, ``read_words``, ``product_words`` and ``allow_outside``). ``engine`` is ``local`` or ``ray``; ``device`` and
    ``backend`` are what Ray actors use."""

    batch_size: int  # no defaults here: detector.settings chooses them by device and cores
    workers: int
    top_k: int = TOP_K
    verify: bool = True
    screen: bool = SCREEN  # the first stage (detector/screening.py)
    read_words: bool = True  # brand names read in photos (detector/brand_words.py), where the index has marks
    product_words: bool = True  # the words on a product read where siblings are in doubt (detector/product_words.py)
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

    def stage_options(self) -> Options:
        """What the stages read."""
        return Options(verify=self.verify, screen=self.screen and self.verify, top_k=self.top_k,
                       read_words=self.read_words, product_words=self.product_words,
                       keep_vectors=self.history is not None,
                       allow_outside=self.allow_outside)


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
    """What must be equal for a rerun to continue an earlier scan's state (the stages' versions
    are checked row by row: see :meth:`ScanState.forget_stale`)."""
    source = Path(listings).resolve()
    stat = source.stat()
    screen = options.stage_options().screen
    return {
        "state_version": STATE_VERSION,
        "listings": str(source),
        "listings_size": stat.st_size if source.is_file() else None,
        "listings_mtime_ns": stat.st_mtime_ns if source.is_file() else None,
        "index_manifest_sha256": file_sha256(index.path / "manifest.json"),
        "embedder_id": embedder.fingerprint_id,
        "top_k": options.top_k,
        "verify": options.verify,
        "screen": screen if options.verify else None,
        "words": options.verify and options.read_words,
        "product_words": options.verify and options.product_words,
        "allow_outside": options.allow_outside,
        "keeps_vectors": options.history is not None,
    }


class StateDamaged(Exception):
    """The state database cannot be trusted: it fails SQLite's checks or a row's checksum."""


class ScanState:
    """The per-OUT_DIR state database: identity, and each committed row's evidence record (JSON,
    read by name) with a CRC32 that is checked when decisions are made from it."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self.db.execute("CREATE TABLE IF NOT EXISTS rows (row INTEGER PRIMARY KEY, listing_id TEXT, record TEXT,"
                        " crc INTEGER)")
        self.db.execute("CREATE INDEX IF NOT EXISTS rows_listing ON rows (listing_id, row)")

    def get(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        try:
            return default if row is None else json.loads(row[0])
        except (TypeError, ValueError) as exc:
            raise StateDamaged(f"progress record {key!r} is unreadable") from exc

    def put(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def commit_batch(self, records: list[Evidence], next_row: int | None = None) -> None:
        """Record a batch of rows and the resume point in one transaction. Rows that arrive in
        any order (the Ray engine) leave the resume point alone: that engine sends what is missing."""
        sealed = []
        for evidence in records:
            text = json.dumps(evidence.as_record())
            sealed.append((evidence.row, evidence.listing_id, text, _row_crc(evidence.row, evidence.listing_id, text)))
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?)", sealed)
            if next_row is not None:
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('next_row', ?)", (json.dumps(next_row),))
            self.db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise

    def forget_stale(self, versions: dict[str, str]) -> None:
        """Drop the rows recorded under other stage versions than ``versions`` (a stage changed
        since they were recorded: they are run again), and move the resume point back to the first."""
        if self.get("stage_versions") == versions:
            return
        stale = [row for row, text in self.db.execute("SELECT row, record FROM rows")
                 if _versions(text) != versions]
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("DELETE FROM rows WHERE row=?", [(row,) for row in stale])
        if stale and self.get("next_row", 0) > min(stale):
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('next_row', ?)", (json.dumps(min(stale)),))
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('stage_versions', ?)", (json.dumps(versions),))
        self.db.execute("COMMIT")

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

    def _records(self, sql: str) -> Iterator[Evidence]:
        for row, listing_id, text, crc in self.db.execute(sql):
            if _row_crc(row, listing_id, text) != crc:
                raise StateDamaged(f"row {row} fails its checksum")
            try:
                yield Evidence.from_record(json.loads(text))
            except (TypeError, ValueError) as exc:
                raise StateDamaged(f"row {row} is unreadable ({exc})") from None

    def listings(self, versions: dict[str, str]) -> Iterator[tuple[str, list[Evidence]]]:
        """Each listing's rows, listings in order of first appearance in the input; a row recorded
        under other stage versions than ``versions`` is damage, never read as if it were current."""
        current, group = None, []
        for evidence in self._records(
                "SELECT r.row, r.listing_id, r.record, r.crc FROM rows r JOIN (SELECT listing_id, MIN(row) AS first"
                " FROM rows GROUP BY listing_id) f USING (listing_id) ORDER BY f.first, r.row"):
            if evidence.versions() != versions:
                raise StateDamaged(f"row {evidence.row} was recorded by other versions of the stages")
            if evidence.listing_id != current and group:
                yield current, group
                group = []
            current = evidence.listing_id
            group.append(evidence)
        if group:
            yield current, group

    def photos(self) -> Iterator[tuple[int, str | None, str | None]]:
        """(row, content hash, packed whole-image vector) of every row with a readable photo."""
        for evidence in self._records("SELECT row, listing_id, record, crc FROM rows ORDER BY row"):
            if not evidence.error:
                yield evidence.row, evidence.digest, evidence.vector

    def close(self) -> None:
        self.db.close()


def listing_photo_paths(out_dir: Path, wanted: list[tuple[str, str | None]]) -> dict[tuple[str, str | None], str | None]:
    """Where a finished scan in ``out_dir`` found each (listing_id, image) photo: the file its
    ``read`` stage resolved, or ``None`` (unreadable, or not in the scan). Reads the progress
    database read-only, never by position; ``{}`` when there is none or it cannot be read."""
    state = Path(out_dir) / STATE_DIR / "state.sqlite"
    if not state.is_file():
        return {}
    try:
        db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    except sqlite3.Error:
        return {}
    found: dict[tuple[str, str | None], str | None] = {}
    try:
        for listing_id, image in wanted:
            found[(listing_id, image)] = None
            for (text,) in db.execute("SELECT record FROM rows WHERE listing_id = ? ORDER BY row", (listing_id,)):
                evidence = Evidence.from_record(json.loads(text))
                if evidence.image == image and not evidence.error:
                    found[(listing_id, image)] = evidence.path
                    break
    except (sqlite3.Error, ValueError, TypeError):
        return {}
    finally:
        db.close()
    return found


def _row_crc(row: int, listing_id: str, record: str) -> int:
    return zlib.crc32(json.dumps([row, listing_id, record]).encode())


def _versions(record: str) -> dict[str, str] | None:
    try:
        return {name: stage["version"] for name, stage in json.loads(record)["stages"].items()}
    except (TypeError, ValueError, KeyError):
        return None


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
    if not (listings.is_file() or listings.is_dir()):
        raise UserError(f"listings {listings} is neither a file nor a folder (a named pipe or a device cannot be read"
                        " twice, as a scan reads its input); save it to a file first")
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
            versions = registry.versions()
            state.forget_stale(versions)
            if options.engine == "ray":
                from detector.ray_engine import run_on_ray

                stats = RunStats()
                run_on_ray(listings, index, embedder, state, options, listing_root(listings), stats, on_progress)
            else:
                stats = _embed_rows(listings, index, embedder, state, options, on_progress)
            state.check_complete(stats.rows_in_input)
            embed_seconds = time.monotonic() - started
            judge = Judge(index, policy, words=options.read_words, authorized_override=authorized_override)
            run = _Run(listings=Path(listings), index=index, embedder=embedder, out_dir=out_dir, state=state,
                       stats=stats, started=started, embed_seconds=embed_seconds, resumed=resumed, versions=versions)
            return _finalise(run, judge, policy, options)
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


def _embed_rows(listings, index, embedder, state: ScanState, options: ScanOptions, on_progress) -> RunStats:
    """Phase 1, in this process: every row not yet committed → evidence in the state database."""
    next_row = state.get("next_row", 0)
    total = None if listings.is_dir() else count_rows(listings)
    stats = RunStats()
    maker = EvidenceMaker(index, embedder, listing_root(listings), options=options.stage_options(),
                          workers=options.workers, cache=options.cache, clock=options.clock)
    if on_progress:
        on_progress(next_row, total)
    rows = pending_rows(listings, lambda row: row >= next_row, stats)
    for counted in maker.batches(rows, options.batch_size):
        state.commit_batch(counted.records, counted.records[-1].row + 1)
        counted.add_to(stats)
        if on_progress:
            on_progress(counted.records[-1].row + 1, total)
    stats.cache_damaged = options.cache.damaged if options.cache is not None else None
    return stats


def listing_root(listings: Path) -> Path:
    """The folder image paths are relative to: the table's folder, or the scanned folder itself."""
    return listings.resolve() if listings.is_dir() else listings.resolve().parent


# --- phase 2: decisions and outputs ----------------------------------------------------------------


@dataclass
class _Run:
    """What phase 2 works from: the scan's inputs, its committed state, and phase 1's counts."""

    listings: Path
    index: ReferenceIndex
    embedder: Embedder
    out_dir: Path
    state: ScanState
    stats: RunStats
    started: float
    embed_seconds: float
    resumed: bool
    versions: dict[str, str]


@dataclass
class _Tally:
    """Counts and lists gathered from the decisions as they are written."""

    verdicts: dict[str, int] = field(default_factory=lambda: {FLAGGED: 0, CLEAR: 0, ERROR: 0})
    by_brand: dict[str, dict[str, int]] = field(default_factory=dict)
    listings: int = 0
    rows: int = 0
    images: int = 0
    screened_out: int = 0
    top: list[tuple] = field(default_factory=list)  # a heap of the REPORT_LIMIT riskiest flags
    repeat_offenders: set[str] = field(default_factory=set)
    comebacks: list[dict] = field(default_factory=list)
    cleared_by_review: int = 0

    def add(self, decision: Decision, rows: list[Evidence]) -> None:
        readable = [evidence for evidence in rows if not evidence.error]
        paths = {evidence.image: evidence.path for evidence in readable}
        self.listings += 1
        self.rows += len(rows)
        self.images += len(paths)
        self.screened_out += sum(evidence.screened_out for evidence in readable)
        self.verdicts[decision.verdict] += 1
        if decision.visual_match:
            counts = self.by_brand.setdefault(decision.brand, {FLAGGED: 0, CLEAR: 0})
            counts[decision.verdict] += 1
        self._add_history(decision)
        if decision.verdict == FLAGGED:
            record = {**decision.as_record(), "image_path": paths.get(decision.image),
                      "reference_path": decision.reference_path}
            item = (decision.score, decision.listing_id, self.listings, record)
            if len(self.top) < REPORT_LIMIT:
                heapq.heappush(self.top, item)
            else:
                heapq.heappushpop(self.top, item)

    def _add_history(self, decision: Decision) -> None:
        if decision.verdict == FLAGGED and any(f.code == "repeat_offender" for f in decision.findings):
            self.repeat_offenders.add(decision.seller_id)
        self.cleared_by_review += any(f.code == "cleared_by_review" for f in decision.findings)
        if decision.comeback and len(self.comebacks) < REPORT_LIMIT:
            self.comebacks.append({"listing_id": decision.listing_id, "seller_id": decision.seller_id,
                                   "verdict": decision.verdict, "brand": decision.brand, "links": decision.comeback})


def _facts(listing_id: str, evidence: Evidence, prior: PriorEvidence) -> Listing:
    """What the policy knows of one listing row: the table's facts and the earlier nights' record."""
    cleared = prior.cleared_for(evidence.row, evidence.seller_id)
    return Listing(listing_id=listing_id, seller_id=evidence.seller_id, title=evidence.title or "",
                   price=evidence.price, currency=evidence.currency, image=evidence.image,
                   notes=[(code, text) for code, text in evidence.notes],
                   prior_flags=prior.prior_flags(evidence.seller_id),
                   comebacks=[link.as_record() for link in prior.comebacks(evidence.row, evidence.seller_id)],
                   confirmed=prior.confirmed_offences(evidence.seller_id),
                   cleared=cleared.as_record() if cleared else None)


def _decisions(run: _Run, judge: Judge, prior: PriorEvidence) -> Iterator[tuple[Decision, list[Evidence]]]:
    """Each listing's decision (its photos' decisions combined), in input order, with its rows."""
    for listing_id, rows in run.state.listings(run.versions):
        yield combine([judge.decide(evidence, _facts(listing_id, evidence, prior)) for evidence in rows]), rows


def _prior(run: _Run, history: ScanHistory | None, night: str, policy: Policy) -> PriorEvidence:
    """What earlier nights say about this night's sellers and photos (nothing without a history)."""
    if history is None:
        return PriorEvidence(night)
    photos = ((row, digest, unpack_vector(vector) if vector else None) for row, digest, vector in run.state.photos())
    return history.prior_evidence(night, photos, policy.history.link_similarity)


def _finalise(run: _Run, judge: Judge, policy: Policy, options: ScanOptions) -> ScanSummary:
    """Phase 2: decide every listing from the committed state and write all outputs (and, with
    a history, read earlier nights first and record this one last)."""
    history = ScanHistory(options.history) if options.history is not None else None
    night = parse_night(options.night)
    tally = _Tally()
    writer = DecisionWriter(run.out_dir)
    try:
        prior = _prior(run, history, night, policy)
        scan_id = history.begin_night(night, run.out_dir) if history is not None else None
        for decision, rows in _decisions(run, judge, prior):
            writer.write(decision)
            if history is not None:
                history.add_listing(scan_id, decision.as_record(),
                                    [(e.digest, packed_bytes(e.vector) if e.vector else None)
                                     for e in rows if not e.error])
            tally.add(decision, rows)
        writer.commit()
        if history is not None:
            history.commit_night(scan_id, tally.verdicts)
    except BaseException:
        writer.abort()
        if history is not None:
            history.abort_night()
            history.close()
        raise
    history_summary = None
    if history is not None:
        history_summary = _history_summary(history, options.history, night, tally)
        history.close()
    summary = _summary(run, tally, history_summary)
    report = write_report(run.out_dir, summary, [item[3] for item in tally.top])
    summary["elapsed_seconds"] = round(time.monotonic() - run.started, 3)
    write_json(run.out_dir / "summary.json", summary)
    return ScanSummary.of(run.out_dir, summary, report)


def _history_summary(history: ScanHistory, path: Path, night: str, tally: _Tally) -> dict:
    return {
        "file": str(Path(path).resolve()),
        "night": night,
        "repeat_offenders": len(tally.repeat_offenders),
        "comeback_sellers": len({c["seller_id"] for c in tally.comebacks}),
        "cleared_by_review": tally.cleared_by_review,
        "comebacks": tally.comebacks,
        "trend": history.trend(),
    }


def _summary(run: _Run, tally: _Tally, history_summary: dict | None) -> dict:
    """summary.json's content."""
    verdicts, stats = tally.verdicts, run.stats
    judged = verdicts[FLAGGED] + verdicts[CLEAR]
    low, high = wilson_interval(verdicts[FLAGGED], judged)
    per_10000, ci95 = 1e4 * verdicts[FLAGGED] / judged if judged else 0.0, [round(1e4 * low, 2), round(1e4 * high, 2)]
    finished = utc_now()
    run.state.put("finished", finished)
    return {
        "listings_source": str(run.listings.resolve()),
        "index_path": str(run.index.path.resolve()),
        "out_dir": str(run.out_dir.resolve()),
        "started": run.state.get("started"),
        "finished": finished,
        "resumed": run.resumed,
        "listings": tally.listings,
        "rows": tally.rows,
        "images": tally.images,
        "screened_out": tally.screened_out,
        "verdicts": verdicts,
        "by_brand": dict(sorted(tally.by_brand.items())),
        "flagged_per_10000": per_10000,
        "flagged_per_10000_ci95": ci95,
        "flagged_per_10k": per_10000,  # the old names, kept as aliases for now (README)
        "flagged_per_10k_ci95": ci95,
        "flagged_rate_denominator": "listings with a verdict other than error",
        "this_run": {
            "rows_processed": stats.rows,
            "embedded": stats.embedded,
            "cache_hits": stats.cache_hits,
            "row_errors": stats.errors,
            "embed_seconds": round(run.embed_seconds, 3),
            "cache_damaged": stats.cache_damaged,
        },
        "images_per_second": round(stats.rows / run.embed_seconds, 2) if run.embed_seconds > 0 else None,
        "elapsed_seconds": round(time.monotonic() - run.started, 3),
        "embedder": run.embedder.fingerprint,
        "embedder_id": run.embedder.fingerprint_id,
        "index": run.index.manifest,
        "history": history_summary,
        "stages": run.versions,
    }
