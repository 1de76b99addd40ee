"""Scan history: one SQLite file that every scan run with ``--history FILE`` appends its night to.

It keeps, per night: each listing's decision (seller, verdict, brand, product, score) and each
listing photo's content hash and whole-image embedding (float16). A later scan reads the earlier
nights from it, before deciding, for two signals (:class:`PriorEvidence`):

- **repeat offenders**: sellers with listings flagged on earlier nights;
- **comebacks**: sellers never seen before whose photo is the same photo (same content hash, or
  cosine similarity at or above the policy's ``link_similarity``) as a photo of a listing
  flagged on an earlier night under another seller id.

It also carries reviewers' verdicts back into the next night. Before reading, it copies the
latest labels of every earlier night's ``OUT_DIR/review/labels.sqlite`` (`counterfeit review`)
into its ``reviews`` table, so they outlive the scan folders. A listing labelled genuine is no
flag any more (not for repeat offenders, not for comebacks), and its photo, listed again by the
same seller, is **cleared by review**; a listing labelled counterfeit is a **confirmed offence**
of its seller.

It also keeps **checks at posting** (``counterfeit serve``): each answered check is appended,
committed before the answer is sent, to a ``checks`` table (the answer whole) and, as a listing of
that day's ``POSTING`` record, to the tables above. A check counts from the night of its day on:
a listing flagged when it was posted is a prior flag of its seller, and its photo a photo a
comeback can be linked to, in that very night's scan. Only earlier days make a seller "seen
before" (a seller's first listing, checked at posting, must not hide its comeback that night).

Recording a night replaces an earlier record of the same night and OUT_DIR, so a rerun or a
resumed scan does not count twice. The night's rows are written in one transaction, committed
only after the scan's outputs are; scans sharing a history file record one at a time (a
second waits up to ``LOCK_WAIT_S``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from detector.errors import UserError
from detector.records import unit_vector
from detector.labels import read_latest
from index.files import utc_now
from index.search import build_faiss_index

SCHEMA = """
CREATE TABLE IF NOT EXISTS scans (scan_id INTEGER PRIMARY KEY, night TEXT NOT NULL, out_dir TEXT NOT NULL,
    recorded TEXT, listings INTEGER, flagged INTEGER, errors INTEGER, UNIQUE (night, out_dir));
CREATE TABLE IF NOT EXISTS listings (scan_id INTEGER NOT NULL, listing_id TEXT NOT NULL, seller_id TEXT,
    verdict TEXT, brand TEXT, product_id TEXT, visual_match INTEGER, score REAL, comeback_of TEXT,
    PRIMARY KEY (scan_id, listing_id));
CREATE TABLE IF NOT EXISTS photos (scan_id INTEGER NOT NULL, listing_id TEXT NOT NULL, seller_id TEXT,
    digest TEXT, vector BLOB);
CREATE TABLE IF NOT EXISTS reviews (scan_id INTEGER NOT NULL, listing_id TEXT NOT NULL, label TEXT NOT NULL,
    reviewer TEXT, at TEXT, PRIMARY KEY (scan_id, listing_id));
