"""The index-search stages: the whole view's closest references (what the screen judges), the
nearest references over all of a photo's views (what the policy judges), and the closest
products of each brand whose mark is in the photo."""

from __future__ import annotations

from detector.matches import search_views
from detector.screening import CANDIDATES
from detector.stages.base import Context, Photo, Stage
from detector.stages.network import views_of
from index.search import Hit

MARK_PRODUCTS = 3
"""A brand whose mark is in a photo adds its closest products (by similarity) to the candidates."""
SIGHTINGS = ("mark_sightings", "shape_sightings", "word_sightings")
"""The fields that hold the marks (and brand names) found in a photo."""


def _rounded(hits: list[Hit]) -> list[dict]:
    """Hits as recorded: similarity to 6 decimals."""
    return [{"brand": h.brand, "row": h.row, "similarity": round(h.similarity, 6)} for h in hits]


class WholeSearch(Stage):
    """The whole view's CANDIDATES references nearest to their brand's first-stage level (see
    :func:`detector.screening.screen_levels`): what the screen, and the gate of the slow mark
    searches, look at."""

    name = "whole_search"
    version = f"top{CANDIDATES}-by-level-v2"
    batched = True
    needs = ("vector",)
    adds = ("closest",)

    def enabled(self, ctx: Context) -> bool:
        return ctx.options.verify and bool(ctx.options.screen or ctx.shapes or ctx.reader)

    def run_batch(self, photos: list[Photo], ctx: Context) -> list[dict]:
        found = search_views(ctx.index, [p.fields["vector"] for p in photos], CANDIDATES, levels=ctx.screen_levels)
        return [{"closest": hits} for hits in found]


class Search(Stage):
    """The nearest references over every view of the photo (its similarity to a reference is the
    best over its views); a photo the screen stopped keeps its whole view's closest."""

    name = "search"
    version = "best-of-views-v1"
    batched = True
    needs = ("vector",)
    adds = records = ("hits",)

    def run_batch(self, photos: list[Photo], ctx: Context) -> list[dict]:
        top_k = ctx.options.top_k
        searched = [p for p in photos if p.fields.get("go_on", True)]
        found = dict(zip(map(id, searched), search_views(ctx.index, [views_of(p) for p in searched], top_k)))
        return [{"hits": found[id(p)] if id(p) in found else p.fields["closest"][:top_k]} for p in photos]

    def record(self, photo: Photo, ctx: Context) -> dict:
        return {"hits": _rounded(photo.fields["hits"])}


class MarkProducts(Stage):
    """The closest products of each brand whose mark (or name) is in the photo, however far: a
    mark makes the photo that brand's product only beside one of its products."""

    name = "mark_products"
    version = f"top{MARK_PRODUCTS}-v1"
    batched = True
    needs = ("vector", "hits")
    adds = records = ("mark_hits",)

    def gate(self, photo: Photo, ctx: Context) -> bool:
        return any(photo.fields.get(name) for name in SIGHTINGS)

    def run_batch(self, photos: list[Photo], ctx: Context) -> list[dict]:
        out = []
        for photo in photos:
            brands = {s.brand for name in SIGHTINGS for s in photo.fields.get(name) or ()}
            extra = search_views(ctx.index, [views_of(photo)], MARK_PRODUCTS, brands=brands)[0]
            known = {(h.brand, h.row) for h in photo.fields["hits"]}
            out.append({"mark_hits": [h for h in extra if (h.brand, h.row) not in known]})
        return out

    def record(self, photo: Photo, ctx: Context) -> dict:
        return {"mark_hits": _rounded(photo.fields["mark_hits"])}
