"""The registered stages, in the order they run: every kind of evidence a listing photo can give
(see :mod:`detector.stages.base` for what a stage is, and docs/stages.md for what each adds and
costs). The scanner, ``Detector.lookup`` and the Ray engine run this list.

Adding a kind of evidence is one module with a :class:`Stage` subclass and one line here (or a
call to :func:`register_stage`, which checks that its name and fields are new and that what it
needs is made before it).
"""

from __future__ import annotations

from detector.stages.base import INPUTS, Context, Options, Photo, Stage, run_cached
from detector.stages.marks import BrandWords, MarkKeypoints, MarkShapes
from detector.stages.network import Windows, WholeView
from detector.stages.read import Read
from detector.stages.screen import Screen
from detector.stages.search import MarkProducts, Search, WholeSearch
from detector.stages.siblings import ProductWords
from detector.stages.verification import Verify

__all__ = ["STAGES", "Context", "Options", "Photo", "Stage", "register_stage", "run_cached", "stage_named",
           "versions"]


def check(stages: list[Stage]) -> None:
    """Refuse an order in which a name or a field is repeated, or a stage needs what no earlier
    stage adds (a needed field may be absent for a photo whose stage was gated off)."""
    names, made = set(), set(INPUTS)
    for stage in stages:
        if stage.name in names:
            raise ValueError(f"two stages are named {stage.name!r}")
        missing = [need for need in stage.needs if need not in made]
        if missing:
            raise ValueError(f"stage {stage.name!r} needs {', '.join(missing)}, which no earlier stage adds")
        repeated = [f for f in stage.adds if f in made]
        if repeated:
            raise ValueError(f"stage {stage.name!r} adds {', '.join(repeated)}, which an earlier stage adds")
        if not set(stage.records) <= set(stage.adds) or not set(stage.reports) <= set(stage.records):
            raise ValueError(f"stage {stage.name!r}: records must be among its adds, reports among its records")
        names.add(stage.name)
        made.update(stage.adds)


STAGES: list[Stage] = [
    Read(),
    WholeView(),
    WholeSearch(),
    Screen(),
    Windows(),
    Search(),
    Verify(),
    MarkKeypoints(),
    MarkShapes(),
    BrandWords(),
    MarkProducts(),
    ProductWords(),
]
check(STAGES)


def register_stage(stage: Stage, *, after: str | None = None) -> Stage:
    """Add ``stage`` to :data:`STAGES`, after the stage named ``after`` (last by default)."""
    position = len(STAGES) if after is None else [s.name for s in STAGES].index(after) + 1
    candidate = [*STAGES[:position], stage, *STAGES[position:]]
    check(candidate)
    STAGES[:] = candidate
    return stage


def stage_named(name: str) -> Stage:
    """The registered stage called ``name``."""
    return next(s for s in STAGES if s.name == name)


def versions(stages: list[Stage] | None = None) -> dict[str, str]:
    """Each registered stage's version, by name: what a scan's rows are recorded under."""
    return {stage.name: stage.version for stage in (STAGES if stages is None else stages)}
