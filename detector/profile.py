"""Where the time goes: wall-clock seconds per named stage of the photo → evidence pipeline,
summed over the threads that ran it. ``scripts/bench.py`` reads it to print a scan's stage
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

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
                self.calls[name] = self.calls.get(name, 0) + 1

    def per_photo_ms(self, photos: int) -> dict[str, float]:
        """Milliseconds per photo of each stage, in the order the stages first ran."""
        return {name: round(1000 * seconds / max(1, photos), 2) for name, seconds in self.seconds.items()}


def timed(clock: StageClock | None, name: str) -> contextlib.AbstractContextManager:
    """``clock.stage(name)``, or a no-op without a clock."""
    return contextlib.nullcontext() if clock is None else clock.stage(name)
