"""The registered marks found in a photo: by their SIFT keypoints (:mod:`detector.marks`), then,
where none is found and the photo could still change verdict, simple marks by their shape
(:mod:`detector.mark_shapes`) and brand names read in it (:mod:`detector.brand_words`)."""

from __future__ import annotations

from detector.brand_words import READER_ID
from detector.mark_shapes import SHAPE_RULE
from detector.marks import MIN_INLIERS, find_marks
from detector.records import Sighting
from detector.stages.base import Context, Photo, Stage
from detector.stages.screen import sent_on
from detector.verify import FEATURES_ID

SHAPE_GATE = 0.5
"""The slow searches (marks by shape, brand words) run only on a photo that looks like some
protected product at least this much, and that the screen sends on: elsewhere no mark can make
it one, and on a photo nothing else ties to a product, the shape correlation's sightings are
mostly false (docs/performance.md, "On a nightly mix with marks")."""


def worth_reading(photo: Photo, ctx: Context) -> bool:
    """Whether the slow searches run on a photo where no mark's keypoints were found."""
    hits = photo.fields["hits"]
    return bool(hits) and hits[0].similarity >= SHAPE_GATE and sent_on(photo, ctx)


class _MarkSearch(Stage):
    """A search for registered marks: one field of sightings, cached under the index's marks,
    run where the screen sent the photo on and no earlier mark search found one."""

    def found_before(self, photo: Photo) -> bool:
        """Whether a mark search registered before this one found a mark in the photo."""
        return any(photo.fields.get(name) for name in ("mark_sightings", "shape_sightings")
                   if name not in self.adds)

    def gate(self, photo: Photo, ctx: Context) -> bool:
        return photo.fields.get("go_on", True) and not self.found_before(photo)

    def cache_key(self, photo: Photo, ctx: Context) -> str:
        return ctx.marks_key

    def load(self, cached: dict) -> dict:
        (name,) = self.adds
        return {name: [Sighting.from_record(s) for s in cached[name]]}


class MarkKeypoints(_MarkSearch):
    name = "marks"
    version = f"{FEATURES_ID}|marks-min{MIN_INLIERS}-v3"
    needs = ("keypoints",)
    adds = records = ("mark_sightings",)

    def enabled(self, ctx: Context) -> bool:
        return ctx.options.verify and bool(ctx.marks)

    def run(self, photo: Photo, ctx: Context) -> dict:
        return {"mark_sightings": find_marks(photo.input("keypoints", ctx).plain, ctx.marks)}


class MarkShapes(_MarkSearch):
    name = "mark_shapes"
    version = f"{SHAPE_RULE}|v1"
    needs = ("shape_pixels", "hits", "mark_sightings")
    adds = records = ("shape_sightings",)

    def enabled(self, ctx: Context) -> bool:
        return ctx.options.verify and bool(ctx.shapes)

    def gate(self, photo: Photo, ctx: Context) -> bool:
        return super().gate(photo, ctx) and worth_reading(photo, ctx)

    def run(self, photo: Photo, ctx: Context) -> dict:
        return {"shape_sightings": ctx.shapes.find(photo.input("shape_pixels", ctx))}


class BrandWords(_MarkSearch):
    name = "brand_words"
    version = READER_ID
    needs = ("pixels", "hits", "mark_sightings")
    adds = records = ("word_sightings",)

    def enabled(self, ctx: Context) -> bool:
        return ctx.options.verify and ctx.reader is not None

    def gate(self, photo: Photo, ctx: Context) -> bool:
        return super().gate(photo, ctx) and worth_reading(photo, ctx)

    def run(self, photo: Photo, ctx: Context) -> dict:
        return {"word_sightings": ctx.reader.find(photo.input("pixels", ctx))}
