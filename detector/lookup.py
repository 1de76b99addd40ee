"""Answer "is this one of ours?" for one photo: embed it, search every brand, and judge it when
listing facts (price, seller, title) are given, with the same policy as the batch scanner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from detector.embedders import Embedder
from detector.images import decode_image, read_image_bytes, resolve_image_path
from detector.matches import ReferenceFeatures, authorized_sellers, candidates, search_views, to_verify, verify_hits
from detector.policy import Candidate, Decision, Listing, Policy, decide
from detector.verify import extract_query
from detector.views import listing_views
from index.store import ReferenceIndex


@dataclass
class LookupResult:
    """The nearest references, the visual decision, and whether listing facts were judged."""

    photo: str
    matches: list[Candidate]
    decision: Decision
    judged: bool

    def as_json(self) -> dict:
        """``{"verdict", "score", "reasons", "matches": [...]}``; verdict is null without listing facts."""
        return {
            "photo": self.photo,
            "verdict": self.decision.verdict if self.judged else None,
            "score": self.decision.score if self.judged else None,
            "reasons": self.decision.reasons,
            "best": {
                "brand": self.decision.brand,
                "product_id": self.decision.product_id,
                "similarity": self.decision.similarity,
                "threshold": self.decision.threshold,
                "inliers": self.decision.inliers,
                "alignment": self.decision.alignment,
                "visual_match": self.decision.visual_match,
                "price_ratio": self.decision.price_ratio,
                "seller_authorized": self.decision.seller_authorized,
            },
            "matches": [
                {
                    "brand": m.brand,
                    "product_id": m.product_id,
                    "image": m.reference_image,
                    "similarity": round(m.similarity, 4),
                    "inliers": m.inliers,
                    "alignment": m.alignment,
                    "price": m.price,
                    "currency": m.currency,
                }
                for m in self.matches
            ],
        }


def lookup_photo(
    photo: Path,
    index: ReferenceIndex,
    embedder: Embedder,
    policy: Policy,
    *,
    top_k: int = 5,
    listing: Listing | None = None,
) -> LookupResult:
    """Embed ``photo`` and return its top-``k`` references and a decision.

    The photo path comes from the person at the terminal, so it is trusted (no folder boundary).
    Without ``listing`` facts the decision only says whether the photo matches a protected product.
    """
    path = resolve_image_path(str(photo), Path.cwd(), allow_outside=True)
    image = decode_image(read_image_bytes(path), draft=embedder.decode_size)
    hits = search_views(index, [embedder.embed(listing_views(image))], top_k)[0]
    outcomes = verify_hits(extract_query(image), to_verify(index, hits), ReferenceFeatures(index))
    found = candidates(index, hits, outcomes)
    judged = listing is not None
    facts = listing or Listing(listing_id=str(photo))
    facts.image = str(photo)
    decision = decide(facts, found, authorized_sellers(index), policy)
    if not judged:
        decision.reasons = decision.reasons[:1]  # the visual finding alone; there is nothing else to judge
    return LookupResult(photo=str(photo), matches=found, decision=decision, judged=judged)
