"""The words printed on a listing photo's product, read where keypoints leave two or more
siblings of one brand (:mod:`detector.product_words`): the policy asks whether they name one."""

from __future__ import annotations

from detector.product_words import WORDS_ID, words_of
from detector.stages.base import Context, Photo, Stage

SIBLING_KEYPOINTS = 5
"""A verified candidate counts as a sibling still in play with at least this many keypoints in its
layout (plain or unique): the fewest with which the policy's rules establish a product (the
calibrated product count's floor, and a copy's count with its outline in place)."""
SIBLING_SHARE = 0.3
"""...and with at least this share of the most keypoints unique to one of its brand's products: the
siblings the default policy leaves in doubt (``[product] colour_ratio``). The gate is the stage's
own, not the policy's, so that what a scan reads depends on the photo alone and a policy re-decides
the same evidence; a policy with a lower ratio leaves its extra siblings in doubt, unread."""


def siblings_in_play(photo: Photo, ctx: Context) -> bool:
    """Whether two or more products of one brand, whose catalogue photos carry words, have
    keypoints enough to be the product shown, and that keypoints do not tell apart: each with at
    least SIBLING_SHARE of the most keypoints unique to one of the brand's products."""
    in_play = [o for o in photo.fields.get("outcomes") or ()
               if max(o["inliers"], o.get("unique") or 0) >= SIBLING_KEYPOINTS]
    top: dict[str, int] = {}
    for outcome in in_play:
        top[outcome["brand"]] = max(top.get(outcome["brand"], 0), outcome.get("unique") or 0)
    products: dict[str, set[str]] = {}
    for outcome in in_play:
        product = ctx.index.brands[outcome["brand"]].products[outcome["row"]]
        if product.get("words") and (outcome.get("unique") or 0) >= SIBLING_SHARE * top[outcome["brand"]]:
            products.setdefault(outcome["brand"], set()).add(product["product_id"])
    return any(len(found) >= 2 for found in products.values())


class ProductWords(Stage):
    name = "product_words"
    version = WORDS_ID
    needs = ("pixels", "outcomes")
    adds = records = ("words_read",)

    def enabled(self, ctx: Context) -> bool:
        return ctx.options.verify and ctx.options.product_words

    def gate(self, photo: Photo, ctx: Context) -> bool:
        return photo.fields.get("go_on", True) and siblings_in_play(photo, ctx)

    def cache_key(self, photo: Photo, ctx: Context) -> str:
        return "photo"  # the words depend on the photo alone

    def run(self, photo: Photo, ctx: Context) -> dict:
        return {"words_read": words_of(ctx.text.lines(photo.input("pixels", ctx)))}
