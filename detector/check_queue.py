"""Checks at posting, batched, logged and switched to a new index without a pause: the engine
behind ``counterfeit serve``.

Requests put their uploads on a bounded queue and wait. A worker thread takes what is waiting
(whole requests, up to ``batch_size`` photos), checks it as one batch on the warm detector
(:meth:`detector.api.Detector.check`: the scan's stages, batching and decisions) and hands the
decided checks to the log writer, which appends whatever batches are waiting to the history's
check log in one transaction committed to disk
(:meth:`detector.history.ScanHistory.record_checks`), and only then hands each request its
answers. Two workers (``detector.settings.SERVICE_IN_FLIGHT``) keep two batches in flight, so
one batch's per-photo stages (decoding, keypoints, verification) run while the other is in the
network, as a scan reads its next batch ahead. A request that finds the queue full is refused at
once (:class:`Busy`) rather than queued, and one that waited past its deadline is dropped
unchecked.

A watcher thread looks at the index's manifest every ``poll_s`` seconds. When it changed (``index
build`` committed), the watcher opens the new index beside the current one, reading every file it
will need, and the next batch taken uses it: a batch started on the old index finishes on it, and
no request fails for the switch (the old detector holds no cache and no open file, so it is left
to the garbage collector once its last batch is done). A new index that cannot be opened leaves
the current one serving (the reason is kept in ``swap_error``).
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from detector.api import Checked, Detector, Upload
from detector.records import packed_bytes
from detector.settings import SERVICE_IN_FLIGHT
from index.files import utc_now

POLL_S = 1.0
"""How often the watcher looks for a new index on disk."""


class Busy(Exception):
    """The queue is full: try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"the service is busy; retry after {retry_after} s")
        self.retry_after = retry_after


class Expired(Exception):
    """The request waited past its deadline before a batch could take it."""


@dataclass
class _Request:
    uploads: list[Upload]
    deadline: float
    future: Future = field(default_factory=Future)


def manifest_stamp(index_dir: Path) -> tuple | None:
    """What changes when ``index build`` commits: the manifest file's identity and time."""
    try:
        st = (Path(index_dir) / "manifest.json").stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def answer(checked: Checked) -> dict:
    """A check's JSON answer: ``counterfeit lookup --json``'s fields with the listing id, or the
    refusal ``{"listing_id", "error": {"code", "message"}}``."""
    if checked.result is None:
        return {"listing_id": checked.listing_id, "error": {"code": checked.error_code, "message": checked.error}}
    body = checked.result.as_json()
    del body["photo"]
    return {"listing_id": checked.listing_id, **body, "digest": checked.digest}


