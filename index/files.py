"""Durable file helpers that both packages share: atomic writes, file hashes and UTC timestamps.

Every file the tool writes for a reader (an index's data and manifest, a scan's outputs, an
exported model) is written under a temporary name beside its target and moved into place when
complete, so a reader sees the old file or the whole new one, never a part, even after a kill.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
from pathlib import Path
from typing import Iterator


def utc_now() -> str:
    """The current time in UTC, to the second, as ISO 8601 (``2026-11-30T06:01:33+00:00``)."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in chunks so that a file larger than memory can be hashed."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def temporary_beside(path: Path) -> Path:
    """The scratch name a file is written under before :func:`publish` moves it to ``path``
    (hidden, and unique to this process)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def publish(written: Path, path: Path, durable: bool = True) -> None:
    """Move a completely written file into place: flushed to disk, renamed atomically, and the
    rename itself made durable. ``durable=False`` only renames: for many files that are made
    durable together by :func:`settle` before anything names them."""
    if durable:
        with open(written, "rb+") as fh:
            os.fsync(fh.fileno())
    os.replace(written, path)
    if durable:
        _sync_folder(path.parent)


def settle(paths: list[Path], folder: Path) -> None:
    """Flush files published with ``durable=False`` to disk, then their folder (their names) once:
    an index build's thousands of data files cost one folder sync, not one each."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if paths:
        _sync_folder(folder)


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` (text is UTF-8) to ``path`` atomically."""
    with replacing(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A scratch path to write ``path``'s new content to (by any means, e.g. a library that
    takes a file name); published when the block ends, removed if it fails."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        yield tmp
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class AtomicText:
    """A text file written as a stream and published only by :meth:`commit` (for outputs too
    large to build in memory); :meth:`abort` leaves the previous file untouched."""

    def __init__(self, path: Path, newline: str | None = None):
        self.path = Path(path)
        self.tmp = temporary_beside(self.path)
        self.handle = open(self.tmp, "w", encoding="utf-8", newline=newline)

    def commit(self) -> None:
        self.handle.close()
        publish(self.tmp, self.path)

    def abort(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)
