"""The first stage: whether a photo goes on to the window views and the full verification
(:mod:`detector.screening` holds the test). Its verdict is also what the slow mark searches ask
of a photo before they run, so a scan without the screen computes it for those photos alone."""

from __future__ import annotations

import hashlib
import json

from detector.matches import candidates_key
from detector.screening import SCREEN_ID, near_threshold, screen
from detector.stages.base import Context, Photo, Stage, run_cached


class Screen(Stage):
    name = "screen"
    version = SCREEN_ID
    needs = ("closest", "keypoints")
    adds = records = ("go_on", "why")

    def enabled(self, ctx: Context) -> bool:
        return ctx.options.verify and ctx.options.screen

    def cache_key(self, photo: Photo, ctx: Context) -> str | None:
        closest = photo.fields["closest"]
        if near_threshold(ctx.index, closest):
            return None  # decided without keypoints: nothing worth caching
        thresholds = sorted({(h.brand, ctx.index.brands[h.brand].threshold) for h in closest})
        inputs = json.dumps([candidates_key(ctx.index, closest), thresholds, ctx.marks_key])
        return hashlib.sha256(inputs.encode()).hexdigest()[:16]

    def run(self, photo: Photo, ctx: Context) -> dict:
        closest = photo.fields["closest"]
        if near_threshold(ctx.index, closest):
            return {"go_on": True, "why": "near"}
        verdict = screen(ctx.index, closest, photo.input("keypoints", ctx), ctx.references, ctx.marks)
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
