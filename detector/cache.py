"""Embedding cache: vectors keyed by image content hash + embedder fingerprint, in one bounded
SQLite file, so tomorrow's scan embeds only photos it has not seen. The outputs of the other
stages that are worth keeping (the screen's verdict, the geometric verification, the marks found:
see ``Stage.cache_key``) are kept beside them, filed under the stage's name and version, so a warm
rescan neither decodes nor verifies again.

Each vector and each stage output carries a CRC32; a damaged entry is dropped and
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
from detector.views import LISTING_VIEWS

DEFAULT_MAX_BYTES = 4 << 30


def _output_crc(stage: str, digest: str, inputs: str, value: str | None) -> int:
    return zlib.crc32(f"{stage}|{digest}|{inputs}|{value}".encode())


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
            self._db.execute("DROP TABLE IF EXISTS verifications")  # stage outputs as written before stages had names
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS outputs (stage TEXT, digest TEXT, inputs TEXT, value TEXT, crc INTEGER,"
                " PRIMARY KEY (stage, digest, inputs)) WITHOUT ROWID"
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
            self._db.execute("DELETE FROM outputs WHERE digest NOT IN (SELECT digest FROM vectors)")
        self._count = count - max(0, excess)

    def get_json(self, stage: str, digest: str, inputs: str) -> tuple[bool, object]:
        """``(found, value)`` for a stage's output cached beside a photo's vector: ``stage`` is the
        stage's name and version, ``inputs`` its key for every input other than the photo."""
        with self._lock:
            row = self._read("SELECT value, crc FROM outputs WHERE stage=? AND digest=? AND inputs=?",
                             (stage, digest, inputs))
        if row is None:
            return False, None
        if row[1] != _output_crc(stage, digest, inputs, row[0]):
            self.corrupt += 1
            return False, None
        return True, None if row[0] is None else json.loads(row[0])

    def put_json(self, stage: str, values: dict[tuple[str, str], object]) -> None:
        """Store stage outputs keyed by (photo hash, inputs key); see :meth:`get_json`."""
        if not values:
            return
        rows = []
        for (digest, inputs), value in values.items():
            text = None if value is None else json.dumps(value)
            rows.append((stage, digest, inputs, text, _output_crc(stage, digest, inputs, text)))
        with self._lock:
            self._write(lambda: self._db.executemany("INSERT OR REPLACE INTO outputs VALUES (?, ?, ?, ?, ?)", rows))

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
