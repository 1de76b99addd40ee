"""Geometric verification of the nearest references (:mod:`detector.verify`): matching keypoints
in one layout, the outline once aligned, the keypoints unique to one candidate, and the colours
of the matched region, for the candidates :func:`detector.matches.to_verify` chooses, verified
together."""

from __future__ import annotations

from detector.matches import candidates_key, to_verify, verify_hits
from detector.stages.base import Context, Photo, Stage
from detector.verify import VERIFIER_ID


class Verify(Stage):
    name = "verify"
    version = VERIFIER_ID
    needs = ("keypoints", "hits")
    adds = records = ("outcomes",)

    def enabled(self, ctx: Context) -> bool:
        return ctx.options.verify

    def gate(self, photo: Photo, ctx: Context) -> bool:
        return photo.fields.get("go_on", True) and bool(to_verify(ctx.index, photo.fields["hits"]))

    def cache_key(self, photo: Photo, ctx: Context) -> str:
        return candidates_key(ctx.index, to_verify(ctx.index, photo.fields["hits"]))

    def run(self, photo: Photo, ctx: Context) -> dict:
        chosen = to_verify(ctx.index, photo.fields["hits"])
        outcomes = verify_hits(photo.input("keypoints", ctx), chosen, ctx.references)
        return {"outcomes": [{"brand": hit.brand, "row": hit.row, **outcome._asdict()}
                             for hit, outcome in outcomes.items() if outcome is not None]}
