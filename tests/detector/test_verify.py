"""Geometric verification: copies keep a rigid layout of keypoints and, once aligned, the
reference's outline; other products and look-alikes do not."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from detector.demo import draw_product
from detector.verify import (
    EMPTY, extract, extract_query, fit_layout, mirrored, pack, unpack, verify_candidates, verify_pair,
)


def count_inliers(query, reference):
    """Distinct reference keypoints in the best similarity layout."""
    return fit_layout(query, reference)[0]


def recompress(image, quality=40):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def staged(image):
    """The product shrunk and pasted onto another picture, as sellers stage photos."""
    scene = draw_product(777, size=480)
    scene.paste(image.resize((220, 220)), (150, 120))
    return scene


def test_edited_copies_keep_many_matching_keypoints():
    original = draw_product(11)
    reference = extract(original)
    assert len(reference) > 20
    for edit in (lambda im: im.crop((30, 30, 290, 290)), lambda im: im.resize((200, 200)),
                 lambda im: im.rotate(12, expand=True, fillcolor="white"), recompress, staged):
        assert count_inliers(extract(edit(original)), reference) >= 8


def test_other_products_keep_few_keypoints_and_none_of_the_outline():
    reference = extract(draw_product(11))
    for seed in (12, 13, 14, 15):
        outcome = verify_pair(extract_query(draw_product(seed)), reference)
        assert outcome.inliers < 8  # chance keypoints...
        # ...in no layout at all (under three: no outline is measured), or one that misses the shape
        assert (outcome.alignment is None) == (outcome.inliers < 3)
        assert outcome.alignment is None or outcome.alignment < 0.6


def test_deterministic_whatever_was_verified_before():
    # an outcome must not depend on the pairs fitted before it (RANSAC, matcher or cache state),
    # or two scans (or the local and Ray engines) would decide differently
    query, reference = extract_query(staged(draw_product(5))), extract(draw_product(5))
    first = verify_pair(query, reference)
    for seed in range(6):
        verify_pair(extract_query(draw_product(seed + 20)), extract(draw_product(seed + 30)))
    assert verify_pair(query, reference) == first


def test_featureless_and_tiny_pictures_give_nothing():
    assert len(extract(Image.new("RGB", (300, 300), "white"))) == 0
    assert extract(Image.new("RGB", (200, 2))) is EMPTY  # a sliver: nothing to look at
    assert len(extract(Image.new("RGB", (8, 8)))) == 0
    assert count_inliers(EMPTY, extract(draw_product(1))) == 0


def test_pack_round_trip():
    sets = [extract(draw_product(1)), EMPTY, extract(draw_product(2))]
    back = unpack(pack(sets))
    assert [len(f) for f in back] == [len(f) for f in sets]
    assert (back[2].descriptors == sets[2].descriptors).all() and (back[0].points == sets[0].points).all()
    assert back[2].thumbnail.shape == sets[2].thumbnail.shape and (back[2].thumbnail == sets[2].thumbnail).all()
    assert back[1].thumbnail.size == 0
    assert unpack(pack([])) == []


def test_mirrored_listings_are_verified_through_their_mirror_image():
    reference = extract(draw_product(11))
    flipped = verify_pair(extract_query(ImageOps.mirror(draw_product(11))), reference)
    assert flipped.inliers >= 8 and flipped.alignment > 0.95  # the outline is checked mirrored too
    assert verify_pair(extract_query(draw_product(12)), reference).inliers < 3
    assert verify_pair(extract_query(Image.new("RGB", (300, 300), "white")), reference) is None


def perspective(image, shift=0.12):
    """The photo as taken at an angle: its corners pulled in by up to ``shift`` of its size."""
    import cv2

    pixels = np.asarray(image)
    h, w = pixels.shape[:2]
    corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    moved = corners + np.float32([[shift * w, 0], [-shift * w, shift * h], [0, 0], [0, -shift * h]])
    return Image.fromarray(cv2.warpPerspective(pixels, cv2.getPerspectiveTransform(corners, moved), (w, h),
                                               borderValue=(255, 255, 255)))


def test_copies_keep_their_outline_once_aligned_and_look_alikes_do_not():
    original = draw_product(11)
    reference = extract(original)
    for edit in (lambda im: im.crop((30, 30, 290, 290)), staged, recompress, perspective,
                 lambda im: ImageOps.grayscale(im).convert("RGB")):
        outcome = verify_pair(extract_query(edit(original)), reference)
        assert outcome.inliers >= 8 and outcome.alignment >= 0.9
    # a look-alike: the same design with three quarters changed keeps one quarter's keypoints
    # but not the outline
    lookalike = draw_product(12)
    lookalike.paste(original.crop((0, 0, 160, 160)), (0, 0))
    outcome = verify_pair(extract_query(lookalike), reference)
    assert outcome.inliers >= 3 and outcome.alignment < 0.75


def test_permuted_descriptors_are_the_features_of_the_mirror_image():
    photo = draw_product(11)
    own = extract(photo)
    derived = mirrored(own)
    extracted = extract(ImageOps.mirror(photo))
    # the derived set matches what extraction from the mirrored photo finds...
    matched = count_inliers(derived, extracted)
    assert matched >= 0.5 * min(len(own), len(extracted))
    # ...and the unpermuted descriptors do not
    assert count_inliers(own, extracted) < matched / 4
    assert count_inliers(EMPTY, extracted) == 0
    assert mirrored(mirrored(own)).descriptors.tolist() == own.descriptors.tolist()


def sibling(body_seed, logo_seed=1):
    """A brand's product shot: the brand's big logo on top, the product's own small picture below."""
    shot = Image.new("RGB", (320, 480), "white")
    shot.paste(draw_product(logo_seed, size=320).resize((300, 300)), (10, 10))
    shot.paste(draw_product(body_seed, size=320).resize((150, 150)), (85, 320))
    return shot


