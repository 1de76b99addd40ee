"""The risk policy: flag = visual match AND at least one inconsistency; codes say why (visual_state and
findings), and the reasons word the same evidence."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.decisions import CLEAR, ERROR, FINDINGS, FLAGGED, MATCHING, VISUAL_STATES, Decision
from detector.errors import UserError
from detector.records import Candidate, Sighting
from detector.policy import Listing, combine, decide, error_decision, find_cues, load_policy, misspelt_brand

POLICY = load_policy()
SELLERS = {"Aurelio": {"auth-1"}}


def codes(decision) -> dict[str, float]:
    """The decision's findings as {code: weight}."""
    return {f.code: f.weight for f in decision.findings}


def cand(similarity=0.9, threshold=0.7, price=100.0, currency="USD", brand="Aurelio", product="AUR-1"):
    return Candidate(brand=brand, product_id=product, similarity=similarity, price=price, currency=currency,
                     calibrated_threshold=threshold, reference_image="refs/a.jpg")


def listing(price=95.0, seller="auth-1", title="Aurelio bag", currency="USD"):
    return Listing(listing_id="L1", seller_id=seller, title=title, price=price, currency=currency, image="x.jpg")


@pytest.mark.parametrize(
    "visual, cheap, rogue, cue",
    list(itertools.product([True, False], repeat=4)),
)
def test_every_combination_of_rules(visual, cheap, rogue, cue):
    facts = listing(price=20.0 if cheap else 95.0, seller="rogue" if rogue else "auth-1",
                    title="Aurelio bag replica" if cue else "Aurelio bag")
    decision = decide(facts, [cand(similarity=0.9 if visual else 0.5)], SELLERS, POLICY)
    should_flag = visual and (cheap or rogue or cue)
    assert decision.verdict == (FLAGGED if should_flag else CLEAR)
    assert decision.visual_state == ("unverified" if visual else "no_match")
    counted = [f.code for f in decision.findings if f.weight > 0]
    expected = ["price_below_ratio"] * cheap + ["seller_not_authorised"] * rogue + ["title_cue"] * cue
    assert counted == expected  # found against the closest product, whether or not it matched
    # the reasons word the same evidence: what the photo shows, then each finding that counted
    assert decision.reasons[1 : 1 + len(counted)] == [f.text for f in decision.findings if f.weight > 0]
    assert decision.seller_authorized is (not rogue)
    assert decision.price_ratio == pytest.approx(0.2 if cheap else 0.95)
    assert 0.0 <= decision.score <= 1.0
    if should_flag:
        assert decision.score >= 0.3


def test_score_grows_with_evidence():
    one = decide(listing(seller="rogue"), [cand()], SELLERS, POLICY).score
    two = decide(listing(seller="rogue", price=10.0), [cand()], SELLERS, POLICY).score
    three = decide(listing(seller="rogue", price=10.0, title="replica"), [cand()], SELLERS, POLICY).score
    closer = decide(listing(seller="rogue", price=10.0, title="replica"), [cand(similarity=0.99)], SELLERS, POLICY).score
    assert one < two < three < closer


def test_threshold_is_per_brand_and_the_largest_margin_wins():
    candidates = [cand(similarity=0.80, threshold=0.85, brand="Aurelio"),
                  cand(similarity=0.78, threshold=0.60, brand="Brightwell", product="BRI-1")]
    decision = decide(listing(price=10.0), candidates, SELLERS, POLICY)
    assert decision.brand == "Brightwell" and decision.verdict == FLAGGED
    assert decision.threshold == 0.6


