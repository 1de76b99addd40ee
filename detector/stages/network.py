"""The network's stages: the whole photo's vector, and (for the photos the screen sends on) the
five window views' (see :mod:`detector.views`). Vectors are kept in the embedding cache by content
hash, the whole view alone for a photo stopped at the first stage, all six views otherwise, and
in memory for the photos of the last few batches, so a photo repeated in a dump is embedded once."""

from __future__ import annotations

import numpy as np

from detector.records import pack_vector
from detector.stages.base import Context, Photo, Stage
from detector.views import LISTING_VIEWS, VIEWS_ID, listing_views

RECENT_PHOTOS = 2_000
"""Vectors of this many recently embedded photos stay in memory, so a photo repeated across a
dump's rows is embedded once even without a cache (about 60 MB at six 1280-d views each)."""


def _known(photo: Photo, ctx: Context) -> np.ndarray | None:
    """The views the memory or the cache already holds for the photo ([1, d] or [6, d])."""
    digest = photo.fields["digest"]
    vectors = ctx.recent.get(digest)
    if vectors is None and ctx.cache is not None:
        vectors = ctx.cache.get(digest)
    return None if vectors is None else vectors.reshape(-1, vectors.shape[-1])


class WholeView(Stage):
    """The whole photo through the network: the vector every search starts from."""

    name = "whole_view"
    version = "whole-v1"
    batched = True
    needs = ("pixels",)
    adds = ("vector",)
    records = ("vector",)  # packed, and only when the scan keeps a history

    def prepare(self, photo: Photo, ctx: Context) -> None:
        known = _known(photo, ctx)
        if known is not None:
            photo.scratch["known"] = known
        else:
            photo.scratch["array"] = ctx.embedder.preprocess_views([photo.input("pixels", ctx)])

    def run_batch(self, photos: list[Photo], ctx: Context) -> list[dict]:
        fresh = [p for p in photos if "known" not in p.scratch]
        vectors = iter(ctx.embedder.embed_arrays(np.concatenate([p.scratch.pop("array") for p in fresh]))
                       if fresh else ())
        out = []
        for photo in photos:
            if "known" in photo.scratch:
                out.append({"vector": photo.scratch["known"][0]})
            else:
                photo.computed = True
                out.append({"vector": next(vectors)})
        return out

    def record(self, photo: Photo, ctx: Context) -> dict:
        return {"vector": pack_vector(photo.fields["vector"])} if ctx.options.keep_vectors else {}

    def finish(self, photos: list[Photo], ctx: Context) -> None:
        """Keep the views the network computed this batch: in the cache, and in memory."""
        fresh = {}
        for photo in photos:
            if photo.computed:
                views = [photo.fields["vector"][None]]
                if "windows" in photo.fields:
                    views.append(photo.fields["windows"])
                fresh[photo.fields["digest"]] = np.concatenate(views)
        if ctx.cache is not None:
            ctx.cache.put_many(fresh)
        if len(ctx.recent) > RECENT_PHOTOS:
            ctx.recent.clear()
        ctx.recent.update(fresh)


class Windows(Stage):
    """The centre and four corner windows through the network, for the photos the screen sends
    on (every photo without the screen): a product pasted small or cropped into is found there."""

    name = "windows"
    version = VIEWS_ID
    batched = True
    needs = ("pixels", "vector")
    adds = ("windows",)

    def gate(self, photo: Photo, ctx: Context) -> bool:
        return photo.fields.get("go_on", True)

    def prepare(self, photo: Photo, ctx: Context) -> None:
        known = photo.scratch.get("known")
        if known is not None and len(known) == LISTING_VIEWS:
            photo.scratch["windows"] = known[1:]
        else:
            photo.scratch["array"] = ctx.embedder.preprocess_views(listing_views(photo.input("pixels", ctx))[1:])

    def run_batch(self, photos: list[Photo], ctx: Context) -> list[dict]:
        fresh = [p for p in photos if "windows" not in p.scratch]
        vectors = ctx.embedder.embed_arrays(np.concatenate([p.scratch.pop("array") for p in fresh])) if fresh else None
        for i, photo in enumerate(fresh):
            photo.scratch["windows"] = vectors[i * (LISTING_VIEWS - 1):(i + 1) * (LISTING_VIEWS - 1)]
            photo.computed = True
        return [{"windows": photo.scratch.pop("windows")} for photo in photos]


def views_of(photo: Photo) -> np.ndarray:
    """The photo's vectors: the whole view, then the windows where they were embedded ([v, d])."""
    whole = photo.fields["vector"][None]
    return np.concatenate([whole, photo.fields["windows"]]) if "windows" in photo.fields else whole
