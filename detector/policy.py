"""Risk policy: a listing is flagged when its photo matches a protected product *and* something
about it is inconsistent (price far below catalogue, unauthorised seller, counterfeit cues in
the title). Every decision carries a score and its reasons in plain words.

Defaults live in ``default_policy.toml`` beside this file; a user's TOML file overrides any key.
"""

from __future__ import annotations

import math
import re
import tomllib
import unicodedata
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from detector.errors import UserError

FLAGGED, CLEAR, ERROR = "flagged", "clear", "error"
_LEET = str.maketrans({"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})


@dataclass(frozen=True)
class Weights:
    """How strongly each inconsistency counts towards the risk score (each in 0..1)."""

    price: float = 0.6
    seller: float = 0.8
    title: float = 0.7


@dataclass(frozen=True)
class Verification:
    """How geometric evidence (matching keypoints, and the share of the reference's outline found
    once aligned) confirms or vetoes a visual match."""

    confirm_inliers: int = 8
    veto_below: int = 3
    strong_similarity: float = 0.85
    min_alignment: float = 0.75
    aligned_inliers: int = 5
    full_alignment: float = 0.95
    trust_inliers: int = 32


@dataclass(frozen=True)
class HistoryRules:
    """How earlier nights (``scan --history``) count: weights of a seller's earlier flags and of a
    comeback, and the cosine at which two listing photos are the same photo."""

    prior_flag_weight: float = 0.5
    comeback_weight: float = 0.8
    link_similarity: float = 0.92


@dataclass(frozen=True)
class Policy:
    """Every knob of the decision; see ``default_policy.toml`` for what each means."""

    threshold: float | None = None
    threshold_offset: float = 0.0
    min_similarity: float = 0.0
    min_price_ratio: float = 0.5
    rates: dict[str, float] = field(default_factory=dict)
    check_seller: bool = True
    cues: tuple[str, ...] = ()
    weights: Weights = Weights()
    verification: Verification = Verification()
    history: HistoryRules = HistoryRules()
    brands: dict[str, dict] = field(default_factory=dict)

    def brand_threshold(self, brand: str, calibrated: float | None) -> float:
        """The similarity a photo needs to count as a match for ``brand``."""
        override = self.brands.get(brand, {}).get("threshold")
        value = override if override is not None else (self.threshold if self.threshold is not None else calibrated)
        return max(self.min_similarity, (0.75 if value is None else float(value)) + self.threshold_offset)

    def brand_price_ratio(self, brand: str) -> float:
        return float(self.brands.get(brand, {}).get("min_price_ratio", self.min_price_ratio))


def _number(section: dict, key: str, default, where: str, low: float = 0.0, high: float = math.inf):
    value = section.get(key, default)
    if value is None:
        return None
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
    match, price, seller, title, score, verify, history = (
        config.get(k, {}) for k in ("match", "price", "seller", "title", "score", "verify", "history")
    )
    threshold = match.get("threshold", "calibrated")
    if threshold == "calibrated":
        threshold = None
    else:
        threshold = _number(match, "threshold", None, "match", 0.0, 1.0)
    rates = price.get("rates", {})
    if not isinstance(rates, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in rates.values()
    ):
        raise UserError("policy: price.rates must map currency codes to positive numbers")
    cues = title.get("cues", [])
    extra = title.get("extra_cues", [])
    if not all(isinstance(c, str) and c.strip() for c in [*cues, *extra]):
        raise UserError("policy: title.cues and title.extra_cues must be lists of non-empty strings")
    brands = config.get("brands", {})
    for brand, values in brands.items():
        if not isinstance(values, dict):
            raise UserError(f"policy: [brands.{brand!r}] must be a table")
        for key in values:
            if key not in {"threshold", "min_price_ratio"}:
                raise UserError(f"policy: [brands.{brand!r}] knows threshold and min_price_ratio, not {key!r}")
            _number(values, key, None, f"brands.{brand}", 0.0, 1.0 if key == "threshold" else 10.0)
    return Policy(
        threshold=threshold,
        threshold_offset=_number(match, "threshold_offset", 0.0, "match", -1.0, 1.0),
        min_similarity=_number(match, "min_similarity", 0.0, "match", 0.0, 1.0),
        min_price_ratio=_number(price, "min_price_ratio", 0.5, "price", 0.0, 10.0),
        rates={str(k).upper(): float(v) for k, v in rates.items()},
        check_seller=bool(seller.get("check", True)),
        cues=tuple(dict.fromkeys(_normalise(c) for c in [*cues, *extra])),
        weights=Weights(
            price=_number(score, "price_weight", 0.6, "score", 0.0, 1.0),
            seller=_number(score, "seller_weight", 0.8, "score", 0.0, 1.0),
            title=_number(score, "title_weight", 0.7, "score", 0.0, 1.0),
        ),
        verification=Verification(
            confirm_inliers=int(_number(verify, "confirm_inliers", 8, "verify", 1, 10_000)),
            veto_below=int(_number(verify, "veto_below", 3, "verify", 0, 10_000)),
            strong_similarity=_number(verify, "strong_similarity", 0.85, "verify", 0.0, 1.01),
            min_alignment=_number(verify, "min_alignment", 0.75, "verify", 0.0, 1.0),
            aligned_inliers=int(_number(verify, "aligned_inliers", 5, "verify", 1, 10_000)),
            full_alignment=_number(verify, "full_alignment", 0.95, "verify", 0.0, 1.01),
            trust_inliers=int(_number(verify, "trust_inliers", 32, "verify", 1, 10_000)),
        ),
        history=HistoryRules(
            prior_flag_weight=_number(history, "prior_flag_weight", 0.5, "history", 0.0, 1.0),
            comeback_weight=_number(history, "comeback_weight", 0.8, "history", 0.0, 1.0),
            link_similarity=_number(history, "link_similarity", 0.92, "history", 0.0, 1.0),
        ),
        brands=brands,
    )


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    return re.sub(r"[^\w:]+", " ", text).strip()


def find_cues(title: str, cues: tuple[str, ...]) -> list[str]:
    """Counterfeit cues present in ``title``, matched as whole words, also through digit-for-letter swaps."""
    if not title:
        return []
    plain = f" {_normalise(title)} "
    variants = {plain, plain.translate(_LEET)}
    return [cue for cue in cues if any(f" {cue} " in variant for variant in variants)]


# --- decisions ---------------------------------------------------------------------------------


@dataclass
class Listing:
    """What the policy needs to know about one listing photo."""

    listing_id: str
    seller_id: str | None = None
    title: str = ""
    price: float | None = None
    currency: str | None = None
    image: str | None = None
    notes: list[str] = field(default_factory=list)
    prior_flags: list[str] = field(default_factory=list)  # earlier nights this seller was flagged (--history)
    comebacks: list[dict] = field(default_factory=list)  # flagged photos of other sellers this photo is


@dataclass
class Candidate:
    """A reference product the listing photo resembles, with the brand's calibrated threshold."""

    brand: str
    product_id: str
    similarity: float
    reference_image: str | None = None
    reference_path: str | None = None
    price: float | None = None
    currency: str | None = None
    title: str = ""
    calibrated_threshold: float | None = None
    inliers: int | None = None  # matching keypoints from geometric verification; None if not verified
    alignment: float | None = None  # share of the reference's edges found in the photo once aligned


@dataclass
class Decision:
    """The verdict on a listing, with its evidence and reasons."""

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
    price_ratio: float | None = None
    seller_authorized: bool | None = None
    reasons: list[str] = field(default_factory=list)
    error: str | None = None
    seller_id: str | None = None
    title: str = ""
    price: float | None = None
    currency: str | None = None
    catalogue_price: float | None = None
    catalogue_currency: str | None = None
    photos: int = 1
    matches: list[dict] = field(default_factory=list)
    prior_flags: list[str] = field(default_factory=list)
    comeback: list[dict] = field(default_factory=list)
    reference_path: str | None = None  # local file of the reference photo, for the report only

    def as_record(self) -> dict:
        """The JSON-ready record written to decisions.jsonl (field order is stable)."""
        record = dict(self.__dict__)
        del record["reference_path"]
        return record


def error_decision(listing: Listing, message: str) -> Decision:
    """A listing that could not be judged."""
    return Decision(
        listing_id=listing.listing_id,
        verdict=ERROR,
        image=listing.image,
        reasons=[message, *listing.notes],
        error=message,
        seller_id=listing.seller_id,
        title=listing.title,
        price=_usable_price(listing.price),
        currency=listing.currency,
    )


def _price_ratio(listing: Listing, cand: Candidate, policy: Policy) -> tuple[float | None, str | None]:
    """The listing price over the catalogue price, or ``None`` with a note saying why not."""
    ratio, why = _raw_price_ratio(listing, cand, policy)
    if ratio is not None and not math.isfinite(ratio):
        return None, "price ratio is out of range; price not compared"
    return ratio, why


def _raw_price_ratio(listing: Listing, cand: Candidate, policy: Policy) -> tuple[float | None, str | None]:
    if listing.price is None:
        already = any(note.endswith("price not compared") for note in listing.notes)
        return None, None if already else "no price given; price not compared"
    if listing.currency is None:
        return None, "listing gives no currency; price not compared"
    if cand.price is None or cand.price <= 0:
        return None, "catalogue has no price for this product; price not compared"
    if listing.currency == cand.currency:
        return listing.price / cand.price, None
    rates = policy.rates
    if listing.currency in rates and cand.currency in rates:
        return (listing.price * rates[listing.currency]) / (cand.price * rates[cand.currency]), None
    return None, (
        f"price in {listing.currency} cannot be compared with the catalogue price in {cand.currency}"
        " (no rate for it in the policy's [price.rates])"
    )


def _usable_price(price: float | None) -> float | None:
    return price if price is not None and math.isfinite(price) and price >= 0 else None


def _visual_state(cand: Candidate, threshold: float, verification: Verification) -> str:
    """``confirmed`` (enough matching keypoints, or fewer whose alignment leaves the whole outline
    in place), ``matched`` (similar enough, not contradicted), ``vetoed`` (similar, but too few
    keypoints), ``misaligned`` (keypoints agree, but once aligned much of the reference's outline
    is missing: a look-alike or a shared element) or ``none``."""
    v = verification
    inliers, alignment = cand.inliers, cand.alignment
    if (inliers is not None and alignment is not None and v.veto_below <= inliers < v.trust_inliers
            and alignment < v.min_alignment):
        return "misaligned" if cand.similarity >= threshold else "none"
    if inliers is not None and inliers >= v.confirm_inliers:
        return "confirmed"
    if inliers is not None and alignment is not None and inliers >= v.aligned_inliers and alignment >= v.full_alignment:
        return "confirmed"
    if cand.similarity < threshold:
        return "none"
    if cand.inliers is not None and cand.inliers < verification.veto_below and cand.similarity < verification.strong_similarity:
        return "vetoed"
    return "matched"


def _visual(similarity: float, threshold: float) -> float:
    if similarity >= threshold:
        return 0.5 + 0.5 * (similarity - threshold) / max(1e-6, 1.0 - threshold)
    return 0.5 * max(0.0, similarity) / max(threshold, 1e-6)


def decide(
    listing: Listing,
    candidates: list[Candidate],
    authorized: dict[str, set[str]],
    policy: Policy,
) -> Decision:
    """Decide one listing photo from its nearest references.

    A candidate is a visual match when enough keypoints confirm it geometrically, or when its
    similarity reaches its brand's threshold and the geometry does not contradict it. Among
    matches, confirmed ones come first (most matching keypoints first), then the largest margin
    over the threshold. A listing is flagged when it has a visual match and at least one
    inconsistency holds.
    """
    # Table readers only hand over finite, non-negative prices; anything else counts as absent.
    listing = replace(listing, price=_usable_price(listing.price))
    candidates = [replace(c, price=_usable_price(c.price)) for c in candidates if math.isfinite(c.similarity)]
    base = Decision(
        listing_id=listing.listing_id,
        verdict=CLEAR,
        image=listing.image,
        seller_id=listing.seller_id,
        title=listing.title,
        price=listing.price,
        currency=listing.currency,
    )
    cues = find_cues(listing.title, policy.cues)
    base.prior_flags = list(listing.prior_flags)
    if not any(listing.seller_id in sellers for sellers in authorized.values()):  # a reseller is no comeback
        base.comeback = list(listing.comebacks[:3])
    history_notes = _history_findings(base, policy.history)
    listing = replace(listing, notes=[*listing.notes, *(text for _, text in history_notes)])
    if not candidates:
        base.reasons = ["no reference product to compare with", *listing.notes]
        return base
    thresholds = [policy.brand_threshold(c.brand, c.calibrated_threshold) for c in candidates]
    states = [_visual_state(c, t, policy.verification) for c, t in zip(candidates, thresholds)]
    # Preference: visual matches first, geometrically confirmed ones first among them and the
    # most matching keypoints first among those (the strongest evidence of a copy), then the
    # margin over the brand's threshold. matches[0] is the candidate the decision is about.
    order = sorted(
        range(len(candidates)),
        key=lambda i: (states[i] in ("matched", "confirmed"), states[i] == "confirmed",
                       candidates[i].inliers if states[i] == "confirmed" else 0,
                       candidates[i].similarity - thresholds[i], candidates[i].similarity),
        reverse=True,
    )
    base.matches = [
        {"brand": candidates[i].brand, "product_id": candidates[i].product_id,
         "similarity": round(candidates[i].similarity, 4), "inliers": candidates[i].inliers,
         "alignment": candidates[i].alignment}
        for i in order
    ]
    best_i = order[0]
    cand, threshold, state = candidates[best_i], thresholds[best_i], states[best_i]
    base.visual_match = state in ("matched", "confirmed")
    base.brand, base.product_id = cand.brand, cand.product_id
    base.reference_image, base.reference_path = cand.reference_image, cand.reference_path
    base.similarity, base.threshold, base.inliers = round(cand.similarity, 4), round(threshold, 4), cand.inliers
    base.alignment = cand.alignment
    base.catalogue_price, base.catalogue_currency = cand.price, cand.currency
    visual = _visual(cand.similarity, threshold)
    if state == "confirmed":
        visual = max(visual, 0.5 + 0.5 * min(1.0, cand.inliers / (4.0 * policy.verification.confirm_inliers)))
    elif state in ("vetoed", "misaligned"):
        visual = min(visual, 0.49)
    product = f"{cand.brand} {cand.product_id}" + (f" ({cand.title})" if cand.title else "")

    ratio, price_note = _price_ratio(listing, cand, policy)
    base.price_ratio = None if ratio is None else round(ratio, 4)
    sellers = authorized.get(cand.brand) or set()
    if policy.check_seller and sellers and listing.seller_id is not None:
        base.seller_authorized = listing.seller_id in sellers

    signals, findings = [], []
    min_ratio = policy.brand_price_ratio(cand.brand)
    if ratio is not None and ratio < min_ratio:
        signals.append(policy.weights.price * (0.6 + 0.4 * (1 - ratio / min_ratio)))
        findings.append(
            f"price {listing.price:,.2f} {listing.currency} is {ratio:.0%} of the catalogue price"
            f" {cand.price:,.2f} {cand.currency} (below {min_ratio:.0%})"
        )
    if base.seller_authorized is False:
        signals.append(policy.weights.seller)
        findings.append(f"seller {listing.seller_id!r} is not authorised for {cand.brand}")
    if cues:
        signals.append(policy.weights.title)
        findings.append("title has counterfeit cue(s): " + ", ".join(repr(c) for c in cues))
    for weight, text in history_notes:
        if weight > 0:
            signals.append(weight)
            findings.append(text)
    evidence = 1.0 - math.prod(1.0 - s for s in signals)
    base.score = round(visual * evidence, 4)

    notes = [n for n in [price_note] if n] + list(listing.notes)
    if policy.check_seller and not sellers and listing.seller_id is not None:
        notes.append(f"{cand.brand} declares no authorised sellers; seller not checked")
    keypoints = "" if cand.inliers is None else f"; {cand.inliers} matching keypoints"
    if state == "none":
        base.reasons = [
            f"no protected product close enough (best: {product} at similarity {cand.similarity:.2f}"
            f" < threshold {threshold:.2f}{keypoints})",
            *notes,
        ]
        return base
    if state == "vetoed":
        v = policy.verification
        base.reasons = [
            f"closest: {product} at similarity {cand.similarity:.2f} ≥ threshold {threshold:.2f}, but only"
            f" {cand.inliers} matching keypoints (a match needs {v.veto_below}, or similarity ≥ {v.strong_similarity:.2f})",
            *notes,
        ]
        return base
    if state == "misaligned":
        base.reasons = [
            f"closest: {product} at similarity {cand.similarity:.2f} ≥ threshold {threshold:.2f} with"
            f" {cand.inliers} matching keypoints, but once aligned only {cand.alignment:.0%} of its outline is in"
            f" the photo (a copy keeps {policy.verification.min_alignment:.0%}): a look-alike or a shared"
            " element, not a copy",
            *notes,
        ]
        return base
    if state == "confirmed":
        outline = "" if cand.alignment is None else f", {cand.alignment:.0%} of its outline in place"
        matched = (f"photo matches {product}: {cand.inliers} matching keypoints in one geometric layout{outline}"
                   f" (similarity {cand.similarity:.2f}, threshold {threshold:.2f})")
    else:
        matched = f"photo matches {product} (similarity {cand.similarity:.2f} ≥ threshold {threshold:.2f}{keypoints})"
    notes = [n for n in notes if n not in findings]  # history findings arrived as notes too
    if findings:
        base.verdict = FLAGGED
        base.reasons = [matched, *findings, *notes]
        return base
    consistent = []
    if ratio is not None:
        consistent.append(f"price {ratio:.0%} of catalogue")
    if base.seller_authorized:
        consistent.append("seller authorised")
    consistent.append("no counterfeit cues in title")
    base.reasons = [matched, "nothing inconsistent: " + ", ".join(consistent), *notes]
    return base


def _history_findings(decision: Decision, rules: HistoryRules) -> list[tuple[float, str]]:
    """What earlier nights say about this listing, as (weight, reason) pairs."""
    found = []
    if decision.prior_flags:
        nights = decision.prior_flags
        found.append((rules.prior_flag_weight, f"seller {decision.seller_id!r} was flagged on {len(nights)} earlier"
                                               f" night(s), last {nights[-1]}"))
    for link in decision.comeback[:1]:
        how = "the same file" if link["same_file"] else f"similarity {link['similarity']:.2f}"
        found.append((rules.comeback_weight, f"photos match seller {link['seller_id']!r} flagged on {link['night']}"
                                             f" (listing {link['listing_id']}, {how}): a probable comeback"))
    return found


_RANK = {FLAGGED: 2, ERROR: 1, CLEAR: 0}


def combine(decisions: list[Decision]) -> Decision:
    """One decision for a listing with several photos: any flagged photo flags it; otherwise any
    unreadable photo makes it an error (a reviewer should look); otherwise it is clear."""
    best = max(decisions, key=lambda d: (_RANK[d.verdict], d.score, d.similarity or 0.0))
    if len(decisions) == 1:
        return best
    combined = Decision(**best.__dict__)
    combined.reasons = list(best.reasons)
    combined.photos = len(decisions)
    links = {(c["seller_id"], c["listing_id"]): c for d in decisions for c in d.comeback}
    combined.comeback = sorted(links.values(), key=lambda c: -c["similarity"])[:3]
    failed = [d for d in decisions if d.verdict == ERROR]
    if failed and best.verdict != ERROR:
        combined.reasons.append(f"{len(failed)} of {len(decisions)} photos could not be read: {failed[0].error}")
    elif best.verdict == ERROR and len(failed) > 1:
        combined.reasons.append(f"{len(failed)} of {len(decisions)} photos could not be read")
    if best.verdict != ERROR:
        combined.reasons.append(f"decided on photo {best.image} (best of {len(decisions)})")
    fields = {(d.seller_id, d.price, d.currency) for d in decisions if d.verdict != ERROR}
    if len(fields) > 1:
        combined.reasons.append("rows of this listing disagree on seller, price or currency; the riskiest row decides")
    return combined
