"""Overlap image reading and decoding (worker threads) with batched model inference, in order.

Callers hand over items and a ``prepare`` function that runs in a worker thread and returns a
:class:`Prepared`: either a vector already known (a cache hit) or a preprocessed array to embed.
The stream yields one :class:`Embedded` per item, in input order. A failure inside ``prepare``
becomes that item's error; it never stops the stream.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

import numpy as np

from detector.embedders import Embedder
from detector.images import ImageError
from detector.profile import StageClock, timed

T = TypeVar("T")


def one_openmp_thread() -> None:
    """A worker pool's initializer: FAISS's OpenMP loops run on the calling thread alone (the
    setting is per thread). The pool is the parallelism; on a 16-core machine, 16 workers each
    starting 16 OpenMP threads for their keypoint matching made the screen ten times slower."""
    import faiss

    faiss.omp_set_num_threads(1)


_opencv = {"users": 0, "before": None}
_opencv_lock = threading.Lock()


@contextlib.contextmanager
def opencv_one_thread() -> Iterator[None]:
    """OpenCV's own thread pool set to one thread while worker pools run its keypoints and fits,
    restored when the last user leaves (the setting is process-wide). Measured on a 16-core
    machine: 1.24x on the nightly mix (docs/performance.md#gpu-path)."""
    import cv2

    with _opencv_lock:
        if _opencv["users"] == 0:
            _opencv["before"] = cv2.getNumThreads()
            cv2.setNumThreads(1)
        _opencv["users"] += 1
    try:
        yield
    finally:
        with _opencv_lock:
            _opencv["users"] -= 1
            if _opencv["users"] == 0:
                cv2.setNumThreads(_opencv["before"])


@dataclass
class Prepared:
    """What a worker made of one item: a known vector (or [views, d] vectors), or an array for the
    model ([3, s, s] for one picture, [views, 3, s, s] for several views), plus extras."""

    vector: np.ndarray | None = None
    array: np.ndarray | None = None
    info: Any = None


@dataclass
class Embedded(Generic[T]):
    """One item's outcome: its vector (``None`` on error), whether the model ran, and the error."""

    item: T
    vector: np.ndarray | None
    computed: bool
    info: Any = None
    error: ImageError | None = None


def _guarded(prepare: Callable[[T], Prepared], item: T) -> Prepared | ImageError:
    try:
        return prepare(item)
    except ImageError as exc:
        return exc
    except MemoryError:
        return ImageError("out_of_memory", "ran out of memory decoding this image")
    except Exception as exc:  # noqa: BLE001 - one hostile file must not stop a nightly scan
        return ImageError("decode_failed", f"could not process image: {type(exc).__name__}: {exc}")


def batches_ahead(pool: ThreadPoolExecutor, items: Iterable[T], work: Callable[[T], Any],
                  batch_size: int) -> Iterator[list[tuple[T, Future]]]:
    """``work(item)`` submitted to ``pool`` for each item, yielded as batches of (item, future) in
    input order; when a batch is yielded the next one is already submitted, so it runs while the
    caller works on this one."""
    source = iter(items)
    pending: deque[tuple[T, Future]] = deque()

    def fill() -> None:
        while len(pending) < 2 * batch_size:
            try:
                item = next(source)
            except StopIteration:
                return
            pending.append((item, pool.submit(work, item)))

    fill()
    while pending:
        batch = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
        fill()
        yield batch


def embed_stream(
    embedder: Embedder,
    items: Iterable[T],
    prepare: Callable[[T], Prepared],
    *,
    batch_size: int,
    workers: int,
    clock: StageClock | None = None,
) -> Iterator[Embedded[T]]:
    """Yield an :class:`Embedded` per item, in order, decoding ahead while the model runs (the
    model's time goes to ``clock`` as the stage "embed")."""
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode",
                            initializer=one_openmp_thread) as pool:
        for batch in batches_ahead(pool, items, lambda item: _guarded(prepare, item), batch_size):
            outcomes = [(item, future.result()) for item, future in batch]
            arrays = [o.array for _, o in outcomes if isinstance(o, Prepared) and o.vector is None]
            with timed(clock, "embed"):
                vectors = iter(_split(embedder.embed_arrays(np.concatenate([_views(a) for a in arrays])), arrays)
                               if arrays else ())
            for item, outcome in outcomes:
                if isinstance(outcome, ImageError):
                    yield Embedded(item, None, False, error=outcome)
                elif outcome.vector is not None:
                    yield Embedded(item, outcome.vector, False, info=outcome.info)
                else:
                    yield Embedded(item, next(vectors), True, info=outcome.info)


def _views(array: np.ndarray) -> np.ndarray:
    return array if array.ndim == 4 else array[None]


def _split(vectors: np.ndarray, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Give each item back its own vectors: [d] for a single picture, [views, d] for several."""
    out, start = [], 0
    for array in arrays:
        if array.ndim == 4:
            out.append(vectors[start : start + len(array)])
            start += len(array)
        else:
            out.append(vectors[start])
            start += 1
    return out
