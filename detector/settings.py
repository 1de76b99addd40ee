"""Every run setting's choices, bounds and default, in one place: the API checks options against
these tables, the CLI builds its choices and bounds from them, and the scanner, the Ray engine
and ``index build`` ask the same functions for their defaults."""

from __future__ import annotations

import os
from enum import Enum

DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "torch", "onnx")
ENGINES = ("local", "ray")
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq", "ivfdisk")
LIMITS = {"batch_size": (1, 4096), "workers": (1, 64), "top_k": (1, 100), "ray_actors": (1, 100_000)}
"""The range each whole-number option accepts."""
TOP_K = 5
"""Nearest references kept per photo (and shown by ``lookup``) when none is asked for."""
SCAN_BATCH = {"cpu": 32, "cuda": 256}
"""A scan's (and an index build's) photos per batch when none is asked for, by where the model runs: on an H200 a scan
in batches of 256 ran 1.2x (every stage) to 2x (screened) faster than in batches of 32
(docs/performance.md#gpu-path); on the CPU 32 keeps a batch's views small."""
RAY_ACTOR_WORKERS = 2
"""Worker threads per Ray actor when none are asked for: an actor per two CPUs keeps two busy."""


def choices(values: tuple[str, ...], name: str) -> type[Enum]:
    """An Enum of ``values`` for the command line's choice options (Typer shows and checks them)."""
    return Enum(name, {value: value for value in values}, type=str)


def default_batch(device: str) -> int:
    """Photos per batch when none is asked for, for a model on ``device``."""
    return SCAN_BATCH["cuda" if device == "cuda" else "cpu"]


def default_workers(engine: str = "local") -> int:
    """Worker threads when none are asked for: one per CPU core, within ``LIMITS`` (a Ray
    actor's: ``RAY_ACTOR_WORKERS``)."""
    if engine == "ray":
        return RAY_ACTOR_WORKERS
    low, high = LIMITS["workers"]
    return max(low, min(high, os.cpu_count() or low))


SERVICE_IN_FLIGHT = 2
"""Batches ``counterfeit serve`` checks at once, a worker thread each: one batch's decoding and
keypoints run while the other is in the network (docs/service.md#load)."""


def service_workers() -> int:
    """Threads decoding and verifying one batch of ``counterfeit serve`` when none are asked for:
    the cores shared by its batches in flight: on 2 cores, two threads per batch only contended
    with the other batch's (docs/service.md#load)."""
    return max(LIMITS["workers"][0], default_workers() // SERVICE_IN_FLIGHT)


SCREEN = True
"""Whether the first stage (detector/screening.py) runs when not asked, on every device and engine:
it reads the whole view alone, so a photo it stops costs no keypoints on the CPU or the GPU, and
on every labelled folder it stopped no flag, or one (docs/performance.md#screening)."""
