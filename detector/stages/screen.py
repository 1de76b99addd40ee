"""The first stage: whether a photo goes on to the keypoints, the window views and verification
(:mod:`detector.screening` holds the test). Its verdict is also what the slow mark searches ask
of a photo before they run, so a scan without the screen computes it for those photos alone."""

from __future__ import annotations

import hashlib
import json

from detector.matches import candidates_key
from detector.screening import SCREEN_ID, screen, without_keypoints
from detector.stages.base import Context, Photo, Stage, run_cached


class Screen(Stage):
    name = "screen"
    version = SCREEN_ID
    needs = ("closest", "keypoints")  # the keypoints only where the index has marks and no level passed
    adds = records = ("go_on", "why")
    stops = True

    def enabled(self, ctx: Context) -> bool:
        return ctx.options.verify and ctx.options.screen

    def cache_key(self, photo: Photo, ctx: Context) -> str | None:
        closest = photo.fields["closest"]
        if not ctx.marks or without_keypoints(ctx.index, ctx.gate_levels, closest) is not None:
            return None  # decided from the whole view alone: nothing worth caching
        levels = sorted({(h.brand, ctx.index.brands[h.brand].threshold, ctx.gate_levels[h.brand]) for h in closest})
        inputs = json.dumps([candidates_key(ctx.index, closest), levels, ctx.marks_key])
        return hashlib.sha256(inputs.encode()).hexdigest()[:16]

    def run(self, photo: Photo, ctx: Context) -> dict:
        verdict = screen(ctx.index, ctx.gate_levels, photo.fields["closest"], lambda: photo.input("keypoints", ctx),
                         ctx.marks)
        return {"go_on": verdict.go_on, "why": verdict.why}


SCREEN = Screen()


def sent_on(photo: Photo, ctx: Context) -> bool:
    """Whether the screen sends the photo on: its verdict where the screen ran, else the same test
    (cached as the screen caches it)."""
    if "go_on" in photo.fields:
        return photo.fields["go_on"]
    if "screen" not in photo.scratch:
        photo.scratch["screen"] = run_cached(SCREEN, photo, ctx)["go_on"]
    return photo.scratch["screen"]
