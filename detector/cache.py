"""Embedding cache: vectors keyed by image content hash + embedder fingerprint, in one bounded
SQLite file, so tomorrow's scan embeds only photos it has not seen. Geometric-verification
outcomes (matching keypoints of a photo against a reference photo) are kept beside them, so a
warm rescan neither decodes nor verifies again.

Each vector and each verification outcome carries a CRC32; a damaged entry is dropped and
recomputed, never used. Damage SQLite itself detects mid-run ("database disk image is
malformed") turns the cache off for the rest of the run: every photo is then embedded afresh,
and :attr:`EmbeddingCache.damaged` says why, so the caller can tell the user to delete the file.
When the file holds more than ``max_entries`` vectors, the least recently used ones are evicted.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import zlib
from pathlib import Path

import numpy as np

from detector.errors import UserError, disk_full
from detector.paths import cache_dir
from detector.verify import Outcome
from detector.views import LISTING_VIEWS

DEFAULT_MAX_BYTES = 4 << 30


def _verification_crc(verifier: str, digest: str, reference: str, outcome: str | None) -> int:
    return zlib.crc32(f"{verifier}|{digest}|{reference}|{outcome}".encode())


def default_cache_path() -> Path:
    """``embeddings.sqlite`` in the tool's cache folder (see :func:`detector.paths.cache_dir`)."""
    return cache_dir() / "embeddings.sqlite"