def held_up(shot):
    """The product photographed in a shop: turned, smaller, in a scene, re-compressed."""
    scene = draw_product(777, size=640)
    scene.paste(shot.rotate(8, expand=True, fillcolor=(230, 230, 230)).resize((240, 360)), (200, 140))
    return recompress(scene, 60)


def test_keypoints_unique_to_one_candidate_tell_a_product_from_its_siblings():
    for own, other in ((2, 3), (4, 5)):
        product, sibling_product = sibling(own), sibling(other)
        shown, beside = verify_candidates(extract_query(held_up(product)), [extract(product), extract(sibling_product)])
        # the shared logo alone gives the sibling a copy's worth of keypoints, whole outline and all...
        assert beside.inliers >= 8 and beside.alignment > 0.9
        # ...but only the product shown has keypoints that match it better than the other candidate
        assert shown.unique >= 10 and beside.unique <= 2
        assert verify_pair(extract_query(held_up(product)), extract(sibling_product)).inliers == beside.inliers


def recoloured(shot):
    """The same carton design in the complementary colours: the same brightness everywhere (so
    the same grey picture and keypoints), every colour opposite."""
    y, cb, cr = shot.convert("YCbCr").split()
    return Image.merge("YCbCr", (y, cb.point(lambda x: 255 - x), cr.point(lambda x: 255 - x))).convert("RGB")


def warm_light(image):
    """Shop light: a warm cast and a little less light."""
    r, g, b = image.split()
    return Image.merge("RGB", (r.point(lambda x: min(255, int(x * 0.95))), g.point(lambda x: int(x * 0.85)),
                               b.point(lambda x: int(x * 0.7))))


def test_colour_tells_apart_variants_that_share_their_layout():
    product = sibling(2)
    variant = recoloured(product)
    listed = extract_query(warm_light(held_up(product)))
    shown, other = verify_candidates(listed, [extract(product), extract(variant)])
    assert other.inliers >= shown.inliers - 2 >= 8  # the keypoints cannot tell them apart...
    assert shown.colour > 0.8 and shown.colour > other.colour + 0.15  # ...the colours can, under shop light
    listed_variant = extract_query(warm_light(held_up(variant)))
    mine, theirs = verify_candidates(listed_variant, [extract(variant), extract(product)])
    assert mine.colour > theirs.colour + 0.15
    assert unpack(pack([extract(product)]))[0].colour.tolist() == extract(product).colour.tolist()


