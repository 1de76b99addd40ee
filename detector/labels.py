"""Reviewers' labels on a scan's listings: ``OUT_DIR/review/labels.sqlite`` (`counterfeit review`).

Every label is a new row, committed (WAL, ``synchronous=FULL``) before the caller hears back, so
an answered label survives a killed server and a power cut; two reviewers writing at once are
serialised by SQLite and lose nothing. Rows are never updated or deleted: the history of changes
is kept and the latest label of a listing is the one that counts. ``export`` writes the latest
labels as a CSV that `counterfeit prevalence --labels` reads like a filled ``sample.csv``.
"""

from __future__ import annotations

import csv
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from detector.errors import UserError
from detector.outputs import csv_safe
from detector.sampling import REVIEW_DIR, decisions_path, read_sample
from index.files import AtomicText, utc_now

LABELS_FILE = "labels.sqlite"
LABELS = ("counterfeit", "genuine", "unsure")
EXPORT_COLUMNS = ("review_id", "listing_id", "label", "reviewer", "labelled_at", "changes")
SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (seq INTEGER PRIMARY KEY AUTOINCREMENT, listing_id TEXT NOT NULL,
    label TEXT NOT NULL CHECK (label IN ('counterfeit', 'genuine', 'unsure')), reviewer TEXT NOT NULL,
    at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS labels_listing ON labels (listing_id, seq);
"""
WAIT_S = 30
LATEST = ("SELECT listing_id, label, reviewer, at, seq FROM labels WHERE seq IN"
          " (SELECT MAX(seq) FROM labels GROUP BY listing_id) ORDER BY seq")


@dataclass(frozen=True)
class Label:
    """One label as given: which listing, what, by whom, when (UTC, ISO 8601), and its sequence number."""

    listing_id: str
    label: str
    reviewer: str
    at: str
    seq: int

    def as_record(self) -> dict:
        return asdict(self)


def labels_path(out_dir: Path) -> Path:
    return Path(out_dir) / REVIEW_DIR / LABELS_FILE


class LabelStore:
    """The labels of one scan's OUT_DIR (created on first use)."""

    def __init__(self, out_dir: Path):
        self.path = labels_path(out_dir)
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = self._open()
                return
            except sqlite3.OperationalError as exc:
                # Two stores creating the file at once: switching it to WAL can fail at once with
                # "database is locked" (SQLite skips the busy wait where waiting could deadlock).
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise UserError(f"review labels {self.path}: {exc}") from None
                time.sleep(0.05)
            except (sqlite3.Error, OSError) as exc:
                raise UserError(f"review labels {self.path}: {exc}") from None

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=WAIT_S, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def add(self, listing_id: str, label: str, reviewer: str) -> Label:
        """Record a label; it is on disk when this returns."""
        if label not in LABELS:
            raise ValueError(f"label must be one of {', '.join(LABELS)}")
        at = utc_now()
        cursor = self.db.execute("INSERT INTO labels (listing_id, label, reviewer, at) VALUES (?, ?, ?, ?)",
                                 (listing_id, label, reviewer, at))
        return Label(listing_id, label, reviewer, at, cursor.lastrowid)

    def latest(self) -> dict[str, Label]:
        """The label that counts for each labelled listing: its latest."""
        return {row[0]: Label(*row) for row in self.db.execute(LATEST)}

    def changes(self) -> dict[str, int]:
        """How many labels each listing has been given (1: never changed)."""
        return dict(self.db.execute("SELECT listing_id, COUNT(*) FROM labels GROUP BY listing_id"))

    def history(self, listing_id: str) -> list[Label]:
        """Every label a listing was given, oldest first."""
        return [Label(*row) for row in self.db.execute(
            "SELECT listing_id, label, reviewer, at, seq FROM labels WHERE listing_id = ? ORDER BY seq", (listing_id,))]

    def close(self) -> None:
        self.db.close()


def read_latest(out_dir: Path) -> dict[str, Label]:
    """The latest labels of a scan's OUT_DIR, read-only; empty when nobody has reviewed it."""
    path = labels_path(out_dir)
    if not path.is_file():
        return {}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=WAIT_S)
        try:
            return {row[0]: Label(*row) for row in db.execute(LATEST)}
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise UserError(f"review labels {path} are unreadable ({exc})") from None


def export(out_dir: Path, target: Path) -> int:
    """Write one row per labelled listing (its latest label) to ``target``; returns the row count.
    ``review_id`` is filled for listings in the review sample, which is what `counterfeit
    prevalence` weighs; labels outside the sample are kept for the record."""
    decisions_path(out_dir)  # a folder without a finished scan is refused with the scan's own message
    latest = read_latest(out_dir)
    if not latest:
        raise UserError(f"nothing labelled yet in {out_dir}; label listings with `counterfeit review serve {out_dir}`")
    store = LabelStore(out_dir)
    try:
        changes = store.changes()
    finally:
        store.close()
    in_sample = read_sample(out_dir)
    out = AtomicText(Path(target), newline="")
    writer = csv.writer(out.handle)
    writer.writerow(EXPORT_COLUMNS)
    for listing_id, label in latest.items():
        writer.writerow([csv_safe(v) for v in (in_sample.get(listing_id, ("", ""))[0], listing_id, label.label, label.reviewer,
                                                label.at, changes.get(listing_id, 1))])
    out.commit()
    return len(latest)
