"""Risk policy: a listing is flagged when its photo shows a protected product *and* something
about it is inconsistent (price far below catalogue, unauthorised seller, counterfeit cues in
the title, the seller's record). Every decision carries a score, codes and reasons.

Deciding one photo is four steps, each a function here: :func:`rank` judges every candidate
reference visually and orders them; :func:`find` lists the findings against the best one;
:func:`score` turns visual confidence and findings into the risk score; :func:`word` writes the
reasons. :func:`decide` runs them; :func:`combine` makes one decision of a listing's photos.

Every default lives in ``default_policy.toml`` beside this file; a user's TOML file overrides any key.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from detector.decisions import (
    CLEAR, COPY, ERROR, FLAGGED, LOOKALIKE, MARK, MARK_MISSING, MATCHING, NO_MATCH, OTHER_MARK, PRODUCT, SIMILAR,
    UNVERIFIED, VETOED, Decision, Finding, Match,
)
from detector.errors import UserError
from detector.records import Candidate, Sighting
from detector.product_words import single_out
from detector.spelling import LEET, misspelt_brand, normalise


@dataclass(frozen=True)
class Weights:
    """How strongly each inconsistency counts towards the risk score (each in 0..1)."""

    price: float
    seller: float
    title: float


@dataclass(frozen=True)
class Verification:
    """How geometric evidence (matching keypoints, and the share of the reference's outline found
    once aligned) confirms or vetoes a visual match."""

    confirm_inliers: int
    veto_below: int
    strong_similarity: float
    min_alignment: float
    aligned_inliers: int
    full_alignment: float
    trust_inliers: int
    copy_sharpness: float
    copy_residual: float


@dataclass(frozen=True)
class ProductRules:
    """When local features recognise a new photo of a product (the ``product`` visual state):
    ``inliers`` is the number every brand needs, or ``None`` for each brand's calibrated one.
    Among the first candidate's siblings with at least ``colour_ratio`` of its unique keypoints,
    the one with the best unique share plus ``colour_weight`` times its colour agreement comes
    first (0: colour is not used). With ``words``, the words printed on the product, read in the
    photo, can single out one of the siblings the evidence leaves (see :func:`plausible`)."""

    enabled: bool
    inliers: int | None
    colour_weight: float = 0.0
    colour_ratio: float = 1.0
    words: bool = True


@dataclass(frozen=True)
class MarkRules:
    """How registered brand marks (``index build --marks``) count: a brand's mark in the photo makes
    it that brand's product when the photo also looks like one of the brand's products
    (``min_similarity``); with ``required``, any match (a copy included) to the product of a
    brand whose catalogue photos show its marks needs one of them in the photo;
    ``misspelt_weight`` is what an evasive spelling of the brand in the title adds; with ``words``,
    the brand's name read in the photo counts as its mark."""

    enabled: bool
    min_similarity: float
    required: bool
    misspelt_weight: float
    words: bool = True


@dataclass(frozen=True)
class HistoryRules:
    """How earlier nights (``scan --history``) count: weights of a seller's earlier flags and of a
    comeback, and the cosine at which two listing photos are the same photo."""

    prior_flag_weight: float
    comeback_weight: float
    link_similarity: float
    confirmed_weight: float


@dataclass(frozen=True)
class Policy:
    """Every knob of the decision; ``default_policy.toml`` says what each means."""

    threshold: float | None
    threshold_offset: float
    min_similarity: float
    min_price_ratio: float
    rates: dict[str, float]
    check_seller: bool
    cues: tuple[str, ...]
    weights: Weights
    verification: Verification
    product: ProductRules
    marks: MarkRules
    history: HistoryRules
    brands: dict[str, dict] = field(default_factory=dict)

    def brand_threshold(self, brand: str, calibrated: float) -> float:
        """The similarity a photo needs to count as a match for ``brand``."""
        override = self.brands.get(brand, {}).get("threshold")
        value = override if override is not None else (self.threshold if self.threshold is not None else calibrated)
        return max(self.min_similarity, float(value) + self.threshold_offset)

    def product_inliers(self, calibrated: int | None) -> int | None:
        """The matching keypoints a new photo needs to show a product of a brand whose calibrated
        need is ``calibrated``; ``None`` when the product path is off (or the index predates it)."""
        if not self.product.enabled:
            return None
        return self.product.inliers if self.product.inliers is not None else calibrated

    def brand_price_ratio(self, brand: str) -> float:
        return float(self.brands.get(brand, {}).get("min_price_ratio", self.min_price_ratio))


def _number(section: dict, key: str, where: str, low: float = 0.0, high: float = math.inf) -> float:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise UserError(f"policy: {where}.{key} must be a number between {low:g} and {high:g}, not {value!r}")
    return float(value)