def test_policy_file_overrides_thresholds(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[match]\nthreshold = 0.95\n[brands."Aurelio"]\nmin_price_ratio = 0.1\n')
    strict = load_policy(path)
    assert decide(listing(price=10.0), [cand(similarity=0.9)], SELLERS, strict).verdict == CLEAR
    path.write_text('[brands."Aurelio"]\nthreshold = 0.5\nmin_price_ratio = 0.1\n')
    loose = load_policy(path)
    decision = decide(listing(price=20.0), [cand(similarity=0.6)], SELLERS, loose)
    assert decision.verdict == CLEAR  # 20% is above this brand's 10% ratio
    assert decision.similarity >= decision.threshold


def test_currency_mismatch_is_reported_not_guessed(tmp_path):
    decision = decide(listing(price=10.0, currency="EUR"), [cand()], SELLERS, POLICY)
    assert decision.verdict == CLEAR and decision.price_ratio is None
    assert codes(decision) == {"currency_mismatch": 0.0}
    path = tmp_path / "rates.toml"
    path.write_text("[price]\nrates = { USD = 1.0, EUR = 1.1 }\n")
    with_rates = decide(listing(price=10.0, currency="EUR"), [cand()], SELLERS, load_policy(path))
    assert with_rates.verdict == FLAGGED and with_rates.price_ratio == pytest.approx(0.11)


def test_missing_facts_are_noted_and_never_count_as_inconsistent():
    facts = Listing(listing_id="L", seller_id=None, title="", price=None, currency=None, image="x.jpg",
                    notes=[("seller_missing", "no seller id given; seller not checked")])
    decision = decide(facts, [cand()], SELLERS, POLICY)
    assert decision.verdict == CLEAR and decision.seller_authorized is None
    assert codes(decision) == {"price_missing": 0.0, "seller_missing": 0.0}
    unreadable = decide(Listing(listing_id="L", notes=[("price_unreadable", "price 'abc' is not a number")]),
                        [cand()], SELLERS, POLICY)
    assert codes(unreadable) == {"price_unreadable": 0.0}  # said once, not also as a missing price
    no_currency = decide(listing(currency=None), [cand()], SELLERS, POLICY)
    assert codes(no_currency) == {"currency_missing": 0.0}
    no_catalogue_price = decide(listing(), [cand(price=None)], SELLERS, POLICY)
    assert codes(no_catalogue_price) == {"catalogue_price_missing": 0.0}
    unknown_brand = decide(listing(seller="anyone"), [cand(brand="Nobody")], SELLERS, POLICY)
    assert unknown_brand.verdict == CLEAR and unknown_brand.seller_authorized is None
    assert codes(unknown_brand) == {"sellers_not_declared": 0.0}


def test_an_overflowing_price_ratio_is_a_remark_not_a_finding():
    decision = decide(listing(price=1e308), [cand(price=1e-300)], SELLERS, POLICY)
    assert decision.price_ratio is None and codes(decision) == {"price_out_of_range": 0.0}


def test_no_candidates_is_clear():
    decision = decide(listing(), [], SELLERS, POLICY)
    assert decision.verdict == CLEAR and decision.brand is None and decision.visual_state == "no_match"


def test_a_weight_of_zero_keeps_a_finding_as_a_remark_without_flagging(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[score]\nseller_weight = 0\n")
    decision = decide(listing(seller="rogue"), [cand()], SELLERS, load_policy(path))
    assert decision.verdict == CLEAR and codes(decision) == {"seller_not_authorised": 0.0}
    assert decision.score == 0.0


@pytest.mark.parametrize(
    "title, expected",
    [
        ("Aurelio bag REPLICA", ["replica"]),
        ("AAA quality 1:1 mirror quality", ["aaa", "1:1", "mirror quality"]),
        ("super-copy handbag", ["super copy", "copy"]),
        ("rep1ica watch", ["replica"]),
        ("ＲＥＰＬＩＣＡ", ["replica"]),
        ("Replicated design? no: genuine leather", []),
        ("like Aurelio, great value", []),
        ("", []),
    ],
)
def test_title_cues(title, expected):
    assert find_cues(title, POLICY.cues) == expected


def test_extra_cues_extend_the_defaults(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[title]\nextra_cues = ["vintage style"]\n')
    cues = load_policy(path).cues
    assert find_cues("Vintage Style bag", cues) == ["vintage style"] and "replica" in cues


@pytest.mark.parametrize(
    "text, message",
    [
        ("[match]\nthreshold = 2\n", "match.threshold must be a number between 0 and 1"),
        ("[price]\nmin_price_ratio = 'half'\n", "price.min_price_ratio"),
        ("[price]\nrates = { USD = -1 }\n", "price.rates"),
        ("[title]\ncues = [1]\n", "title.cues"),
        ("[nonsense]\nx = 1\n", "unknown section"),
        ('[brands."B"]\ncolour = 1\n', "knows threshold and min_price_ratio"),
        ("not = [toml", "not valid TOML"),
    ],
)
def test_bad_policy_files_are_clear_errors(tmp_path, text, message):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        load_policy(path)


def test_missing_policy_file_is_clear(tmp_path):
    with pytest.raises(UserError, match="cannot read policy file"):
        load_policy(tmp_path / "absent.toml")


def test_combine_prefers_flagged_then_error_then_clear():
    flagged = Decision(listing_id="L", verdict=FLAGGED, score=0.5, image="a.jpg", similarity=0.9)
    clear = Decision(listing_id="L", verdict=CLEAR, score=0.1, image="b.jpg", similarity=0.4)
    broken = error_decision(Listing(listing_id="L", image="c.jpg"), "image file not found: c.jpg", "missing_file")
    assert broken.visual_state == ERROR and broken.error_code == "missing_file"
    assert combine([clear, broken, flagged]).verdict == FLAGGED
    both = combine([clear, broken])
    assert both.verdict == ERROR and both.photos == 2
    mixed = combine([clear, flagged, broken])
    assert {"photos_unreadable", "best_photo"} <= set(codes(mixed))
    assert mixed.reasons[-len(mixed.findings):] == [f.text for f in mixed.findings]
    assert combine([clear]).verdict == CLEAR


def test_conflicting_rows_are_noted():
    a = Decision(listing_id="L", verdict=CLEAR, seller_id="s1", price=10.0, currency="USD", image="a.jpg")
    b = Decision(listing_id="L", verdict=CLEAR, seller_id="s2", price=10.0, currency="USD", image="b.jpg")
    assert "rows_disagree" in codes(combine([a, b]))


def test_geometry_confirms_a_match_the_similarity_missed():
    decision = decide(listing(price=10.0), [Candidate(brand="Aurelio", product_id="AUR-1", similarity=0.45,
                      price=100.0, currency="USD", calibrated_threshold=0.7, inliers=12, sharpness=0.9)],
                      SELLERS, POLICY)
    assert decision.verdict == FLAGGED and decision.visual_match and decision.inliers == 12
    assert decision.visual_state == "copy"


@pytest.mark.parametrize("inliers, alignment, sharpness, residual, state", [
    (60, 0.9, 0.95, 0.2, "copy"),        # the catalogue photo, edited: its edges on the photo's to the pixel
    (60, 0.9, 0.65, 0.3, "copy"),        # blurred edges, but the keypoints fit a rigid map exactly
    (60, 0.9, 0.65, 1.6, "product"),     # a phone photo: many keypoints, but neither exact
    (6, 0.97, 0.6, 1.2, "product"),      # few keypoints with the outline in place: still a new photo
    (40, 0.9, None, None, "product"),    # nothing measured: not called a copy
])
def test_copy_means_the_catalogue_photo_edited_however_many_keypoints_a_new_photo_has(
        inliers, alignment, sharpness, residual, state):
    photo = Candidate(brand="Aurelio", product_id="AUR-1", similarity=0.6, price=100.0, currency="USD",
                      calibrated_threshold=0.7, inliers=inliers, alignment=alignment, sharpness=sharpness,
                      residual=residual)
    decision = decide(listing(price=10.0), [photo], SELLERS, POLICY)
    assert (decision.verdict, decision.visual_state) == (FLAGGED, state)  # the state words it; both flag
    assert (decision.matches[0].sharpness, decision.matches[0].residual) == (sharpness, residual)
    assert ("a new photo of it" in decision.reasons[0]) == (state == "product")


def test_geometry_vetoes_a_look_alike_unless_the_similarity_is_strong():
    def with_inliers(similarity, inliers):
        return [Candidate(brand="Aurelio", product_id="AUR-1", similarity=similarity, price=100.0,
                          currency="USD", calibrated_threshold=0.7, inliers=inliers)]

    vetoed = decide(listing(price=10.0), with_inliers(0.75, 1), SELLERS, POLICY)
    assert vetoed.verdict == CLEAR and not vetoed.visual_match and vetoed.visual_state == "vetoed"
    strong = decide(listing(price=10.0), with_inliers(0.9, 1), SELLERS, POLICY)
    assert strong.verdict == FLAGGED and strong.visual_state == "similar"
    assert decide(listing(price=10.0), with_inliers(0.75, 3), SELLERS, POLICY).visual_state == "similar"
    unchecked = decide(listing(price=10.0), with_inliers(0.75, None), SELLERS, POLICY)
    assert unchecked.verdict == FLAGGED and unchecked.visual_state == "unverified"


def aligned(similarity, inliers, alignment):
    return [Candidate(brand="Aurelio", product_id="AUR-1", similarity=similarity, price=100.0, currency="USD",
                      calibrated_threshold=0.7, inliers=inliers, alignment=alignment, sharpness=0.9)]


def test_keypoints_whose_outline_does_not_line_up_are_a_look_alike_not_a_copy():
    # Another colour variant of the design: 15 keypoints agree, but once aligned only 60% of the
    # reference's outline is in the photo.
    lookalike = decide(listing(price=10.0), aligned(0.9, 15, 0.6), SELLERS, POLICY)
    assert lookalike.verdict == CLEAR and not lookalike.visual_match
    assert lookalike.visual_state == "lookalike" and lookalike.alignment == 0.6
    assert decide(listing(price=10.0), aligned(0.9, 15, 0.8), SELLERS, POLICY).verdict == FLAGGED
    # overwhelming keypoint evidence stands even where a caption hides part of the outline
    assert decide(listing(price=10.0), aligned(0.9, 40, 0.6), SELLERS, POLICY).verdict == FLAGGED
    # without a fitted layout there is no outline to judge, and the old rules apply
    assert decide(listing(price=10.0), aligned(0.75, 3, None), SELLERS, POLICY).verdict == FLAGGED


def test_few_keypoints_with_the_whole_outline_in_place_confirm_a_copy():
    # a small, blurred copy: 5 keypoints and a similarity below the threshold, but its whole outline
    confirmed = decide(listing(price=10.0), aligned(0.5, 5, 0.97), SELLERS, POLICY)
    assert confirmed.verdict == FLAGGED and confirmed.visual_state == "copy"
    assert decide(listing(price=10.0), aligned(0.5, 5, 0.9), SELLERS, POLICY).verdict == CLEAR
    assert decide(listing(price=10.0), aligned(0.5, 4, 0.97), SELLERS, POLICY).verdict == CLEAR


def test_a_confirmed_candidate_beats_a_higher_similarity():
    candidates = [cand(similarity=0.80, threshold=0.7, product="AUR-1"),
                  Candidate(brand="Aurelio", product_id="AUR-2", similarity=0.72, price=100.0, currency="USD",
                            calibrated_threshold=0.7, inliers=30, residual=0.3)]
    decision = decide(listing(price=10.0), candidates, SELLERS, POLICY)
    assert decision.product_id == "AUR-2"
    assert [m.product_id for m in decision.matches] == ["AUR-2", "AUR-1"]  # ranked as the policy prefers
    assert decision.matches[0].inliers == 30 and decision.matches[1].inliers is None
    assert [m.visual_state for m in decision.matches] == ["copy", "unverified"]


def test_matches_put_visual_matches_before_higher_raw_similarity():
    candidates = [cand(similarity=0.80, threshold=0.85, product="AUR-1"),
                  cand(similarity=0.78, threshold=0.60, brand="Brightwell", product="BRI-1")]
    decision = decide(listing(), candidates, SELLERS, POLICY)
    assert [m.product_id for m in decision.matches] == ["BRI-1", "AUR-1"]


def test_among_confirmed_candidates_the_most_keypoints_win_over_the_larger_margin():
    # An authorised reseller's photo of brand A's product also confirms a look-alike product of
    # brand B, whose lower threshold gives it the larger margin: the decision must be about the
    # product the photo shares more keypoints with, and so stay clear.
    own = Candidate(brand="Aurelio", product_id="AUR-1", similarity=0.97, price=100.0, currency="USD",
                    calibrated_threshold=0.73, inliers=40)
    lookalike = Candidate(brand="Brightwell", product_id="BRI-1", similarity=0.96, price=100.0, currency="USD",
                          calibrated_threshold=0.70, inliers=32)
    decision = decide(listing(price=95.0, seller="auth-1"), [lookalike, own],
                      {**SELLERS, "Brightwell": {"bri-seller"}}, POLICY)
    assert decision.product_id == "AUR-1"
    assert decision.verdict == CLEAR


# --- fuzzing: any facts and candidates give a well-formed decision, never an exception --------

TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["Aurelio replica", "AAA copy 1:1", "<script>", "=1+1"]))
PRICE = st.one_of(st.none(), st.floats(min_value=0, max_value=1e9), st.floats())
CANDIDATE = st.builds(
    Candidate,
    brand=st.sampled_from(["Aurelio", "Bellmont", ""]),
    product_id=st.text(max_size=8),
    similarity=st.floats(min_value=-1.0, max_value=1.0) | st.just(float("nan")),
    price=PRICE,
    currency=st.sampled_from([None, "USD", "EUR", ""]),
    title=TEXT,
    calibrated_threshold=st.floats(min_value=0, max_value=1),
    inliers=st.one_of(st.none(), st.integers(min_value=0, max_value=10_000)),
    alignment=st.one_of(st.none(), st.floats(min_value=0, max_value=1)),
)
LISTING = st.builds(
    Listing,
    listing_id=st.text(min_size=1, max_size=10),
    seller_id=st.one_of(st.none(), st.sampled_from(["auth-1", "rogue"]), st.text(max_size=10)),
    title=TEXT,
    price=PRICE,
    currency=st.sampled_from([None, "USD", "EUR", "usd"]),
    image=st.just("x.jpg"),
)


def well_formed(decision: Decision) -> None:
    assert decision.verdict in (FLAGGED, CLEAR, ERROR)
    assert 0.0 <= decision.score <= 1.0
    assert decision.reasons and all(isinstance(r, str) for r in decision.reasons)
    assert (decision.verdict == FLAGGED) <= decision.visual_match
    assert decision.visual_state in VISUAL_STATES and decision.visual_match == (decision.visual_state in MATCHING)
    assert all(f.code in FINDINGS and 0.0 <= f.weight <= 1.0 for f in decision.findings)
    if decision.verdict == FLAGGED:
        assert any(f.weight > 0 for f in decision.findings)
    record = json.dumps(decision.as_record(), allow_nan=False)  # decisions.jsonl stays strict JSON
    assert Decision.from_record(json.loads(record)).as_record() == json.loads(record)


@settings(max_examples=500, deadline=None)
@given(facts=LISTING, candidates=st.lists(CANDIDATE, max_size=5),
       authorized=st.dictionaries(st.sampled_from(["Aurelio", "Bellmont"]), st.sets(st.text(max_size=6)), max_size=2))
def test_fuzzed_facts_and_candidates_give_a_well_formed_decision(facts, candidates, authorized):
    decision = decide(facts, candidates, authorized, POLICY)
    well_formed(decision)
    assert decision.verdict != ERROR


@settings(max_examples=200, deadline=None)
@given(facts=st.lists(LISTING, min_size=1, max_size=4), candidates=st.lists(CANDIDATE, max_size=3),
       broken=st.lists(st.booleans(), min_size=4, max_size=4))
def test_fuzzed_photos_of_one_listing_combine_into_one_decision(facts, candidates, broken):
    parts = [error_decision(f, "image file not found", "missing_file") if bad else decide(f, candidates, SELLERS, POLICY)
             for f, bad in zip(facts, broken)]
    combined = combine(parts)
    well_formed(combined)
    assert combined.photos == len(parts)
    verdicts = {p.verdict for p in parts}  # any flagged photo flags it, else any unreadable one makes an error
    assert combined.verdict == (FLAGGED if FLAGGED in verdicts else ERROR if ERROR in verdicts else CLEAR)


# --- the product path: a seller's own new photo ----------------------------------------------


def new_photo(product="AUR-1", similarity=0.55, inliers=6, alignment=0.6, unique=6, needs=5):
    """A candidate as a new photo of a product leaves it: a similarity below the copy threshold,
    a handful of keypoints, an outline that does not line up."""
    return Candidate(brand="Aurelio", product_id=product, similarity=similarity, price=100.0, currency="USD",
                     calibrated_threshold=0.8, product_inliers=needs, inliers=inliers, alignment=alignment,
                     unique=unique)


def test_a_new_photo_with_the_brands_product_count_of_keypoints_shows_the_product():
    decision = decide(listing(price=10.0), [new_photo()], SELLERS, POLICY)
    assert decision.verdict == FLAGGED and decision.visual_state == "product" and decision.visual_match
    assert [f.code for f in decision.findings if f.weight > 0] == ["price_below_ratio"]
    # keypoints unique to the product count as much as its plain inliers
    assert decide(listing(price=10.0), [new_photo(inliers=4, unique=5)], SELLERS, POLICY).visual_state == "product"
    # under the brand's count, and under the copy threshold, it is not a match
    assert decide(listing(price=10.0), [new_photo(inliers=4, unique=4)], SELLERS, POLICY).visual_state == "no_match"
    # a brand whose impostors reach more keypoints needs more
    assert decide(listing(price=10.0), [new_photo(needs=9)], SELLERS, POLICY).visual_state == "no_match"
    # an index built before the product path (no calibrated count) keeps the copy rules
    assert decide(listing(price=10.0), [new_photo(needs=None)], SELLERS, POLICY).visual_state == "no_match"


def test_at_copy_counts_the_outline_still_vetoes_a_look_alike():
    lookalike = decide(listing(price=10.0), [new_photo(similarity=0.9, inliers=12, alignment=0.6, unique=12)],
                       SELLERS, POLICY)
    assert lookalike.visual_state == "lookalike" and lookalike.verdict == CLEAR


def test_the_policy_can_turn_the_product_path_off_or_fix_its_count(tmp_path):
    off = tmp_path / "off.toml"
    off.write_text("[product]\nenabled = false\n")
    assert decide(listing(price=10.0), [new_photo()], SELLERS, load_policy(off)).visual_state == "no_match"
    fixed = tmp_path / "fixed.toml"
    fixed.write_text("[product]\ninliers = 7\n")
    assert decide(listing(price=10.0), [new_photo()], SELLERS, load_policy(fixed)).visual_state == "no_match"
    assert decide(listing(price=10.0), [new_photo(unique=7)], SELLERS, load_policy(fixed)).visual_state == "product"
    bad = tmp_path / "bad.toml"
    bad.write_text("[product]\ninliers = 0\n")
    with pytest.raises(UserError, match="product.inliers must be a number between 1"):
        load_policy(bad)


def test_among_siblings_the_keypoints_unique_to_one_product_decide_which_it_is():
    # both siblings share the brand's logo, so their plain keypoint counts are close, and the one
    # with more of them is not the product shown
    siblings = [new_photo("AUR-1", inliers=7, unique=1), new_photo("AUR-2", inliers=6, unique=6)]
    decision = decide(listing(price=10.0), siblings, SELLERS, POLICY)
    assert decision.product_id == "AUR-2" and [m.product_id for m in decision.matches] == ["AUR-2", "AUR-1"]
    assert [m.unique for m in decision.matches] == [6, 1]



def sibling(product, unique, price, colour=0.8, inliers=40):
    return replace(cand(product=product, price=price), inliers=inliers, alignment=0.95, unique=unique, colour=colour)


def test_an_authorised_seller_is_not_accused_over_a_pricier_siblings_price():
    # the seller sells the 40.00 product at its price; the photo ranks its 100.00 sibling first,
    # but the keypoints do not single one out (12 against 15 unique)
    siblings = [sibling("AUR-1", 15, 100.0), sibling("AUR-2", 12, 40.0)]
    decision = decide(listing(price=40.0), siblings, SELLERS, POLICY)
    assert (decision.verdict, decision.product_id) == (CLEAR, "AUR-1")
    assert decision.plausible == ["AUR-1", "AUR-2"] and decision.price_ratio == 1.0
    assert codes(decision) == {"identity_uncertain": 0.0}
    assert "AUR-1, AUR-2" in next(f.text for f in decision.findings if f.code == "identity_uncertain")
    # below half of the cheapest it is still too cheap, and the finding names the one compared with
    cheap = decide(listing(price=15.0), siblings, SELLERS, POLICY)
    assert cheap.verdict == FLAGGED and cheap.price_ratio == 0.375
    assert "of AUR-2, the cheapest of the 2 products" in next(f.text for f in cheap.findings
                                                             if f.code == "price_below_ratio")


def test_a_sibling_the_keypoints_rule_out_does_not_soften_the_price():
    # 4 unique keypoints against 20: under colour_ratio (0.3), the photo is AUR-1
    siblings = [sibling("AUR-1", 20, 100.0), sibling("AUR-2", 4, 40.0)]
    decision = decide(listing(price=40.0), siblings, SELLERS, POLICY)
    assert decision.verdict == FLAGGED and decision.plausible == ["AUR-1"] and decision.price_ratio == 0.4
    assert "identity_uncertain" not in codes(decision)
    # another brand's product is never a sibling, nor is a sibling that is no visual match
    other = replace(sibling("BOR-1", 19, 40.0), brand="Borel")
    unlike = replace(sibling("AUR-3", 19, 40.0), similarity=0.3, inliers=2, alignment=None, unique=0)
    assert decide(listing(price=40.0), [sibling("AUR-1", 20, 100.0), other, unlike], SELLERS,
                  POLICY).plausible == ["AUR-1"]
    # another catalogue photo of the same product (its back) is the same product, not a sibling
    back = sibling("AUR-1", 18, 100.0)
    alone = decide(listing(price=40.0), [sibling("AUR-1", 20, 100.0), back], SELLERS, POLICY)
    assert alone.plausible == ["AUR-1"] and "identity_uncertain" not in codes(alone)


def test_siblings_told_apart_by_likeness_alone_are_all_plausible():
    # no keypoints: similarity alone ranks them, and it singles out neither
    siblings = [cand(similarity=0.92, price=100.0), cand(similarity=0.90, price=45.0, product="AUR-2")]
    decision = decide(listing(price=45.0), siblings, SELLERS, POLICY)
    assert decision.verdict == CLEAR and decision.plausible == ["AUR-1", "AUR-2"]


def test_a_plausible_sibling_without_a_catalogue_price_withholds_the_comparison():
    siblings = [sibling("AUR-1", 15, 100.0), sibling("AUR-2", 12, None)]
    decision = decide(listing(price=10.0), siblings, SELLERS, POLICY)
    assert decision.verdict == CLEAR and decision.price_ratio is None
    assert codes(decision) == {"identity_uncertain": 0.0, "price_withheld": 0.0}
    assert "AUR-2" in next(f.text for f in decision.findings if f.code == "price_withheld")
    # a rogue seller is still flagged: the seller does not depend on which sibling it is
    assert decide(listing(price=10.0, seller="rogue"), siblings, SELLERS, POLICY).verdict == FLAGGED

# --- brand marks ---------------------------------------------------------------------------------

MARKED = frozenset({"Aurelio", "Borel"})
SELLERS_AB = {"Aurelio": {"auth-1"}, "Borel": {"auth-b"}}


def seen(brand, inliers=9, box=(0.2, 0.3, 0.4, 0.5)):
    return Sighting(brand, f"marks/{brand.lower()}.png", inliers, False, box)


def test_a_brands_mark_makes_the_photo_its_product_even_below_its_threshold():
    candidates = [cand(similarity=0.9, brand="Borel", product="BOR-1"), cand(similarity=0.6, product="AUR-1")]
    decision = decide(listing(seller="rogue"), candidates, SELLERS_AB, POLICY, [seen("Aurelio")], MARKED)
    assert (decision.verdict, decision.visual_state, decision.brand) == (FLAGGED, "mark", "Aurelio")
    assert decision.marks == [{"brand": "Aurelio", "mark": "marks/aurelio.png", "found_by": "keypoints", "inliers": 9,
                               "inverted": False, "box": [0.2, 0.3, 0.4, 0.5], "shape_score": None,
                               "read_score": None}]
    assert "marks/aurelio.png" in decision.reasons[0] and "x 20%–40%" in decision.reasons[0]
    # the brand's own authorised seller showing its mark is authorised
    own = decide(listing(seller="auth-1"), candidates, SELLERS_AB, POLICY, [seen("Aurelio")], MARKED)
    assert (own.verdict, own.visual_state, own.brand, own.seller_authorized) == (CLEAR, "mark", "Aurelio", True)
    # a product unlike any the brand sells is not its product, mark or not
    far = decide(listing(seller="rogue"), [cand(similarity=0.3)], SELLERS_AB, POLICY, [seen("Aurelio")], MARKED)
    assert far.visual_state == "no_match" and far.verdict == CLEAR


def test_a_brands_name_read_in_the_photo_counts_as_its_mark_unless_the_policy_says_not(tmp_path):
    named = Sighting("Aurelio", "AURELIO", 0, False, (0.1, 0.2, 0.5, 0.3), 0.93, "word")
    candidates = [cand(similarity=0.9, brand="Borel", product="BOR-1"), cand(similarity=0.65, product="AUR-1")]
    decision = decide(listing(seller="rogue"), candidates, SELLERS_AB, POLICY, [named], MARKED)
    assert (decision.verdict, decision.visual_state, decision.brand) == (FLAGGED, "mark", "Aurelio")
    assert decision.marks[0]["found_by"] == "word" and decision.marks[0]["read_score"] == 0.93
    assert "Aurelio's name, read as 'AURELIO' (confidence 0.93" in decision.reasons[0]
    uncounted = tmp_path / "p.toml"
    uncounted.write_text("[marks]\nwords = false\n")
    ignored = decide(listing(seller="rogue"), candidates, SELLERS_AB, load_policy(uncounted), [named], MARKED)
    assert (ignored.brand, ignored.visual_state) == ("Borel", "mark_missing")


def test_another_brands_mark_means_it_is_not_this_brands_product():
    copy = replace(cand(similarity=0.95, brand="Borel", product="BOR-1"), inliers=40, alignment=0.99)
    decision = decide(listing(seller="rogue"), [copy], SELLERS_AB, POLICY, [seen("Aurelio")], MARKED)
    assert (decision.verdict, decision.visual_state) == (CLEAR, "other_mark")
    assert "Aurelio's registered mark" in decision.reasons[0]


def test_a_marked_brands_product_without_its_mark_does_not_match_unless_the_policy_says_so(tmp_path):
    copy = replace(cand(similarity=0.95), inliers=40, alignment=0.99, sharpness=0.97)
    decision = decide(listing(seller="rogue"), [copy], SELLERS_AB, POLICY, [], MARKED)
    assert (decision.verdict, decision.visual_state) == (CLEAR, "mark_missing")
    unmarked = decide(listing(seller="rogue"), [copy], SELLERS_AB, POLICY, [], frozenset({"Borel"}))
    assert (unmarked.verdict, unmarked.visual_state) == (FLAGGED, "copy")
    lenient = tmp_path / "p.toml"
    lenient.write_text("[marks]\nrequired = false\n")
    kept = decide(listing(seller="rogue"), [copy], SELLERS_AB, load_policy(lenient), [], MARKED)
    assert (kept.verdict, kept.visual_state) == (FLAGGED, "copy")
    off = tmp_path / "off.toml"
    off.write_text("[marks]\nenabled = false\n")
    ignored = decide(listing(seller="rogue"), [copy], SELLERS_AB, load_policy(off), [seen("Borel")], MARKED)
    assert (ignored.verdict, ignored.visual_state) == (FLAGGED, "copy")


@pytest.mark.parametrize("title, brand, expected", [
    ("N1ke air max", "Nike", "n1ke"), ("adidass trainers", "Adidas", "adidass"), ("Addidas style", "Adidas", "addidas"),
    ("g-u-c-c-i bag", "Gucci", "g-u-c-c-i"), ("G U C C I belt", "Gucci", "g u c c i"), ("r3d bull cap", "Red Bull", "r3d bull"),
    ("Nike air max", "Nike", None), ("GUCCI bag", "Gucci", None), ("good idea mug", "Ikea", None),
    ("Red Bull cap", "Red Bull", None), ("plain mug", "Spotify", None), ("", "Nike", None),
])
def test_evasive_spellings_of_a_brand_in_titles(title, expected, brand):
    assert misspelt_brand(title, brand) == expected


def test_an_evasive_brand_spelling_in_the_title_is_a_finding():
    decision = decide(listing(title="4urelio bag"), [cand()], SELLERS, POLICY)
    assert decision.verdict == FLAGGED and codes(decision) == {"brand_misspelt": 0.7}
    assert decide(listing(title="Aurelio bag"), [cand()], SELLERS, POLICY).verdict == CLEAR


def test_colour_puts_the_sibling_whose_colours_agree_first(tmp_path):
    def sibling(product, unique, colour):
        return replace(cand(product=product), inliers=40, alignment=0.95, unique=unique, colour=colour)

    more_keypoints, right_colour = sibling("AUR-1", 20, 0.70), sibling("AUR-2", 16, 0.92)
    assert decide(listing(), [more_keypoints, right_colour], SELLERS, POLICY).product_id == "AUR-2"
    path = tmp_path / "p.toml"
    path.write_text("[product]\ncolour_weight = 0.0\n")
    assert decide(listing(), [more_keypoints, right_colour], SELLERS, load_policy(path)).product_id == "AUR-1"
    far_behind = sibling("AUR-3", 5, 0.99)  # under colour_ratio (0.3) of the first's unique keypoints: colour cannot lift it
    assert decide(listing(), [more_keypoints, far_behind], SELLERS, POLICY).product_id == "AUR-1"
    unmeasured = sibling("AUR-4", 19, None)
    assert decide(listing(), [more_keypoints, unmeasured], SELLERS, POLICY).product_id == "AUR-1"


def test_the_words_read_in_the_photo_name_one_of_the_siblings_in_doubt(tmp_path):
    # keypoints leave both (12 against 15 unique); the photo reads "lemon", printed on AUR-2 alone
    mango = replace(sibling("AUR-1", 15, 100.0), words=["acme", "mango"])
    lemon = replace(sibling("AUR-2", 12, 40.0), words=["acme", "lemon"])
    decision = decide(listing(price=15.0), [mango, lemon], SELLERS, POLICY, words_read=["acme", "lemon"])
    assert (decision.product_id, decision.plausible, decision.verdict) == ("AUR-2", ["AUR-2"], FLAGGED)
    assert decision.price_ratio == 0.375 and decision.matches[0].product_id == "AUR-2"
    assert "identified_by_words" in codes(decision) and "identity_uncertain" not in codes(decision)
    assert "(lemon)" in next(f.text for f in decision.findings if f.code == "identified_by_words")
    # the brand's name is on both: it names neither; nor do words when the policy turns them off
    assert decide(listing(price=15.0), [mango, lemon], SELLERS, POLICY, words_read=["acme"]).plausible == ["AUR-1", "AUR-2"]
    off = tmp_path / "p.toml"
    off.write_text("[product]\nwords = false\n")
    assert decide(listing(price=15.0), [mango, lemon], SELLERS, load_policy(off),
                  words_read=["lemon"]).plausible == ["AUR-1", "AUR-2"]
