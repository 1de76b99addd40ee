"""The structured decision: verdicts, visual states, finding codes, and the :class:`Decision`
record that ``decisions.jsonl`` holds one of per listing.

Codes are for programs, texts for people: a decision's ``visual_state`` says what its photo shows
(one code of :data:`VISUAL_STATES`), each of its ``findings`` names one inconsistency or remark
(a code of :data:`FINDINGS`, the weight it added to the risk score, and a sentence), and
``reasons`` are the same evidence worded for a reviewer. docs/decisions.md lists every code and
what raises it; a test keeps that page and these tables equal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

FLAGGED, CLEAR, ERROR = "flagged", "clear", "error"

COPY, PRODUCT, SIMILAR, UNVERIFIED = "copy", "product", "similar", "unverified"
LOOKALIKE, VETOED, NO_MATCH = "lookalike", "vetoed", "no_match"
MARK, OTHER_MARK, MARK_MISSING = "mark", "other_mark", "mark_missing"

VISUAL_STATES = {
    COPY: "the photo is the catalogue photo, edited: keypoints establish the product, and the reference's picture"
          " is in the photo exactly (its edges on the photo's to the pixel, or its keypoints on a rigid fit to"
          " a fraction of a pixel)",
    PRODUCT: "a new photo of the product (the seller's own, not an edit of the catalogue photo): keypoints establish"
             " the product (as many as a copy needs, or the brand's calibrated product count), but the"
             " reference's picture is not in the photo exactly",
    MARK: "the photo carries one of the brand's registered marks (index build --marks), on a product like one"
          " the brand sells (similarity at least the policy's [marks] min_similarity); the mark's box is in"
          " the decision's marks",
    SIMILAR: "the similarity reaches the brand's threshold and the matching keypoints do not contradict it",
    UNVERIFIED: "the similarity reaches the brand's threshold; no geometric check could be made (too few keypoints"
                " in either photo, or the scan ran with --no-verify)",
    LOOKALIKE: "the similarity reaches the threshold and some keypoints agree, but once aligned much of the"
               " reference's outline is missing: another variant, or a shared element such as a logo",
    VETOED: "the similarity reaches the threshold, but too few keypoints match for a copy",
    OTHER_MARK: "the photo looks like a brand's product but carries another brand's registered mark: it is"
                " not that brand's product",
    MARK_MISSING: "the photo matches a product of a brand that registered marks (a copy included), but none of"
                  " the brand's marks is found in it (policy [marks] required)",
    NO_MATCH: "no protected product is close enough (or the index has none to compare with)",
    ERROR: "the photo or its row could not be judged (see error_code)",
}
MATCHING = frozenset({COPY, PRODUCT, MARK, SIMILAR, UNVERIFIED})
"""The visual states that show a protected product: with an inconsistency, the listing is flagged."""

FINDINGS = {
    # inconsistencies: their weight (policy [score] and [history]) adds to the risk score
    "price_below_ratio": "the price is below the policy's share of the matched product's catalogue price",
    "seller_not_authorised": "the seller is not on the matched brand's list of authorised sellers",
    "title_cue": "the title carries counterfeit cues (replica, AAA, 1:1, …)",
    "brand_misspelt": "the title spells the matched brand's name evasively (N1ke, adidass, g-u-c-c-i, Addidas)",
    "repeat_offender": "the seller had listings flagged, or confirmed counterfeit by review, on earlier nights"
                       " (scan --history)",
    "comeback": "a seller never seen before uses the same photo as a listing flagged earlier under another seller"
                " id (scan --history)",
    # remarks (weight 0): why a fact could not be checked, or how a listing was read
    "cleared_by_review": "a reviewer labelled this seller's same photo genuine on an earlier night, so it is not"
                         " flagged again (scan --history)",
    "price_missing": "the listing gives no price, so the price is not compared",
    "price_unreadable": "the listing's price is not a usable number, so the price is not compared",
    "currency_missing": "the listing gives a price but no currency, so the price is not compared",
    "currency_mismatch": "the listing's currency differs from the catalogue's and the policy gives no rate for it",
    "catalogue_price_missing": "the catalogue has no price for the matched product",
    "identity_uncertain": "the photo could show several products of the matched brand (siblings that the evidence"
                          " does not tell apart); they are named, and the price is compared with the cheapest",
    "identified_by_words": "of several siblings the keypoints could not tell apart, more of one's printed words"
                           " are read in the photo than of any other's: it is the product shown",
    "price_withheld": "the photo could show several products and one of them has no comparable catalogue price,"
                      " so the cheapest is unknown and the price is not compared",
    "price_out_of_range": "the price ratio overflows, so the price is not compared",
    "seller_missing": "the listing gives no seller id, so the seller is not checked",
    "sellers_not_declared": "the matched brand declares no authorised sellers, so the seller is not checked",
    "extra_values": "the listing's row has values beyond the table's header; they are ignored",
    "photos_unreadable": "some of a listing's photos could not be read (the others decided it)",
    "best_photo": "a listing with several photos is decided on its riskiest photo",
    "rows_disagree": "a listing's rows disagree on seller, price or currency; the riskiest row decides",
    "screened_out": "the first stage (the whole photo, its search and its keypoints) found nothing that could match,"
                    " so the window views and full verification were skipped",
}


@dataclass(frozen=True)
class Finding:
    """One piece of evidence: a code from :data:`FINDINGS`, the weight it adds to the risk score
    (0 for a remark), and the sentence a reviewer reads."""

    code: str
    weight: float
    text: str

    def as_record(self) -> dict:
        return {"code": self.code, "weight": round(self.weight, 4), "text": self.text}


@dataclass
class Match:
    """A reference product a listing photo resembles, as judged: its similarity, the threshold its
    brand needed, the visual state, and (where verified) the geometric evidence."""

    brand: str
    product_id: str
    similarity: float
    threshold: float
    visual_state: str
    inliers: int | None = None  # matching keypoints in one geometric layout; None where not verified
    alignment: float | None = None  # share of the reference's outline found once aligned
    unique: int | None = None  # of the keypoints, those that favour this reference over the other candidates
    colour: float | None = None  # colour agreement once aligned, 0..1; None where not measured
    region: list | None = None  # where the reference lands in the photo: four [x, y] corners as fractions
    sharpness: float | None = None  # share of the reference's edges on the photo's to the pixel, once aligned
    residual: float | None = None  # median pixels between matched keypoints and the rigid fit's places for them
    reference_image: str | None = None
    price: float | None = None
    currency: str | None = None

    RECORD = ("brand", "product_id", "similarity", "threshold", "visual_state", "inliers", "alignment", "unique",
              "colour", "region", "sharpness", "residual")

    def as_record(self) -> dict:
        """The match as decisions.jsonl stores it."""
        record = {key: getattr(self, key) for key in self.RECORD}
        record["similarity"], record["threshold"] = round(self.similarity, 4), round(self.threshold, 4)
        return record


@dataclass
class Decision:
    """The verdict on a listing, with its evidence, codes and reasons."""

    listing_id: str
    verdict: str
    score: float = 0.0
    brand: str | None = None
    product_id: str | None = None
    reference_image: str | None = None
    image: str | None = None
    similarity: float | None = None
    threshold: float | None = None
    inliers: int | None = None
    alignment: float | None = None
    visual_match: bool = False
    visual_state: str = NO_MATCH
    price_ratio: float | None = None
    seller_authorized: bool | None = None
    reasons: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None
    error_code: str | None = None
    seller_id: str | None = None
    title: str = ""
    price: float | None = None
    currency: str | None = None
    catalogue_price: float | None = None
    catalogue_currency: str | None = None
    photos: int = 1
    matches: list[Match] = field(default_factory=list)
    prior_flags: list[str] = field(default_factory=list)
    comeback: list[dict] = field(default_factory=list)
    marks: list[dict] = field(default_factory=list)  # registered marks found in the photo, with their boxes
    plausible: list[str] = field(default_factory=list)  # products a visual match could show, likeliest first
    evidence: dict[str, dict] = field(default_factory=dict)  # fields stages report, by stage name (detector.stages)
    reference_path: str | None = None  # local file of the reference photo, for the report only

    def as_record(self) -> dict:
        """The JSON-ready record written to decisions.jsonl (field order is stable)."""
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "reference_path"}
        record["findings"] = [finding.as_record() for finding in self.findings]
        record["matches"] = [match.as_record() for match in self.matches]
        return record

    @classmethod
    def from_record(cls, record: dict) -> Decision:
        """A decision read back from a decisions.jsonl record (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in record.items() if key in names}
        values["findings"] = [Finding(**f) for f in record.get("findings", [])]
        values["matches"] = [Match(**{k: m.get(k) for k in Match.RECORD}) for m in record.get("matches", [])]
        return cls(**values)