class EmbeddingCache:
    """A thread-safe get/put store of float32 vectors ([d], or [views, d]) for one embedder
    fingerprint (and view set: the key is whatever the caller names)."""

    def __init__(self, path: Path, fingerprint_id: str, dim: int, *, max_bytes: int = DEFAULT_MAX_BYTES):
        self.path = Path(path)
        self.fingerprint_id = fingerprint_id
        self.dim = dim
        self.max_entries = max(1, max_bytes // (dim * 4 * LISTING_VIEWS + 96))
        self.corrupt = 0  # damaged entries found (and dropped) by get
        self.damaged: str | None = None
        self._lock = threading.Lock()
        self._used: set[str] = set()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS vectors (fingerprint TEXT, digest TEXT, vector BLOB, crc INTEGER,"
                " used INTEGER, PRIMARY KEY (fingerprint, digest)) WITHOUT ROWID"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS vectors_used ON vectors (used)")
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(verifications)")}
            if columns and "outcome" not in columns:  # written before outcomes were stored whole
                self._db.execute("DROP TABLE verifications")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS verifications (verifier TEXT, digest TEXT, reference TEXT,"
                " outcome TEXT, crc INTEGER, PRIMARY KEY (verifier, digest, reference)) WITHOUT ROWID"
            )
            (self._count,) = self._db.execute("SELECT COUNT(*) FROM vectors").fetchone()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise UserError(
                f"embedding cache {self.path} is unusable ({exc}); choose another --cache, delete it"
                " (it is rebuilt automatically), or pass --no-cache"
            ) from None

    def get(self, digest: str) -> np.ndarray | None:
        """The cached vector for an image hash, or ``None`` (a damaged entry counts as missing)."""
        with self._lock:
            row = self._read(
                "SELECT vector, crc FROM vectors WHERE fingerprint=? AND digest=?", (self.fingerprint_id, digest)
            )
            if row is None:
                return None
            blob, crc = row
            if not blob or len(blob) % (self.dim * 4) or zlib.crc32(blob) != crc:
                self.corrupt += 1
                self._write(lambda: self._db.execute(
                    "DELETE FROM vectors WHERE fingerprint=? AND digest=?", (self.fingerprint_id, digest)))
                return None
            self._used.add(digest)
            vectors = np.frombuffer(blob, dtype=np.float32).reshape(-1, self.dim).copy()
            return vectors[0] if len(vectors) == 1 else vectors

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        """Store vectors (one transaction), then evict the least recently used beyond the bound."""
        if not items and not self._used:
            return
        now = int(time.time())
        rows = []
        for digest, vector in items.items():
            blob = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
            rows.append((self.fingerprint_id, digest, blob, zlib.crc32(blob), now))
        with self._lock:
            used, self._used = self._used, set()

            def store() -> None:
                self._db.execute("BEGIN")
                try:
                    self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?, ?)", rows)
                    self._db.executemany(
                        "UPDATE vectors SET used=? WHERE fingerprint=? AND digest=?",
                        [(now, self.fingerprint_id, d) for d in used],
                    )
                    self._db.execute("COMMIT")
                except sqlite3.Error:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                    raise
                self._count += len(rows)  # an upper bound: replaced rows are counted twice
                if self._count > self.max_entries:
                    self._evict()

            self._write(store)

    def _evict(self) -> None:
        (count,) = self._db.execute("SELECT COUNT(*) FROM vectors").fetchone()
        excess = count - self.max_entries
        if excess > 0:
            self._db.execute(
                "DELETE FROM vectors WHERE (fingerprint, digest) IN"
                " (SELECT fingerprint, digest FROM vectors ORDER BY used LIMIT ?)",
                (excess,),
            )
            self._db.execute("DELETE FROM verifications WHERE digest NOT IN (SELECT digest FROM vectors)")
        self._count = count - max(0, excess)

    def get_outcome(self, verifier: str, digest: str, reference: str) -> tuple[bool, Outcome | None]:
        """``(found, outcome)`` for a cached verification; ``outcome`` is ``None`` for an
        unverifiable pair."""
        found, value = self.get_json(verifier, digest, reference)
        return found, None if value is None else Outcome(*value)

    def put_outcomes(self, verifier: str, outcomes: dict[tuple[str, str], Outcome | None]) -> None:
        """Store verification outcomes keyed by (photo hash, reference key)."""
        self.put_json(verifier, {key: None if outcome is None else list(outcome) for key, outcome in outcomes.items()})

    def get_json(self, verifier: str, digest: str, reference: str) -> tuple[bool, object]:
        """``(found, value)`` for a JSON value cached beside a photo's vector by ``verifier``
        (a verification outcome, the marks found in it) under a ``reference`` key."""
        with self._lock:
            row = self._read(
                "SELECT outcome, crc FROM verifications WHERE verifier=? AND digest=? AND reference=?",
                (verifier, digest, reference),
            )
        if row is None:
            return False, None
        if row[1] != _verification_crc(verifier, digest, reference, row[0]):
            self.corrupt += 1
            return False, None
        return True, None if row[0] is None else json.loads(row[0])

    def put_json(self, verifier: str, values: dict[tuple[str, str], object]) -> None:
        """Store JSON values keyed by (photo hash, reference key); see :meth:`get_json`."""
        if not values:
            return
        rows = []
        for (digest, reference), value in values.items():
            text = None if value is None else json.dumps(value)
            rows.append((verifier, digest, reference, text, _verification_crc(verifier, digest, reference, text)))
        with self._lock:
            self._write(lambda: self._db.executemany("INSERT OR REPLACE INTO verifications VALUES (?, ?, ?, ?, ?)", rows))

    def _read(self, sql: str, args: tuple):
        """One row, or ``None`` when absent or when the file turns out damaged."""
        if self.damaged:
            return None
        try:
            return self._db.execute(sql, args).fetchone()
        except sqlite3.DatabaseError as exc:
            self._give_up(exc)
            return None

    def _write(self, action) -> None:
        """Run a write; a full disk is the user's to fix, a damaged file turns the cache off."""
        if self.damaged:
            return
        try:
            action()
        except sqlite3.DatabaseError as exc:
            if disk_full(exc):
                raise UserError(f"cannot write the embedding cache {self.path}: {exc}") from None
            self._give_up(exc)

    def _give_up(self, exc: sqlite3.DatabaseError) -> None:
        self.damaged = str(exc)
        self.corrupt += 1

    def close(self) -> None:
        with self._lock:
            self._db.close()
