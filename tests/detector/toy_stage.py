"""A toy kind of evidence, as a user would add one: the photo's mean brightness, measured only
where the photo is close to some protected product. tests/detector/test_stages.py registers it."""

from __future__ import annotations

import numpy as np

from detector.stages import Context, Photo, Stage

NEAR = 0.8


class Brightness(Stage):
    name = "brightness"
    version = "mean-grey-v1"
    needs = ("pixels", "hits")
    adds = records = reports = ("brightness",)

    def gate(self, photo: Photo, ctx: Context) -> bool:
        hits = photo.fields["hits"]
        return bool(hits) and hits[0].similarity >= NEAR

    def run(self, photo: Photo, ctx: Context) -> dict:
        grey = np.asarray(photo.input("pixels", ctx).convert("L"), np.float32)
        return {"brightness": round(float(grey.mean()), 2)}