def load_policy(path: Path | None = None) -> Policy:
    """Load the default policy, overridden by the TOML file at ``path`` when given."""
    text = resources.files("detector").joinpath("default_policy.toml").read_text(encoding="utf-8")
    base = tomllib.loads(text)
    if path is not None:
        try:
            user = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise UserError(f"cannot read policy file {path}: {exc.strerror or exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"policy file {path} is not valid TOML: {exc}") from None
        unknown = set(user) - set(base) - {"brands"}
        if unknown:
            raise UserError(f"policy file {path}: unknown section(s) {', '.join(sorted(unknown))}")
        for section, values in user.items():
            if not isinstance(values, dict):
                raise UserError(f"policy file {path}: [{section}] must be a table")
            base.setdefault(section, {}).update(values)
    return _policy_from(base)


def _policy_from(config: dict) -> Policy:
    match, price, seller, title, score, verify, product, marks, history = (
        config[k] for k in ("match", "price", "seller", "title", "score", "verify", "product", "marks", "history")
    )
    threshold = None if match["threshold"] == "calibrated" else _number(match, "threshold", "match", 0.0, 1.0)
    rates = price.get("rates", {})
    if not isinstance(rates, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in rates.values()
    ):
        raise UserError("policy: price.rates must map currency codes to positive numbers")
    cues = title["cues"]
    extra = title["extra_cues"]
    if not all(isinstance(c, str) and c.strip() for c in [*cues, *extra]):
        raise UserError("policy: title.cues and title.extra_cues must be lists of non-empty strings")
    brands = config.get("brands", {})
    for brand, values in brands.items():
        if not isinstance(values, dict):
            raise UserError(f"policy: [brands.{brand!r}] must be a table")
        for key in values:
            if key not in {"threshold", "min_price_ratio"}:
                raise UserError(f"policy: [brands.{brand!r}] knows threshold and min_price_ratio, not {key!r}")
            _number(values, key, f"brands.{brand}", 0.0, 1.0 if key == "threshold" else 10.0)
    return Policy(
        threshold=threshold,
        threshold_offset=_number(match, "threshold_offset", "match", -1.0, 1.0),
        min_similarity=_number(match, "min_similarity", "match", 0.0, 1.0),
        min_price_ratio=_number(price, "min_price_ratio", "price", 0.0, 10.0),
        rates={str(k).upper(): float(v) for k, v in rates.items()},
        check_seller=bool(seller["check"]),
        cues=tuple(dict.fromkeys(normalise(c) for c in [*cues, *extra])),
        weights=Weights(
            price=_number(score, "price_weight", "score", 0.0, 1.0),
            seller=_number(score, "seller_weight", "score", 0.0, 1.0),
            title=_number(score, "title_weight", "score", 0.0, 1.0),
        ),
        verification=Verification(
            confirm_inliers=int(_number(verify, "confirm_inliers", "verify", 1, 10_000)),
            veto_below=int(_number(verify, "veto_below", "verify", 0, 10_000)),
            strong_similarity=_number(verify, "strong_similarity", "verify", 0.0, 1.01),
            min_alignment=_number(verify, "min_alignment", "verify", 0.0, 1.0),
            aligned_inliers=int(_number(verify, "aligned_inliers", "verify", 1, 10_000)),
            full_alignment=_number(verify, "full_alignment", "verify", 0.0, 1.01),
            trust_inliers=int(_number(verify, "trust_inliers", "verify", 1, 10_000)),
            copy_sharpness=_number(verify, "copy_sharpness", "verify", 0.0, 1.01),
            copy_residual=_number(verify, "copy_residual", "verify", 0.0, 100.0),
        ),
        product=ProductRules(
            enabled=bool(product["enabled"]),
            inliers=None if product["inliers"] == "calibrated" else int(_number(product, "inliers", "product", 1, 10_000)),
            colour_weight=_number(product, "colour_weight", "product", 0.0, 1000.0),
            colour_ratio=_number(product, "colour_ratio", "product", 0.0, 1.0),
            words=bool(product["words"]),
        ),
        marks=MarkRules(
            enabled=bool(marks["enabled"]),
            min_similarity=_number(marks, "min_similarity", "marks", 0.0, 1.0),
            required=bool(marks["required"]),
            misspelt_weight=_number(marks, "misspelt_weight", "marks", 0.0, 1.0),
            words=bool(marks["words"]),
        ),
        history=HistoryRules(
            prior_flag_weight=_number(history, "prior_flag_weight", "history", 0.0, 1.0),
            comeback_weight=_number(history, "comeback_weight", "history", 0.0, 1.0),
            link_similarity=_number(history, "link_similarity", "history", 0.0, 1.0),
            confirmed_weight=_number(history, "confirmed_weight", "history", 0.0, 1.0),
        ),
        brands=brands,
    )


def find_cues(title: str, cues: tuple[str, ...]) -> list[str]:
    """Counterfeit cues present in ``title``, matched as whole words, also through digit-for-letter swaps."""
    if not title:
        return []
    plain = f" {normalise(title)} "
    variants = {plain, plain.translate(LEET)}
    return [cue for cue in cues if any(f" {cue} " in variant for variant in variants)]


# --- what a decision is made from ---------------------------------------------------------------


@dataclass
class Listing:
    """What the policy needs to know about one listing photo. ``notes`` are the table reader's
    remarks as ``(finding code, text)`` pairs."""

    listing_id: str
    seller_id: str | None = None
    title: str = ""
    price: float | None = None
    currency: str | None = None
    image: str | None = None
    notes: list[tuple[str, str]] = field(default_factory=list)
    prior_flags: list[str] = field(default_factory=list)  # earlier nights this seller was flagged (--history)
    comebacks: list[dict] = field(default_factory=list)  # flagged photos of other sellers this photo is
    confirmed: list[dict] = field(default_factory=list)  # this seller's listings reviewers confirmed counterfeit
    cleared: dict | None = None  # the review that labelled this seller's same photo genuine on an earlier night


@dataclass
class Ranked:
    """A candidate as :func:`rank` judged it."""

    candidate: Candidate
    threshold: float
    state: str
    needs: int | None = None  # the matching keypoints a new photo of it needs (None: product path off)
    mark: Sighting | None = None  # the brand's mark seen in the photo (state MARK), or the other brand's (OTHER_MARK)

    @property
    def product(self) -> str:
        c = self.candidate
        return f"{c.brand} {c.product_id}" + (f" ({c.title})" if c.title else "")

    def as_match(self) -> Match:
        c = self.candidate
        return Match(brand=c.brand, product_id=c.product_id, similarity=c.similarity, threshold=self.threshold,
                     visual_state=self.state, inliers=c.inliers, alignment=c.alignment, unique=c.unique,
                     colour=c.colour, region=c.region, sharpness=c.sharpness, residual=c.residual,
                     reference_image=c.reference_image, price=c.price,
                     currency=c.currency)


@dataclass
class Facts:
    """What :func:`find` established against the best candidate, besides its findings."""

    findings: list[Finding]
    price_ratio: float | None = None
    seller_authorized: bool | None = None


def error_decision(listing: Listing, message: str, code: str = "bad_row") -> Decision:
    """A listing that could not be judged; ``code`` is the error's stable short name."""
    notes = _notes(listing)
    return Decision(
        listing_id=listing.listing_id,
        verdict=ERROR,
        visual_state=ERROR,
        image=listing.image,
        reasons=[message, *(f.text for f in notes)],
        findings=notes,
        error=message,
        error_code=code,
        seller_id=listing.seller_id,
        title=listing.title,
        price=_usable_price(listing.price),
        currency=listing.currency,
    )


def _notes(listing: Listing) -> list[Finding]:
    return [Finding(code, 0.0, text) for code, text in listing.notes]


def _usable_price(price: float | None) -> float | None:
    return price if price is not None and math.isfinite(price) and price >= 0 else None


# --- step 1: rank ----------------------------------------------------------------------------------


def visual_state(cand: Candidate, threshold: float, verification: Verification, product_inliers: int | None = None) -> str:
    """What the photo shows of one candidate (a code of :data:`detector.decisions.VISUAL_STATES`);
    ``product_inliers`` is what a new photo of it needs (``None``: the product path is off).

    Keypoints establish the product in three ways: as many as a copy needs; fewer with the whole
    outline in place; or, under a copy's count, at least the brand's product count whatever the
    outline (a seller's own photo, at an angle and of a carton in 3D, does not keep the catalogue
    photo's outline). At copy counts the outline still vetoes: many keypoints agreeing on a shared
    element while the rest of the outline is missing is a look-alike. Once established, whether
    the photo is the catalogue photo edited (``copy``) or a new photo of the product (``product``)
    is a matter of how exactly the reference's picture is in it (:func:`copy_or_product`), not of
    how many keypoints match."""
    v = verification
    inliers, alignment = cand.inliers, cand.alignment
    if inliers is not None and alignment is not None and inliers >= v.aligned_inliers and alignment >= v.full_alignment:
        return copy_or_product(cand, v)
    if (product_inliers is not None and inliers is not None and inliers < v.confirm_inliers
            and max(inliers, cand.unique or 0) >= product_inliers):
        return copy_or_product(cand, v)
    if (inliers is not None and alignment is not None and v.veto_below <= inliers < v.trust_inliers
            and alignment < v.min_alignment):
        return LOOKALIKE if cand.similarity >= threshold else NO_MATCH
    if inliers is not None and inliers >= v.confirm_inliers:
        return copy_or_product(cand, v)
    if cand.similarity < threshold:
        return NO_MATCH
    if inliers is None:
        return UNVERIFIED
    if inliers < v.veto_below and cand.similarity < v.strong_similarity:
        return VETOED
    return SIMILAR


def copy_or_product(cand: Candidate, verification: Verification) -> str:
    """``copy`` where the reference's picture is in the photo exactly: at least ``copy_sharpness`` of
    its edges on the photo's to the pixel, or its matched keypoints within ``copy_residual`` pixels
    (median) of a rigid fit; ``product`` (a new photo of it) otherwise, and where neither could be
    measured."""
    if cand.sharpness is not None and cand.sharpness >= verification.copy_sharpness:
        return COPY
    if cand.residual is not None and cand.residual <= verification.copy_residual:
        return COPY
    return PRODUCT


GEOMETRIC = frozenset({COPY, PRODUCT})
"""Matches that local features establish; among them, keypoints unique to one candidate rank first."""


def rank(candidates: list[Candidate], policy: Policy, sightings: list[Sighting] = (),
         marked: frozenset[str] = frozenset()) -> list[Ranked]:
    """Judge each candidate and order them as the policy prefers: visual matches first, those
    local features establish (copies, new photos of the product) first among them, ranked by the
    keypoints that favour them over the other candidates and then by all their matching
    keypoints (the strongest evidence of which product it is: sibling products share a brand's
    logo), then matches on a brand's mark, then the margin over the brand's threshold. The first
    is the one the decision is about.

    ``sightings`` are the registered marks (and brand names, counted with ``[marks] words``) found
    in the photo, ``marked`` the brands that registered marks (see :class:`MarkRules` for what
    they change)."""
    judged = []
    for cand in candidates:
        threshold = policy.brand_threshold(cand.brand, cand.calibrated_threshold)
        needs = policy.product_inliers(cand.product_inliers)
        judged.append(Ranked(cand, threshold, visual_state(cand, threshold, policy.verification, needs), needs))
    if policy.marks.enabled:
        counted = [s for s in sightings if policy.marks.words or s.how != "word"]
        judged = [_with_marks(r, policy.marks, counted, marked) for r in judged]

    def key(r: Ranked):
        geometric = r.state in GEOMETRIC
        return (r.state in MATCHING, geometric, (r.candidate.unique or 0) if geometric else 0,
                r.candidate.inliers if geometric else 0, r.state == MARK,
                r.mark.inliers if r.state == MARK else 0,
                r.candidate.similarity - r.threshold, r.candidate.similarity)

    return by_colour(sorted(judged, key=key, reverse=True), policy.product)


def by_colour(ranked: list[Ranked], rules: ProductRules) -> list[Ranked]:
    """Put first, among the first candidate's siblings (its brand, established by local features,
    with at least ``colour_ratio`` of its unique keypoints), the one whose unique share plus
    ``colour_weight`` times its colour agreement is highest: variants of one carton design share
    most keypoints, and their colours tell them apart."""
    first = ranked[0] if ranked else None
    if rules.colour_weight <= 0 or first is None or first.state not in GEOMETRIC or not first.candidate.unique:
        return ranked
    top = first.candidate.unique
    siblings = [r for r in ranked if r.state in GEOMETRIC and r.candidate.brand == first.candidate.brand
                and (r.candidate.unique or 0) >= rules.colour_ratio * top and r.candidate.colour is not None]
    if len(siblings) < 2:
        return ranked
    best = max(siblings, key=lambda r: r.candidate.unique / top + rules.colour_weight * r.candidate.colour)
    return [best, *(r for r in ranked if r is not best)]


def _with_marks(r: Ranked, rules: MarkRules, sightings: list[Sighting], marked: frozenset[str]) -> Ranked:
    """One judged candidate, reconsidered in the light of the marks found in the photo."""
    cand = r.candidate
    own = next((s for s in sightings if s.brand == cand.brand), None)
    if own is not None:
        if r.state in MATCHING:
            return replace(r, mark=own)
        return replace(r, state=MARK, mark=own) if cand.similarity >= rules.min_similarity else r
    if sightings and r.state in MATCHING:
        return replace(r, state=OTHER_MARK, mark=sightings[0])
    if rules.required and cand.brand in marked and r.state in MATCHING:
        return replace(r, state=MARK_MISSING)
    return r


def visual_confidence(best: Ranked, verification: Verification) -> float:
    """How sure the photo shows the best candidate, in 0..1 (0.5 and above for a visual match)."""
    cand, threshold = best.candidate, best.threshold
    if cand.similarity >= threshold:
        visual = 0.5 + 0.5 * (cand.similarity - threshold) / max(1e-6, 1.0 - threshold)
    else:
        visual = 0.5 * max(0.0, cand.similarity) / max(threshold, 1e-6)
    if best.state in GEOMETRIC:
        return max(visual, 0.5 + 0.5 * min(1.0, cand.inliers / (4.0 * verification.confirm_inliers)))
    if best.state == MARK:
        return 0.5 + 0.5 * min(1.0, max(best.mark.inliers, verification.confirm_inliers * (best.mark.score or 0))
                               / (4.0 * verification.confirm_inliers))
    if best.state in (VETOED, LOOKALIKE, OTHER_MARK, MARK_MISSING):
        return min(visual, 0.49)
    return visual


# --- step 2: find ----------------------------------------------------------------------------------


def history_findings(listing: Listing, comeback: list[dict], rules: HistoryRules) -> list[Finding]:
    """What earlier nights say about this listing: a repeat offender, a probable comeback."""
    found = []
    if listing.prior_flags or listing.confirmed:
        said, weight = [], 0.0
        if listing.prior_flags:
            nights = listing.prior_flags
            said.append(f"was flagged on {len(nights)} earlier night(s), last {nights[-1]}")
            weight = rules.prior_flag_weight
        if listing.confirmed:
            last = listing.confirmed[-1]
            said.append(f"had {len(listing.confirmed)} listing(s) confirmed counterfeit by review, last"
                        f" {last['listing_id']} of {last['night']} (reviewed {last['reviewed']})")
            weight = max(weight, rules.confirmed_weight)
        found.append(Finding("repeat_offender", weight, f"seller {listing.seller_id!r} " + " and ".join(said)))
    for link in comeback[:1]:
        how = "the same file" if link["same_file"] else f"similarity {link['similarity']:.2f}"
        found.append(Finding("comeback", rules.comeback_weight,
                             f"photos match seller {link['seller_id']!r} flagged on {link['night']}"
                             f" (listing {link['listing_id']}, {how}): a probable comeback"))
    if listing.cleared:
        c = listing.cleared
        found.append(Finding("cleared_by_review", 0.0,
                             f"cleared by review on {c['reviewed']}: this seller's same photo (listing {c['listing_id']}"
                             f" of {c['night']}) was labelled genuine by {c['reviewer']!r}; not flagged again"))
    return found


def _price_ratio(listing: Listing, cand: Candidate, policy: Policy) -> tuple[float | None, Finding | None]:
    """The listing price over the catalogue price, or ``None`` with a remark saying why not."""
    if listing.price is None:
        unreadable = any(code == "price_unreadable" for code, _ in listing.notes)
        return None, None if unreadable else Finding("price_missing", 0.0, "no price given; price not compared")
    if listing.currency is None:
        return None, Finding("currency_missing", 0.0, "listing gives no currency; price not compared")
    if cand.price is None or cand.price <= 0:
        return None, Finding("catalogue_price_missing", 0.0,
                             "catalogue has no price for this product; price not compared")
    if listing.currency == cand.currency:
        ratio = listing.price / cand.price
    elif listing.currency in policy.rates and cand.currency in policy.rates:
        ratio = (listing.price * policy.rates[listing.currency]) / (cand.price * policy.rates[cand.currency])
    else:
        return None, Finding("currency_mismatch", 0.0,
                             f"price in {listing.currency} cannot be compared with the catalogue price in"
                             f" {cand.currency} (no rate for it in the policy's [price.rates])")
    if not math.isfinite(ratio):
        return None, Finding("price_out_of_range", 0.0, "price ratio is out of range; price not compared")
    return ratio, None


class Identity(NamedTuple):
    """The products a photo could show, likeliest first; the words read in it that singled out
    the first (empty when words did not decide), and among how many plausible products."""

    products: list[Ranked]
    words: list[str] = []
    among: int = 1


def plausible(ranked: list[Ranked], rules: ProductRules, words_read: list[str] | None = None) -> Identity:
    """The products the photo could show, the first candidate first: with it, the candidates of
    its brand that are visual matches too and that the evidence does not tell from it. Where local
    features established the first (a copy, a new photo), a sibling stays plausible when local
    features establish it too with at least ``colour_ratio`` of the most unique keypoints (those
    :func:`by_colour` compares by colour: the keypoints do not separate them); where they did not
    (a mark, a similarity), every matching sibling stays plausible. With ``rules.words``, the
    words read in the photo (``words_read``) that name one of several plausible siblings
    (:func:`detector.product_words.single_out`) make it the only one."""
    first = ranked[0]
    if first.state not in MATCHING:
        return Identity([first])
    same = [r for r in ranked[1:] if r.candidate.brand == first.candidate.brand and r.state in MATCHING]
    if first.state in GEOMETRIC:
        same = [r for r in same if r.state in GEOMETRIC]
        top = max((r.candidate.unique or 0) for r in [first, *same])
        same = [r for r in same if (r.candidate.unique or 0) >= rules.colour_ratio * top]
    kept, seen = [first], {first.candidate.product_id}
    for r in same:
        if r.candidate.product_id not in seen:  # a product with several catalogue photos is one product
            kept.append(r)
            seen.add(r.candidate.product_id)
    named = single_out(words_read or [], [r.candidate.words for r in kept]) if rules.words and len(kept) > 1 else None
    if named is None:
        return Identity(kept, [], len(kept))
    return Identity([kept[named[0]]], named[1], len(kept))


def words_finding(identity: Identity) -> Finding | None:
    """The remark that says the words read in the photo decided which sibling it shows."""
    if not identity.words:
        return None
    return Finding("identified_by_words", 0.0,
                   f"the words read in the photo name {identity.products[0].candidate.product_id}: more of the"
                   f" words printed on it ({', '.join(identity.words)}) than on any of the other"
                   f" {identity.among - 1} sibling(s) its keypoints could not tell from it")


def doubt_finding(products: list[Ranked]) -> Finding | None:
    """The remark that names the products a photo could show, when it could show more than one."""
    if len(products) < 2:
        return None
    first = products[0]
    how = ("their keypoints do not single one out" if first.state in GEOMETRIC
           else "nothing but their likeness tells them apart")
    return Finding("identity_uncertain", 0.0,
                   f"the photo could show any of {len(products)} {first.candidate.brand} products:"
                   f" {', '.join(r.candidate.product_id for r in products)} ({how}); {first.candidate.product_id}"
                   " is the likeliest")


def _sibling_price(listing: Listing, products: list[Candidate], policy: Policy
                   ) -> tuple[float | None, Candidate, Finding | None]:
    """The price ratio against the cheapest of the products the photo could show (the highest
    ratio: a price that fits any of them is not too low), that product, and a remark when the
    price cannot be compared. With several products, one without a comparable catalogue price
    withholds the comparison: the cheapest is then unknown."""
    first = products[0]
    ratio, note = _price_ratio(listing, first, policy)
    if len(products) == 1 or listing.price is None or listing.currency is None:
        return ratio, first, note
    found = [(_price_ratio(listing, c, policy), c) for c in products]
    lacking = [c for (r, _), c in found if r is None]
    if lacking:
        return None, first, Finding(
            "price_withheld", 0.0,
            f"the photo could show {lacking[0].product_id}, whose price cannot be compared"
            f" ({found[products.index(lacking[0])][0][1].text}); with the cheapest product unknown, price not compared")
    (ratio, _), cheapest = max(found, key=lambda item: item[0][0])
    return ratio, cheapest, None


def find(listing: Listing, products: list[Candidate], authorized: dict[str, set[str]], policy: Policy,
         history: list[Finding]) -> Facts:
    """Every finding about ``listing`` against the products its photo could show (the likeliest
    first; the price is compared with the cheapest of them): the inconsistencies first (price,
    seller, title, then the ``history`` findings), then the remarks."""
    cand = products[0]
    ratio, priced, price_note = _sibling_price(listing, products, policy)
    facts = Facts(findings=[], price_ratio=ratio)
    sellers = authorized.get(cand.brand) or set()
    if policy.check_seller and sellers and listing.seller_id is not None:
        facts.seller_authorized = listing.seller_id in sellers
    min_ratio = policy.brand_price_ratio(cand.brand)
    if ratio is not None and ratio < min_ratio:
        whose = "" if len(products) == 1 else (
            f" of {priced.product_id}, the cheapest of the {len(products)} products the photo could show")
        facts.findings.append(Finding(
            "price_below_ratio", policy.weights.price * (0.6 + 0.4 * (1 - ratio / min_ratio)),
            f"price {listing.price:,.2f} {listing.currency} is {ratio:.0%} of the catalogue price"
            f" {priced.price:,.2f} {priced.currency}{whose} (below {min_ratio:.0%})"))
    if facts.seller_authorized is False:
        facts.findings.append(Finding("seller_not_authorised", policy.weights.seller,
                                      f"seller {listing.seller_id!r} is not authorised for {cand.brand}"))
    misspelt = misspelt_brand(listing.title, cand.brand) if policy.marks.enabled else None
    if misspelt is not None and policy.marks.misspelt_weight > 0:
        facts.findings.append(Finding("brand_misspelt", policy.marks.misspelt_weight,
                                      f"title spells {cand.brand} evasively: {misspelt!r}"))
    cues = find_cues(listing.title, policy.cues)
    if cues:
        facts.findings.append(Finding("title_cue", policy.weights.title,
                                      "title has counterfeit cue(s): " + ", ".join(repr(c) for c in cues)))
    facts.findings += history
    if price_note is not None:
        facts.findings.append(price_note)
    facts.findings += _notes(listing)
    if policy.check_seller and not sellers and listing.seller_id is not None:
        facts.findings.append(Finding("sellers_not_declared", 0.0,
                                      f"{cand.brand} declares no authorised sellers; seller not checked"))
    return facts


# --- step 3: score ---------------------------------------------------------------------------------


def score(visual: float, findings: list[Finding]) -> float:
    """Risk score: visual confidence × combined inconsistency, where the combined inconsistency
    is 1 − ∏(1 − weight) over the findings (remarks weigh 0)."""
    return round(visual * (1.0 - math.prod(1.0 - f.weight for f in findings)), 4)


# --- step 4: word ----------------------------------------------------------------------------------


def visual_reason(best: Ranked, verification: Verification) -> str:
    """The sentence that says what the photo shows of the best candidate."""
    cand, threshold, product = best.candidate, best.threshold, best.product
    keypoints = "" if cand.inliers is None else f"; {cand.inliers} matching keypoints"
    if best.state == NO_MATCH:
        return (f"no protected product close enough (best: {product} at similarity {cand.similarity:.2f}"
                f" < threshold {threshold:.2f}{keypoints})")
    if best.state == VETOED:
        return (f"closest: {product} at similarity {cand.similarity:.2f} ≥ threshold {threshold:.2f}, but only"
                f" {cand.inliers} matching keypoints (a match needs {verification.veto_below}, or similarity"
                f" ≥ {verification.strong_similarity:.2f})")
    if best.state == LOOKALIKE:
        return (f"closest: {product} at similarity {cand.similarity:.2f} ≥ threshold {threshold:.2f} with"
                f" {cand.inliers} matching keypoints, but once aligned only {cand.alignment:.0%} of its outline is in"
                f" the photo (a copy keeps {verification.min_alignment:.0%}): a look-alike or a shared"
                " element, not a copy")
    if best.state == COPY:
        outline = "" if cand.alignment is None else f", {cand.alignment:.0%} of its outline in place"
        return (f"photo matches {product}: {cand.inliers} matching keypoints in one geometric layout{outline}"
                f" (similarity {cand.similarity:.2f}, threshold {threshold:.2f})")
    if best.state == PRODUCT:
        return (f"photo shows {product}: a new photo of it, with {cand.inliers} matching keypoints in one layout"
                f" ({cand.unique or 0} of them on no other candidate product; this brand's new photos need"
                f" {best.needs}) at similarity {cand.similarity:.2f}")
    if best.state == MARK:
        return f"photo carries {_sighting(best.mark)}, on a product like {product} (similarity {cand.similarity:.2f})"
    if best.state == OTHER_MARK:
        return (f"looks like {product} (similarity {cand.similarity:.2f}), but carries {_sighting(best.mark)}:"
                f" not a {cand.brand} product")
    if best.state == MARK_MISSING:
        return (f"looks like {product} (similarity {cand.similarity:.2f} ≥ threshold {threshold:.2f}{keypoints}),"
                f" but none of {cand.brand}'s registered marks is in the photo")
    return f"photo matches {product} (similarity {cand.similarity:.2f} ≥ threshold {threshold:.2f}{keypoints})"


def _sighting(mark: Sighting) -> str:
    x0, y0, x1, y1 = mark.box
    colours = ", in inverted colours" if mark.inverted else ""
    where = f"at x {x0:.0%}–{x1:.0%}, y {y0:.0%}–{y1:.0%} of the photo"
    if mark.how == "word":
        return f"{mark.brand}'s name, read as {mark.name!r} (confidence {mark.score:.2f}, {where})"
    how = f"{mark.inliers} matching keypoints" if mark.how == "keypoints" else f"its shape, score {mark.score:.2f}"
    return f"{mark.brand}'s registered mark {mark.name} ({how}{colours}, {where})"


def word(visual: str, findings: list[Finding], consistent: list[str] | None = None) -> list[str]:
    """The reasons a reviewer reads: what the photo shows, the inconsistencies, then (for a visual
    match without any) what was found consistent, then the remarks."""
    counted = [f.text for f in findings if f.weight > 0]
    remarks = [f.text for f in findings if f.weight <= 0]
    if consistent is not None and not counted:
        counted = ["nothing inconsistent: " + ", ".join(consistent)]
    return [visual, *counted, *remarks]


# --- the four steps ------------------------------------------------------------------------------


def decide(
    listing: Listing,
    candidates: list[Candidate],
    authorized: dict[str, set[str]],
    policy: Policy,
    sightings: list[Sighting] = (),
    marked: frozenset[str] = frozenset(),
    words_read: list[str] | None = None,
) -> Decision:
    """Decide one listing photo from its nearest references (and the registered marks found in
    it, of the ``marked`` brands): flagged when the best candidate is a visual match
    (:data:`detector.decisions.MATCHING`) and at least one finding weighs more than 0."""
    # Table readers only hand over finite, non-negative prices; anything else counts as absent.
    listing = replace(listing, price=_usable_price(listing.price))
    candidates = [replace(c, price=_usable_price(c.price)) for c in candidates if math.isfinite(c.similarity)]
    decision = Decision(listing_id=listing.listing_id, verdict=CLEAR, image=listing.image, seller_id=listing.seller_id,
                        title=listing.title, price=listing.price, currency=listing.currency,
                        prior_flags=list(listing.prior_flags),
                        marks=[{"brand": s.brand, "mark": s.name, "found_by": s.how, "inliers": s.inliers,
                                "inverted": s.inverted, "box": list(s.box),
                                "shape_score": s.score if s.how == "shape" else None,
                                "read_score": s.score if s.how == "word" else None} for s in sightings])
    if not any(listing.seller_id in sellers for sellers in authorized.values()):  # a reseller is no comeback
        decision.comeback = list(listing.comebacks[:3])
    history = history_findings(listing, decision.comeback, policy.history)
    if not candidates:
        decision.findings = [*history, *_notes(listing)]
        decision.reasons = word("no reference product to compare with", decision.findings)
        return decision

    ranked = rank(candidates, policy, sightings, marked)
    identity = plausible(ranked, policy.product, words_read)
    products = identity.products
    best = products[0]  # the first ranked, unless the words named a sibling
    ranked = [best, *(r for r in ranked if r is not best)]
    cand = best.candidate
    decision.matches = [r.as_match() for r in ranked]
    decision.visual_state, decision.visual_match = best.state, best.state in MATCHING
    decision.brand, decision.product_id = cand.brand, cand.product_id
    decision.reference_image, decision.reference_path = cand.reference_image, cand.reference_path
    decision.similarity, decision.threshold = round(cand.similarity, 4), round(best.threshold, 4)
    decision.inliers, decision.alignment = cand.inliers, cand.alignment
    decision.catalogue_price, decision.catalogue_currency = cand.price, cand.currency
    decision.plausible = [r.candidate.product_id for r in products] if decision.visual_match else []
    facts = find(listing, [r.candidate for r in products], authorized, policy, history)
    remark = doubt_finding(products) or words_finding(identity)
    if remark is not None:
        facts.findings.insert(next((i for i, f in enumerate(facts.findings) if f.weight <= 0), len(facts.findings)),
                              remark)
    decision.findings, decision.seller_authorized = facts.findings, facts.seller_authorized
    decision.price_ratio = None if facts.price_ratio is None else round(facts.price_ratio, 4)
    decision.score = score(visual_confidence(best, policy.verification), facts.findings)
    if decision.visual_match and any(f.weight > 0 for f in facts.findings) and not listing.cleared:
        decision.verdict = FLAGGED
    consistent = None
    if decision.visual_match:
        consistent = [f"price {facts.price_ratio:.0%} of catalogue"] if facts.price_ratio is not None else []
        consistent += ["seller authorised"] if facts.seller_authorized else []
        consistent.append("no counterfeit cues in title")
    decision.reasons = word(visual_reason(best, policy.verification), facts.findings, consistent)
    return decision


_RANK = {FLAGGED: 2, ERROR: 1, CLEAR: 0}


def combine(decisions: list[Decision]) -> Decision:
    """One decision for a listing with several photos: any flagged photo flags it; otherwise any
    unreadable photo makes it an error (a reviewer should look); otherwise it is clear."""
    best = max(decisions, key=lambda d: (_RANK[d.verdict], d.score, d.similarity or 0.0))
    if len(decisions) == 1:
        return best
    combined = replace(best, photos=len(decisions))
    links = {(c["seller_id"], c["listing_id"]): c for d in decisions for c in d.comeback}
    combined.comeback = sorted(links.values(), key=lambda c: -c["similarity"])[:3]
    added = []
    failed = [d for d in decisions if d.verdict == ERROR]
    if failed and best.verdict != ERROR:
        added.append(Finding("photos_unreadable", 0.0,
                             f"{len(failed)} of {len(decisions)} photos could not be read: {failed[0].error}"))
    elif best.verdict == ERROR and len(failed) > 1:
        added.append(Finding("photos_unreadable", 0.0, f"{len(failed)} of {len(decisions)} photos could not be read"))
    if best.verdict != ERROR:
        added.append(Finding("best_photo", 0.0, f"decided on photo {best.image} (best of {len(decisions)})"))
    fields = {(d.seller_id, d.price, d.currency) for d in decisions if d.verdict != ERROR}
    if len(fields) > 1:
        added.append(Finding("rows_disagree", 0.0,
                             "rows of this listing disagree on seller, price or currency; the riskiest row decides"))
    combined.findings = [*best.findings, *added]
    combined.reasons = [*best.reasons, *(f.text for f in added)]
    return combined