class CheckQueue:
    """The bounded queue, its worker and the index watcher (see the module docstring). Use as a
    context manager, or call :meth:`start` and :meth:`stop`."""

    def __init__(self, open_detector: Callable[[], Detector], index_dir: Path, history: Path, *, batch_size: int,
                 max_waiting: int, screen: bool, top_k: int, poll_s: float = POLL_S):
        self.open_detector, self.index_dir, self.history_path = open_detector, Path(index_dir), Path(history)
        self.batch_size, self.max_waiting, self.screen, self.top_k, self.poll_s = batch_size, max_waiting, screen, top_k, poll_s
        self.detector = open_detector()
        self.detector.index.read_all()
        self.stamp = manifest_stamp(self.index_dir)
        self.swap_error: str | None = None
        self.swaps = 0
        self._next: Detector | None = None
        self._waiting: collections.deque[_Request] = collections.deque()
        self._photos_waiting = 0
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._workers: list[threading.Thread] = []
        self._to_log: queue.SimpleQueue = queue.SimpleQueue()

    # --- life ------------------------------------------------------------------------------

    def start(self) -> CheckQueue:
        from detector.history import ScanHistory

        ScanHistory(self.history_path).close()  # a log that cannot be kept is the caller's error, before serving
        self._workers = [threading.Thread(target=self._work, name=f"check-worker-{i}", daemon=True)
                         for i in range(SERVICE_IN_FLIGHT)]
        self._threads = [threading.Thread(target=self._watch, name="index-watcher", daemon=True),
                         threading.Thread(target=self._write, name="check-log", daemon=True)]
        for thread in [*self._workers, *self._threads]:
            thread.start()
        return self

    def stop(self) -> None:
        """Finish the batches in flight (their answers are logged), refuse what still waits."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        for thread in self._workers:
            thread.join(timeout=60)
        self._to_log.put(None)
        for thread in self._threads:
            thread.join(timeout=60)
        with self._lock:
            for request in self._waiting:
                request.future.cancel()
            self._waiting.clear()
        self.detector.close()

    def __enter__(self) -> CheckQueue:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- requests --------------------------------------------------------------------------

    def submit(self, uploads: list[Upload], timeout_s: float) -> Future:
        """Queue a request's uploads; a Future of their answers (dicts, in order, see
        :func:`answer`). :class:`Busy` when ``max_waiting`` photos are already waiting."""
        request = _Request(uploads, time.monotonic() + timeout_s)
        with self._lock:
            if self._photos_waiting and self._photos_waiting + len(uploads) > self.max_waiting:
                raise Busy(retry_after=1)
            self._waiting.append(request)
            self._photos_waiting += len(uploads)
            self._lock.notify()
        return request.future

    @property
    def waiting(self) -> int:
        """Photos queued and not yet taken by a batch."""
        return self._photos_waiting

    def _take(self) -> tuple[list[_Request], Detector]:
        """The requests of the next batch (the first waiting, then others while they fit) and
        the detector it runs on: a new index once the watcher has opened one."""
        with self._lock:
            while not self._waiting and not self._stop.is_set():
                self._lock.wait(timeout=0.5)
            taken, photos = [], 0
            while self._waiting and (not taken or photos + len(self._waiting[0].uploads) <= self.batch_size):
                request = self._waiting.popleft()
                self._photos_waiting -= len(request.uploads)
                photos += len(request.uploads)
                taken.append(request)
            if taken and self._next is not None:
                self.detector, self._next = self._next, None
                self.swaps += 1
            return taken, self.detector

    # --- the workers ----------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            requests, detector = self._take()
            now = time.monotonic()
            live = []
            for request in requests:
                if request.deadline < now:
                    request.future.set_exception(Expired("the request waited past its time limit"))
                elif request.future.set_running_or_notify_cancel():
                    live.append(request)
            if live:
                self._check(detector, live)

    def _check(self, detector: Detector, requests: list[_Request]) -> None:
        try:
            uploads = [upload for request in requests for upload in request.uploads]
            checked = detector.check(uploads, top_k=self.top_k, screen=self.screen, keep_vectors=True)
            answers = [answer(c) for c in checked]
            at = utc_now()
            records = [(a, {"at": at, "answer": a, "photo": (c.digest, packed_bytes(c.vector) if c.vector else None),
                            "decision": {**c.result.decision.as_record(), "listing_id": c.listing_id}})
                       for c, a in zip(checked, answers) if c.result is not None]
        except BaseException as exc:  # noqa: BLE001 - a failed batch fails its requests, not the service
            for request in requests:
                request.future.set_exception(exc)
            return
        self._to_log.put((requests, answers, records))

    # --- the log writer --------------------------------------------------------------------

    def _write(self) -> None:
        """Append what the workers decided to the log, everything waiting in one transaction
        (one sync to disk for several batches: a group commit), then answer those requests. One
        connection, on this thread: two workers' connections contending for SQLite's write lock
        slept in its busy handler (about 10% of the service's photos/s)."""
        from detector.history import ScanHistory

        log = ScanHistory(self.history_path, durable=True)
        try:
            while True:
                item = self._to_log.get()
                if item is None:
                    return
                batches = [item]
                while not self._to_log.empty():
                    more = self._to_log.get_nowait()
                    if more is None:
                        self._to_log.put(None)
                        break
                    batches.append(more)
                try:
                    ids = log.record_checks([record for _, _, records in batches for _, record in records])
                except BaseException as exc:  # noqa: BLE001 - nothing is answered that is not logged
                    for requests, _, _ in batches:
                        for request in requests:
                            request.future.set_exception(exc)
                    continue
                decided = [a for _, _, records in batches for a, _ in records]
                for a, check_id in zip(decided, ids):
                    a["check_id"] = check_id
                for requests, answers, _ in batches:
                    start = 0
                    for request in requests:
                        request.future.set_result(answers[start: start + len(request.uploads)])
                        start += len(request.uploads)
        finally:
            log.close()

    # --- the watcher -----------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            stamp = manifest_stamp(self.index_dir)
            if stamp is None or stamp == self.stamp or self._next is not None:
                continue
            try:
                opened = self.open_detector()
                opened.index.read_all()
            except Exception as exc:  # noqa: BLE001 - a bad new index leaves the current one serving
                self.stamp, self.swap_error = stamp, f"{type(exc).__name__}: {exc}"  # tried again at the next change
                continue
            self.stamp, self.swap_error, self._next = stamp, None, opened