CREATE TABLE IF NOT EXISTS checks (check_id INTEGER PRIMARY KEY, at TEXT NOT NULL, listing_id TEXT NOT NULL,
    seller_id TEXT, verdict TEXT, digest TEXT, answer TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS listings_seller ON listings (seller_id);
CREATE INDEX IF NOT EXISTS photos_digest ON photos (digest);
CREATE INDEX IF NOT EXISTS photos_seller ON photos (seller_id);
"""
SEARCH_CHUNK = 4096
POSTING = "(checks at posting)"
"""The ``out_dir`` of a day's checks at posting in ``scans`` (no scan folder has this name)."""
BEFORE = f"(s.night < ? OR s.out_dir = '{POSTING}' AND s.night <= ?)"
"""Earlier than a night: earlier nights, and checks at posting up to and including its day (two parameters)."""
NOT_CLEARED = ("NOT EXISTS (SELECT 1 FROM reviews r WHERE r.scan_id = l.scan_id AND r.listing_id = l.listing_id"
               " AND r.label = 'genuine')")
"""A listing's flag still stands: no reviewer has labelled it genuine since."""


def parse_night(text: str | None) -> str:
    """A night as ISO ``YYYY-MM-DD``; today (UTC) when not given."""
    if text is None:
        return utc_now()[:10]
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise UserError(f"--night {text!r} is not a date like 2026-11-23") from None


@dataclass(frozen=True)
class PhotoLink:
    """Tonight's photo is the same photo as one of an earlier flagged listing."""

    seller_id: str
    night: str
    listing_id: str
    similarity: float
    same_file: bool

    def as_record(self) -> dict:
        return {"seller_id": self.seller_id, "night": self.night, "listing_id": self.listing_id,
                "similarity": round(self.similarity, 4), "same_file": self.same_file}


@dataclass(frozen=True)
class ClearedPhoto:
    """Tonight's photo is the same photo as one of an earlier listing a reviewer labelled genuine."""

    seller_id: str
    night: str
    listing_id: str
    reviewed: str  # the label's date, YYYY-MM-DD (UTC)
    reviewer: str

    def as_record(self) -> dict:
        return {"seller_id": self.seller_id, "night": self.night, "listing_id": self.listing_id,
                "reviewed": self.reviewed, "reviewer": self.reviewer}


@dataclass
class PriorEvidence:
    """What earlier nights say about tonight's sellers and photos (read before deciding)."""

    night: str
    flagged_nights: dict[str, list[str]] = field(default_factory=dict)  # seller → nights with a flag
    known_sellers: set[str] = field(default_factory=set)
    links: dict[int, list[PhotoLink]] = field(default_factory=dict)  # state row → matching flagged photos
    confirmed: dict[str, list[dict]] = field(default_factory=dict)  # seller → listings confirmed counterfeit
    cleared: dict[int, list[ClearedPhoto]] = field(default_factory=dict)  # state row → photos cleared by review

    def prior_flags(self, seller_id: str | None) -> list[str]:
        return self.flagged_nights.get(seller_id, []) if seller_id is not None else []

    def confirmed_offences(self, seller_id: str | None) -> list[dict]:
        """The seller's listings that reviewers confirmed counterfeit on earlier nights."""
        return self.confirmed.get(seller_id, []) if seller_id is not None else []

    def cleared_for(self, row: int, seller_id: str | None) -> ClearedPhoto | None:
        """The review that cleared this photo of this seller on an earlier night, if any."""
        return next((c for c in self.cleared.get(row, []) if c.seller_id == seller_id), None)

    def comebacks(self, row: int, seller_id: str | None) -> list[PhotoLink]:
        """Links of a seller never seen before to photos of other sellers flagged earlier."""
        if seller_id is None or seller_id in self.known_sellers:
            return []
        return [link for link in self.links.get(row, []) if link.seller_id != seller_id]


LOCK_WAIT_S = 600
"""How long a scan waits for another scan recording its night into the same history."""


class _Connection:
    """The history's SQLite connection; its errors become one line that names the file, so they
    are never mistaken for the scan's own progress database."""

    def __init__(self, path: Path):
        self.path = path
        self.conn = self._guard(sqlite3.connect, path, isolation_level=None, timeout=LOCK_WAIT_S)
        self.execute("PRAGMA journal_mode=WAL")
        self._guard(self.conn.executescript, SCHEMA)

    def _guard(self, call, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except sqlite3.Error as exc:
            hint = ("another scan is recording into it; rerun when that one has finished (this scan resumes)"
                    if "locked" in str(exc) else "choose another --history file, or move this one aside")
            raise UserError(f"scan history {self.path}: {exc}; {hint}") from None

    def execute(self, sql: str, params=()):
        return self._guard(self.conn.execute, sql, params)

    def executemany(self, sql: str, rows):
        return self._guard(self.conn.executemany, sql, rows)

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def close(self) -> None:
        self.conn.close()


class _PhotoSet:
    """Earlier nights' photos, rows of ``(seller, night, listing_id, digest, vector, …)``, searchable
    for tonight's photos by content hash and by whole-image embedding."""

    def __init__(self, items: list[tuple]):
        self.items = items
        self.by_digest: dict[str, list[tuple]] = {}
        for item in items:
            self.by_digest.setdefault(item[3], []).append(item)
        self.with_vectors = [item for item in items if item[4] is not None]
        self.index = (build_faiss_index(np.stack([unit_vector(item[4]) for item in self.with_vectors]), "flat")
                      if self.with_vectors else None)

    def __bool__(self) -> bool:
        return bool(self.items)

    def same_photos(self, chunk: list[tuple], link_similarity: float) -> dict[int, list[tuple[tuple, float, bool]]]:
        """For each (row, digest, vector) of ``chunk``: the earlier photos that are the same photo,
        as (item, similarity, same file), at most one per earlier listing."""
        found: dict[int, list[tuple[tuple, float, bool]]] = {}
        for row, digest, _ in chunk:
            for item in self.by_digest.get(digest, []):
                found.setdefault(row, []).append((item, 1.0, True))
        queried = [(row, vector) for row, _, vector in chunk if vector is not None]
        if self.index is None or not queried:
            return found
        similarities, ids = self.index.search(np.stack([v for _, v in queried]), min(8, self.index.ntotal))
        for (row, _), sims, hits in zip(queried, similarities, ids):
            seen = {item[2] for item, _, _ in found.get(row, [])}
            for sim, i in zip(sims, hits):
                if i < 0 or sim < link_similarity or self.with_vectors[i][2] in seen:
                    continue
                found.setdefault(row, []).append((self.with_vectors[i], float(sim), False))
                seen.add(self.with_vectors[i][2])
        return found


class ScanHistory:
    """The history file: open (created when missing), read earlier nights, record a night."""

    def __init__(self, path: Path, *, durable: bool = False):
        self.path = Path(path)
        self.db = _Connection(self.path)
        if durable:  # every commit on disk before it returns (the service answers only after it)
            self.db.execute("PRAGMA synchronous=FULL")

    def close(self) -> None:
        self.db.close()

    # --- before deciding ---------------------------------------------------------------------

    def sync_reviews(self, night: str) -> int:
        """Copy the latest review labels of every night before ``night`` from its OUT_DIR into the
        history (a folder moved away keeps what was copied before); the number of labels read."""
        scans = self.db.execute("SELECT scan_id, out_dir FROM scans WHERE night < ? AND recorded IS NOT NULL"
                                " AND out_dir != ?", (night, POSTING)).fetchall()
        found = 0
        for scan_id, out_dir in scans:
            try:
                latest = read_latest(Path(out_dir))
            except UserError:
                continue  # unreadable labels: keep what the history already holds
            if not latest:
                continue
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT OR REPLACE INTO reviews VALUES (?,?,?,?,?)",
                                [(scan_id, x.listing_id, x.label, x.reviewer, x.at) for x in latest.values()])
            self.db.execute("COMMIT")
            found += len(latest)
        return found

    def prior_evidence(self, night: str, photos: Iterable[tuple[int, str | None, np.ndarray | None]],
                       link_similarity: float) -> PriorEvidence:
        """Earlier nights' flags, sellers and reviews, and for each of tonight's ``photos`` (state
        row, content hash, whole-image vector) the flagged photos it is the same photo as, and
        the photos reviewers cleared that it is."""
        self.sync_reviews(night)
        prior = PriorEvidence(night)
        for seller, nights in self.db.execute(
            "SELECT l.seller_id, group_concat(DISTINCT s.night) FROM listings l JOIN scans s USING (scan_id)"
            f" WHERE {BEFORE} AND l.verdict = 'flagged' AND l.seller_id IS NOT NULL AND {NOT_CLEARED}"
            " GROUP BY l.seller_id", (night, night)
        ):
            prior.flagged_nights[seller] = sorted(nights.split(","))
        prior.known_sellers = {seller for (seller,) in self.db.execute(
            "SELECT DISTINCT l.seller_id FROM listings l JOIN scans s USING (scan_id) WHERE s.night < ?", (night,))}
        for seller, when, listing_id, at in self.db.execute(
            "SELECT l.seller_id, s.night, l.listing_id, r.at FROM reviews r JOIN listings l USING (scan_id, listing_id)"
            " JOIN scans s USING (scan_id) WHERE s.night < ? AND r.label = 'counterfeit' AND l.seller_id IS NOT NULL"
            " ORDER BY s.night, l.listing_id", (night,)
        ):
            prior.confirmed.setdefault(seller, []).append({"night": when, "listing_id": listing_id, "reviewed": at[:10]})
        flagged = _PhotoSet(self.db.execute(
            "SELECT p.seller_id, s.night, p.listing_id, p.digest, p.vector FROM photos p"
            " JOIN listings l ON l.scan_id = p.scan_id AND l.listing_id = p.listing_id"
            f" JOIN scans s ON s.scan_id = p.scan_id WHERE {BEFORE} AND l.verdict = 'flagged' AND {NOT_CLEARED}",
            (night, night)).fetchall())
        cleared = _PhotoSet(self.db.execute(
            "SELECT p.seller_id, s.night, p.listing_id, p.digest, p.vector, r.at, r.reviewer FROM reviews r"
            " JOIN photos p ON p.scan_id = r.scan_id AND p.listing_id = r.listing_id"
            " JOIN scans s ON s.scan_id = r.scan_id WHERE s.night < ? AND r.label = 'genuine'", (night,)).fetchall())
        if not flagged and not cleared:
            return prior
        photos = iter(photos)
        while chunk := list(itertools.islice(photos, SEARCH_CHUNK)):
            for row, found in flagged.same_photos(chunk, link_similarity).items():
                prior.links[row] = [PhotoLink(seller, when, listing_id, similarity, same)
                                    for (seller, when, listing_id, *_), similarity, same in found]
            for row, found in cleared.same_photos(chunk, link_similarity).items():
                prior.cleared[row] = [ClearedPhoto(seller, when, listing_id, (at or "")[:10], reviewer or "")
                                      for (seller, when, listing_id, _, _, at, reviewer), _, _ in found]
        return prior

    # --- after deciding ----------------------------------------------------------------------

    def begin_night(self, night: str, out_dir: Path) -> int:
        """Open the transaction that records ``night`` (replacing an earlier record of it); the scan id."""
        self.db.execute("BEGIN IMMEDIATE")
        key = str(Path(out_dir).resolve())
        for (scan_id,) in self.db.execute("SELECT scan_id FROM scans WHERE night = ? AND out_dir = ?", (night, key)).fetchall():
            for table in ("photos", "listings", "reviews", "scans"):
                self.db.execute(f"DELETE FROM {table} WHERE scan_id = ?", (scan_id,))
        return self.db.execute("INSERT INTO scans (night, out_dir) VALUES (?, ?)", (night, key)).lastrowid

    def add_listing(self, scan_id: int, decision: dict, photos: list[tuple[str | None, bytes | None]]) -> None:
        """Record one decided listing and its photos: (content hash, whole-image vector as float16 bytes)."""
        comeback = decision.get("comeback") or []
        self.db.execute(
            "INSERT OR REPLACE INTO listings VALUES (?,?,?,?,?,?,?,?,?)",
            (scan_id, decision["listing_id"], decision.get("seller_id"), decision["verdict"], decision.get("brand"),
             decision.get("product_id"), int(bool(decision.get("visual_match"))), decision.get("score"),
             comeback[0]["seller_id"] if comeback else None),
        )
        self.db.executemany(
            "INSERT INTO photos VALUES (?,?,?,?,?)",
            [(scan_id, decision["listing_id"], decision.get("seller_id"), digest, raw) for digest, raw in photos],
        )

    def commit_night(self, scan_id: int, verdicts: dict[str, int]) -> None:
        self.db.execute(
            "UPDATE scans SET recorded = ?, listings = ?, flagged = ?, errors = ? WHERE scan_id = ?",
            (utc_now(), sum(verdicts.values()),
             verdicts.get("flagged", 0), verdicts.get("error", 0), scan_id),
        )
        self.db.execute("COMMIT")

    def abort_night(self) -> None:
        with contextlib.suppress(UserError):  # the scan is failing already; its own error is the one to show
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")

    # --- checks at posting -------------------------------------------------------------------

    def record_checks(self, checks: list[dict]) -> list[int]:
        """Append answered checks in one transaction, committed on return: each a dict with
        ``at`` (UTC ISO time), ``answer`` (the JSON answer), ``decision`` (its record, with
        ``listing_id``, ``seller_id``, ``verdict``, …) and ``photo`` ((content hash, packed vector
        bytes) or None). A check without a listing id is logged as ``check-<check_id>``. Returns
        the check ids."""
        ids = []
        self.db.execute("BEGIN IMMEDIATE")
        try:
            days: dict[str, int] = {}
            for check in checks:
                decision, day = dict(check["decision"]), check["at"][:10]
                if day not in days:
                    days[day] = self._posting_day(day)
                check_id = self.db.execute(
                    "INSERT INTO checks (at, listing_id, seller_id, verdict, digest, answer) VALUES (?,?,?,?,?,?)",
                    (check["at"], decision["listing_id"] or "", decision.get("seller_id"), decision["verdict"],
                     check["photo"][0] if check["photo"] else None,
                     json.dumps(check["answer"], ensure_ascii=False, sort_keys=True))).lastrowid
                if not decision["listing_id"]:
                    decision["listing_id"] = f"check-{check_id}"
                    self.db.execute("UPDATE checks SET listing_id = ? WHERE check_id = ?", (decision["listing_id"], check_id))
                self.db.execute("DELETE FROM photos WHERE scan_id = ? AND listing_id = ?", (days[day], decision["listing_id"]))
                self.add_listing(days[day], decision, [check["photo"]] if check["photo"] else [])
                ids.append(check_id)
            self.db.execute("COMMIT")
        except BaseException:
            self.abort_night()
            raise
        return ids

    def _posting_day(self, day: str) -> int:
        found = self.db.execute("SELECT scan_id FROM scans WHERE night = ? AND out_dir = ?", (day, POSTING)).fetchone()
        if found:
            return found[0]
        return self.db.execute("INSERT INTO scans (night, out_dir, recorded) VALUES (?, ?, ?)",
                               (day, POSTING, utc_now())).lastrowid

    def checks(self) -> list[dict]:
        """Every logged check at posting, oldest first: check_id, at, listing_id, seller_id,
        verdict, digest and the answer sent."""
        return [{"check_id": check_id, "at": at, "listing_id": listing_id, "seller_id": seller_id, "verdict": verdict,
                 "digest": digest, "answer": json.loads(answer)}
                for check_id, at, listing_id, seller_id, verdict, digest, answer in self.db.execute(
                    "SELECT check_id, at, listing_id, seller_id, verdict, digest, answer FROM checks ORDER BY check_id")]

    # --- reading it back ---------------------------------------------------------------------

    def trend(self, brand: str | None = None) -> list[dict]:
        """Per night: decided listings, flagged ones and flags per 10,000 (for one brand: listings
        whose photo matched it)."""
        if brand is None:
            rows = self.db.execute(
                "SELECT night, SUM(listings - errors), SUM(flagged) FROM scans WHERE recorded IS NOT NULL AND out_dir != ?"
                " GROUP BY night ORDER BY night", (POSTING,)).fetchall()
        else:
            rows = self.db.execute(
                "SELECT s.night, COUNT(*), SUM(l.verdict = 'flagged') FROM listings l JOIN scans s USING (scan_id)"
                " WHERE l.brand = ? AND l.visual_match = 1 AND s.out_dir != ? GROUP BY s.night ORDER BY s.night",
                (brand, POSTING)).fetchall()
        return [{"night": night, "listings": n, "flagged": f or 0, "flagged_per_10000": round(1e4 * (f or 0) / n, 2) if n else 0.0}
                for night, n, f in rows]

    def seller(self, seller_id: str, link_similarity: float) -> dict:
        """A seller's record: each night's listings and flags, and the sellers it shares photos with."""
        nights = [{"night": night, "listings": n, "flagged": f, "brands": sorted(set((brands or "").split(",")) - {""})}
                  for night, n, f, brands in self.db.execute(
                      "SELECT s.night, COUNT(*), SUM(l.verdict = 'flagged'),"
                      " group_concat(CASE WHEN l.verdict = 'flagged' THEN l.brand END) FROM listings l"
                      " JOIN scans s USING (scan_id) WHERE l.seller_id = ? GROUP BY s.night ORDER BY s.night", (seller_id,))]
        comebacks = [{"night": night, "listing_id": listing_id, "comeback_of": of} for night, listing_id, of in self.db.execute(
            "SELECT s.night, l.listing_id, l.comeback_of FROM listings l JOIN scans s USING (scan_id)"
            " WHERE l.seller_id = ? AND l.comeback_of IS NOT NULL ORDER BY s.night", (seller_id,))]
        return {"seller_id": seller_id, "nights": nights, "comeback_of": comebacks,
                "linked_sellers": self.linked_sellers(seller_id, link_similarity)}

    def linked_sellers(self, seller_id: str, link_similarity: float) -> list[dict]:
        """Other sellers with a photo that is the same photo as one of this seller's (same hash,
        or cosine ≥ ``link_similarity``), with one evidence pair each, most shared photos first."""
        own = self.db.execute(
            "SELECT p.listing_id, s.night, p.digest, p.vector FROM photos p JOIN scans s USING (scan_id)"
            " WHERE p.seller_id = ?", (seller_id,)).fetchall()
        if not own:
            return []
        pairs: dict[str, list[dict]] = {}

        def add(other, evidence):
            if other != seller_id:
                pairs.setdefault(other, []).append(evidence)

        digests = sorted({d for _, _, d, _ in own if d})
        if digests:
            for other, listing_id, night, digest in self.db.execute(
                f"SELECT p.seller_id, p.listing_id, s.night, p.digest FROM photos p JOIN scans s USING (scan_id)"
                f" WHERE p.digest IN ({','.join('?' * len(digests))})", digests):
                mine = next(o for o in own if o[2] == digest)
                add(other, {"listing_id": mine[0], "night": mine[1], "other_listing_id": listing_id,
                            "other_night": night, "similarity": 1.0, "same_file": True})
        queries = [(o[0], o[1], unit_vector(o[3])) for o in own if o[3] is not None]
        if queries:
            query = np.stack([q[2] for q in queries])
            cursor = self.db.execute(
                "SELECT p.seller_id, p.listing_id, s.night, p.vector FROM photos p JOIN scans s USING (scan_id)"
                " WHERE p.seller_id IS NOT ? AND p.vector IS NOT NULL", (seller_id,))
            while chunk := cursor.fetchmany(SEARCH_CHUNK):
                sims = np.stack([unit_vector(blob) for *_, blob in chunk]) @ query.T
                best = sims.argmax(axis=1)
                for (other, listing_id, night, _), b, row in zip(chunk, best, sims):
                    if row[b] >= link_similarity:
                        add(other, {"listing_id": queries[b][0], "night": queries[b][1], "other_listing_id": listing_id,
                                    "other_night": night, "similarity": round(float(row[b]), 4), "same_file": False})
        linked = []
        for other, evidence in pairs.items():
            unique = {(e["listing_id"], e["other_listing_id"]): e for e in evidence}
            linked.append({"seller_id": other, "shared_photos": len(unique),
                           "evidence": max(unique.values(), key=lambda e: e["similarity"])})
        return sorted(linked, key=lambda item: (-item["shared_photos"], item["seller_id"]))