def test_the_matched_region_is_where_the_product_lies_in_the_photo():
    product = draw_product(11, size=400)
    photo = staged(product)  # pasted at (150, 120), 220 px square, in a 480 px scene
    outcome = verify_pair(extract_query(photo), extract(product))
    expected = [[150 / 480, 120 / 480], [370 / 480, 120 / 480], [370 / 480, 340 / 480], [150 / 480, 340 / 480]]
    assert outcome.region is not None
    assert np.abs(np.array(outcome.region) - np.array(expected)).max() < 0.03


def test_matches_found_by_the_first_stage_are_reused_and_give_the_same_outcome(monkeypatch):
    # The screen counts a photo's layout against its candidates; the full verification that
    # follows must not match the same descriptors again, and must decide exactly as it would alone.
    import detector.verify as verify

    photo = staged(draw_product(5))
    references = [extract(draw_product(5)), extract(draw_product(6))]
    alone = verify_candidates(extract_query(photo), references)
    calls = []
    real = verify._nearest_two
    monkeypatch.setattr(verify, "_nearest_two", lambda *a, **k: calls.append(1) or real(*a, **k))
    query = extract_query(photo)
    counted = [max(query.layout(r, False, homography=False)[0], query.layout(r, True, homography=False)[0])
               for r in references]
    assert counted[0] >= 8 and len(calls) == 4
    assert verify_candidates(query, references) == alone
    assert len(calls) == 4 + len(references)  # only the RootSIFT matches of the unique test are new
    assert counted[0] == alone[0].inliers


def test_counts_only_gives_the_same_counts_as_the_full_verification():
    # Index builds calibrate keypoint counts on thousands of impostor pairs and need no outline,
    # colour or homography; the counts must be the ones a scan's verification would find.
    product, sibling_product = sibling(2), sibling(3)
    references = [extract(product), extract(sibling_product), extract(draw_product(31)), EMPTY]
    for shot in (held_up(product), ImageOps.mirror(perspective(product)), draw_product(32)):
        query = extract_query(shot)
        full, counted = verify_candidates(query, references), verify_candidates(query, references, counts_only=True)
        assert [(o.inliers, o.unique) if o else None for o in counted] == [(o.inliers, o.unique) if o else None for o in full]
        assert all(o.alignment is None and o.colour is None and o.region is None for o in counted if o)
    assert full[0] is not None and full[-1] is None and verify_candidates(extract_query(held_up(product)), references)[0].alignment > 0.9


def photographed(image, seed=3):
    """The product as a phone sees it: a slight perspective, a bend (a carton is not flat), the
    lens's softness and noise, on another background: nothing of the catalogue picture's pixels
    is moved as a whole."""
    rng = np.random.default_rng(seed)
    side = 480
    base = np.asarray(image.convert("RGB").resize((side, side)), np.float32)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    bend = 10.0 * np.sin(x / side * np.pi) + 5.0 * np.sin(y / 60.0)
    tilt = 1.0 + 0.08 * (y / side - 0.5)
    source_x = np.clip((x - side / 2) * tilt + side / 2 + bend, 0, side - 1)
    source_y = np.clip(y + 5.0 * np.sin(x / 50.0), 0, side - 1)
    warped = base[source_y.round().astype(int), source_x.round().astype(int)]
    warped = warped * np.linspace(0.8, 1.05, side)[None, :, None] + rng.normal(0, 6, warped.shape)
    picture = Image.fromarray(np.clip(warped, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.2))
    return recompress(picture, 70)


def test_an_edited_copy_is_exact_and_a_photographed_product_is_not():
    original = draw_product(11)
    reference = extract(original)
    for edit in (lambda im: im.crop((30, 30, 290, 290)), lambda im: im.rotate(12, expand=True, fillcolor="white"),
                 recompress, staged):
        outcome = verify_pair(extract_query(edit(original)), reference)
        assert outcome.sharpness >= 0.78 or outcome.residual <= 0.4, outcome
    photo = verify_pair(extract_query(photographed(original)), reference)
    assert photo.inliers >= 8  # keypoints still establish the product...
    assert photo.sharpness < 0.78 and photo.residual > 0.4, photo  # ...but not its picture, exactly
