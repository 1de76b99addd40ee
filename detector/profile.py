"""Where the time goes: wall-clock seconds per named stage of the photo → evidence pipeline (the
stages of :mod:`detector.stages`, the inputs they make: ``decode``, ``keypoints``), summed over
the threads that ran it. A stage timed inside another (the keypoints a verification asks for)
counts for itself alone, not for both. ``scripts/bench.py`` reads it to print a scan's stage
profile; a scan without a clock pays nothing for it."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator


class StageClock:
    """Accumulates seconds and calls per stage name; safe to use from several threads."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()
        self._open = threading.local()  # per thread: the seconds spent in stages timed inside the open ones

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        inner = getattr(self._open, "inner", None)
        if inner is None:
            inner = self._open.inner = []
        inner.append(0.0)
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            own = elapsed - inner.pop()
            if inner:
                inner[-1] += elapsed
            with self._lock:
                self.seconds[name] = self.seconds.get(name, 0.0) + own
                self.calls[name] = self.calls.get(name, 0) + 1

    def per_photo_ms(self, photos: int) -> dict[str, float]:
        """Milliseconds per photo of each stage, in the order the stages first ran."""
        return {name: round(1000 * seconds / max(1, photos), 2) for name, seconds in self.seconds.items()}


def timed(clock: StageClock | None, name: str) -> contextlib.AbstractContextManager:
    """``clock.stage(name)``, or a no-op without a clock."""
    return contextlib.nullcontext() if clock is None else clock.stage(name)
