"""Brand marks: a logo is found on a product at another size, angle, colour and polarity, with
its box; photos without it find nothing; an index registers marks, and a scan attributes photos
by them."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageOps
from typer.testing import CliRunner

from detector import Detector, UserError, build_index
from detector.cli import app
from detector.demo import draw_product
from detector.mark_shapes import SHAPE_KEYPOINTS, SHAPE_RULE, ShapeSearch, calibrate_level, photo_pixels, searched_by_shape
from detector.marks import POLARITY, find_marks, prepare_mark
from detector.verify import extract, fit_layout
from detector.matches import marked_brands, marks_key, shape_levels
from index.store import BrandEntry, ReferenceIndex, load_index
from tests.conftest import run_cli


def logo(seed: int, colour=(200, 30, 40)) -> Image.Image:
    """A mark drawn in one colour on white: a few polygons and a ring, like a simple logo."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (400, 400), "white")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        points = [tuple(p) for p in rng.uniform(60, 340, (int(rng.integers(3, 6)), 2))]
        draw.polygon(points, fill=colour)
    draw.ellipse((120, 120, 280, 280), outline=colour, width=18)
    return image


def on_product(mark: Image.Image, *, width: float, at=(0.3, 0.35), angle=0.0, invert=False,
               ink=(250, 250, 250), seed=5) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """A product photo with the mark printed on it, and the box (fractions) of the drawing."""
    scene = draw_product(seed, size=600).convert("RGB")
    shape = ImageOps.invert(mark.convert("L")).point(lambda v: 255 if v > 40 else 0)
    side = round(width * scene.width)
    shape = shape.resize((side, side)).rotate(angle, expand=True)
    colour = Image.new("RGB", shape.size, ink if invert else (30, 60, 160))
    x, y = round(at[0] * scene.width), round(at[1] * scene.height)
    if invert:  # a white mark on a dark patch of the product
        scene.paste((20, 20, 30), (x, y, x + shape.width, y + shape.height))
    scene.paste(colour, (x, y), shape)
    left, top, right, bottom = shape.getbbox()  # where the drawing itself went
    return scene, ((x + left) / 600, (y + top) / 600, (x + right) / 600, (y + bottom) / 600)


def overlap(a, b) -> float:
    """Intersection over union of two boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def search(photo: Image.Image, marks):
    return find_marks(extract(photo), marks)


def test_the_polarity_permutation_is_the_negative_photo():
    drawn = logo(1)
    plain, negative = extract(drawn), extract(ImageOps.invert(drawn))
    permuted = type(plain)(plain.points, plain.descriptors[:, POLARITY], plain.thumbnail)
    assert fit_layout(negative, plain)[0] < 4 <= fit_layout(negative, permuted)[0]


def test_a_mark_is_found_in_another_colour_size_and_angle_with_its_box():
    marks = [prepare_mark(logo(1), "Acme", "acme.png"), prepare_mark(logo(2), "Borel", "borel.png")]
    for kwargs in ({"width": 0.3}, {"width": 0.2, "angle": 25, "at": (0.5, 0.5)}):
        photo, where = on_product(logo(1), **kwargs)
        found = search(photo, marks)
        assert [s.brand for s in found] == ["Acme"], kwargs
        assert found[0].inliers >= 4 and not found[0].inverted
        assert overlap(found[0].box, where) > 0.5, (found[0].box, where)


def test_a_white_mark_on_a_dark_product_is_found_inverted():
    marks = [prepare_mark(logo(1), "Acme", "acme.png")]
    photo, where = on_product(logo(1), width=0.3, invert=True)
    found = search(photo, marks)
    assert found and found[0].brand == "Acme" and found[0].inverted
    assert overlap(found[0].box, where) > 0.5


def test_photos_without_the_mark_find_nothing():
    marks = [prepare_mark(logo(1), "Acme", "acme.png")]
    assert search(draw_product(5, size=600), marks) == []
    other, _ = on_product(logo(3), width=0.3)
    assert search(other, marks) == []
    assert search(Image.new("RGB", (300, 300), "white"), marks) == []


def test_transparent_marks_are_flattened_on_white():
    drawn = logo(1)
    alpha = ImageOps.invert(drawn.convert("L")).point(lambda v: 255 if v > 40 else 0)
    transparent = drawn.convert("RGBA")
    transparent.putalpha(alpha)
    marks = [prepare_mark(transparent, "Acme", "acme.png")]
    photo, _ = on_product(logo(1), width=0.3)
    assert [s.brand for s in search(photo, marks)] == ["Acme"]


# --- marks in the index and in a scan ------------------------------------------------------------


def write_csv(path, header, rows):
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


def two_marked_brands(root: Path) -> Path:
    """Acme and Borel, one product each whose catalogue photo carries the brand's mark, their
    marks as files (``marks.csv``), and one authorised seller each; returns ``root``."""
    for name, seed in (("acme.png", 1), ("borel.png", 2)):
        logo(seed).save(root / name)
    on_product(logo(1), width=0.3, seed=5)[0].save(root / "acme-ref.png")
    on_product(logo(2), width=0.3, seed=6)[0].save(root / "borel-ref.png")
    write_csv(root / "catalog.csv", ["brand", "product_id", "image", "price", "currency"],
              [["Acme", "ACME-1", "acme-ref.png", "100", "USD"], ["Borel", "BOR-1", "borel-ref.png", "100", "USD"]])
    write_csv(root / "authorized.csv", ["brand", "seller_id"], [["Acme", "acme-shop"], ["Borel", "borel-shop"]])
    write_csv(root / "marks.csv", ["brand", "image"], [["Acme", "acme.png"], ["Borel", "borel.png"]])
    return root


@pytest.fixture(scope="module")
def marked_shop(tmp_path_factory):
    """Two brands whose catalogue photos carry their marks, their marks as files, and listings:
    a rogue seller's new photo with Acme's mark in white on a dark patch, turned; an authorised
    Acme seller's; the same product with Borel's mark, from Borel's authorised seller; and with no
    mark at all, from a rogue seller."""
    root = two_marked_brands(tmp_path_factory.mktemp("marked"))
    on_product(logo(1), width=0.25, invert=True, angle=20, at=(0.4, 0.4), seed=5)[0].save(root / "rogue.png")
    on_product(logo(1), width=0.3, at=(0.35, 0.3), seed=5)[0].save(root / "own.png")
    on_product(logo(2), width=0.3, seed=5)[0].save(root / "other.png")
    draw_product(5, size=600).save(root / "plain.png")
    write_csv(root / "listings.csv", ["listing_id", "seller_id", "title", "price", "currency", "image"], [
        ["rogue", "someone", "mug", "20", "USD", "rogue.png"],
        ["own", "acme-shop", "Acme mug", "100", "USD", "own.png"],
        ["other", "borel-shop", "mug", "100", "USD", "other.png"],
        ["plain", "someone", "mug", "20", "USD", "plain.png"],
    ])
    return root


def test_marks_are_registered_listed_and_kept_on_a_rebuild(marked_shop, tmp_path):
    info = build_index(marked_shop / "catalog.csv", tmp_path / "idx", authorized=marked_shop / "authorized.csv",
                       marks=marked_shop / "marks.csv", device="cpu")
    index = load_index(tmp_path / "idx", load_indexes=False)
    assert [m["image"] for m in index.brands["Acme"].marks] == ["acme.png"]
    assert info.manifest["brands"]["Borel"]["marks"] == 1
    again = build_index(marked_shop / "catalog.csv", tmp_path / "idx", device="cpu")
    assert any("marks kept" in note for note in again.notes)
    assert [m["image"] for m in load_index(tmp_path / "idx", load_indexes=False).brands["Acme"].marks] == ["acme.png"]
    shown = run_cli("index", "info", str(tmp_path / "idx"))
    assert shown.returncode == 0 and "registered marks" in shown.stdout and "borel.png" in shown.stdout


def test_a_rebuild_keeps_the_marks_calibration_unless_its_inputs_change(marked_shop, tmp_path, monkeypatch):
    from detector import catalog

    shop = Path(shutil.copytree(marked_shop, tmp_path / "shop"))
    first = build_index(shop / "catalog.csv", tmp_path / "idx", marks=shop / "marks.csv", device="cpu")
    rows = {b: load_index(tmp_path / "idx", load_indexes=False).brands[b].marks for b in ("Acme", "Borel")}
    real, looked = catalog.find_marks, []
    monkeypatch.setattr(catalog, "find_marks", lambda *a: looked.append(1) or real(*a))
    again = build_index(shop / "catalog.csv", tmp_path / "idx", marks=shop / "marks.csv", device="cpu")
    assert looked == [] and again.manifest["brands"] == first.manifest["brands"]
    with open(shop / "catalog.csv", "a", newline="") as fh:  # Acme's photos change: Acme's marks are measured again
        fh.write("Acme,ACME-2,own.png,100,USD\n")
    build_index(shop / "catalog.csv", tmp_path / "idx", marks=shop / "marks.csv", device="cpu")
    assert looked
    now = {b: load_index(tmp_path / "idx", load_indexes=False).brands[b].marks for b in ("Acme", "Borel")}
    assert now["Acme"][0]["calibrated_on"] != rows["Acme"][0]["calibrated_on"]


def test_a_bad_mark_row_is_a_row_error_like_the_catalogues(marked_shop, tmp_path):
    marks = write_csv(tmp_path / "marks.csv", ["brand", "image"],
                      [["Acme", str(marked_shop / "acme.png")], ["Acme", "missing.png"], ["Zeta", "z.png"]])
    with pytest.raises(UserError) as failed:
        build_index(marked_shop / "catalog.csv", tmp_path / "idx", marks=marks, allow_outside_paths=True, device="cpu")
    assert "marks.csv line 3" in str(failed.value) and "marks.csv line 4" in str(failed.value)
    assert "'Zeta' has no products" in str(failed.value) and "marks.csv line 2" not in str(failed.value)
    info = build_index(marked_shop / "catalog.csv", tmp_path / "idx", marks=marks, allow_outside_paths=True,
                       skip_bad_rows=True, device="cpu")
    assert len(info.skipped) == 2 and info.manifest["brands"]["Acme"]["marks"] == 1


def test_a_scan_attributes_photos_by_their_marks_and_draws_the_box(marked_shop, tmp_path):
    build_index(marked_shop / "catalog.csv", tmp_path / "idx", authorized=marked_shop / "authorized.csv",
                marks=marked_shop / "marks.csv", device="cpu")
    with Detector.open(tmp_path / "idx", device="cpu", cache=False) as detector:
        detector.scan(marked_shop / "listings.csv", tmp_path / "out")
    decisions = {d["listing_id"]: d for d in map(json.loads, (tmp_path / "out" / "decisions.jsonl").open())}
    rogue = decisions["rogue"]
    assert (rogue["verdict"], rogue["brand"]) == ("flagged", "Acme")
    assert rogue["marks"][0]["brand"] == "Acme" and rogue["marks"][0]["inverted"]
    assert overlap(rogue["marks"][0]["box"], on_product(logo(1), width=0.25, invert=True, angle=20,
                                                        at=(0.4, 0.4), seed=5)[1]) > 0.5
    assert (decisions["own"]["verdict"], decisions["own"]["seller_authorized"]) == ("clear", True)
    other = decisions["other"]  # Acme's product with Borel's mark is not Acme's: Borel's seller is authorised
    assert (other["verdict"], other["brand"], other["seller_authorized"]) == ("clear", "Borel", True)
    assert (decisions["plain"]["verdict"], decisions["plain"]["visual_state"]) == ("clear", "mark_missing")
    report = (tmp_path / "out" / "report.html").read_text()
    assert report.count('class="mark-box"') == 1 and "Acme mark acme.png" in report


def test_marks_a_catalogue_never_shows_change_nothing(marked_shop, tmp_path):
    draw_product(5, size=600).save(tmp_path / "acme-plain.png")
    catalog = write_csv(tmp_path / "catalog.csv", ["brand", "product_id", "image", "price", "currency"],
                        [["Acme", "ACME-1", "acme-plain.png", "100", "USD"]])
    marks = write_csv(tmp_path / "marks.csv", ["brand", "image"], [["Acme", str(marked_shop / "acme.png")]])
    build_index(catalog, tmp_path / "idx", marks=marks, allow_outside_paths=True, device="cpu")
    assert load_index(tmp_path / "idx", load_indexes=False).brands["Acme"].marks[0]["in_references"] == 0
    with Detector.open(tmp_path / "idx", device="cpu", cache=False) as detector:
        result = detector.lookup(marked_shop / "plain.png", price=20, currency="USD", seller="someone")
    assert (result.verdict, result.visual_state, result.marks) == ("flagged", "copy", [])


# --- simple marks, found by their shape ------------------------------------------------------------


def round_mark() -> Image.Image:
    """A disc with a crescent cut out: a simple mark with few corners for SIFT."""
    image = Image.new("RGB", (1600, 1600), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((160, 160, 1440, 1440), fill=(230, 90, 30))
    draw.ellipse((600, 360, 1320, 1080), fill="white")
    draw.ellipse((760, 480, 1320, 1040), fill=(230, 90, 30))
    return image.resize((400, 400), Image.LANCZOS)  # smooth edges, as a logo file has


def printed(mark: Image.Image | None, body=(90, 140, 200), ink=(250, 250, 250), width=0.3, at=(0.35, 0.3),
            angle=0.0) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """A plain product (a coloured box on a grey backdrop) with a mark printed on it in one
    colour, and the drawing's box (fractions of the photo)."""
    scene = Image.new("RGB", (600, 600), (200, 200, 205))
    ImageDraw.Draw(scene).rounded_rectangle((120, 80, 480, 540), radius=40, fill=body)
    if mark is None:
        return scene, (0.0, 0.0, 0.0, 0.0)
    shape = ImageOps.invert(mark.convert("L")).point(lambda v: 255 if v > 40 else 0)
    shape = shape.resize((round(width * 600),) * 2).rotate(angle, expand=True)
    x, y = round(at[0] * 600), round(at[1] * 600)
    scene.paste(Image.new("RGB", shape.size, ink), (x, y), shape)
    left, top, right, bottom = shape.getbbox()
    return scene, ((x + left) / 600, (y + top) / 600, (x + right) / 600, (y + bottom) / 600)


def test_a_simple_mark_is_found_by_its_shape_in_another_colour_and_polarity():
    mark = prepare_mark(round_mark(), "Orbit", "orbit.png")
    assert len(mark.plain) < SHAPE_KEYPOINTS
    impostors = [photo_pixels(printed(logo(seed), body=body)[0])
                 for seed, body in ((2, (200, 60, 60)), (3, (60, 160, 90)), (4, (90, 140, 200)))]
    impostors.append(photo_pixels(printed(None)[0]))
    level = calibrate_level(mark, impostors)
    assert level is not None
    shapes = ShapeSearch([mark], {("Orbit", "orbit.png"): level})
    for kwargs in ({"ink": (250, 250, 250), "body": (30, 30, 40)},  # a light mark on a dark product
                   {"ink": (20, 20, 20), "body": (240, 200, 60), "angle": 15, "width": 0.25, "at": (0.4, 0.45)}):
        photo, where = printed(round_mark(), **kwargs)
        found = shapes.find(photo_pixels(photo))
        assert [s.brand for s in found] == ["Orbit"], kwargs
        assert found[0].score >= level and found[0].inliers == 0
        assert found[0].inverted == (kwargs["ink"][0] > kwargs["body"][0])
        assert overlap(found[0].box, where) > 0.5, (found[0].box, where)
    assert shapes.find(photo_pixels(printed(None, body=(30, 30, 40))[0])) == []
    assert shapes.find(photo_pixels(printed(logo(5), body=(240, 200, 60))[0])) == []


def dark_on_dark(mark: Image.Image, body=(30, 35, 30), light=(230, 210, 40)) -> tuple[Image.Image, tuple]:
    """The mark printed in the product's own colour with its pattern light (a black disc with
    yellow arcs on a black shoe): the mark's outline does not show, only what is inside it."""
    scene, _ = printed(None, body=body)
    shape = ImageOps.invert(mark.convert("L")).point(lambda v: 255 if v > 40 else 0).resize((200, 200))
    outline = Image.new("L", shape.size, 0)
    ImageDraw.Draw(outline).ellipse(shape.getbbox(), fill=255)
    scene.paste(Image.new("RGB", shape.size, light), (200, 180), outline)
    scene.paste(Image.new("RGB", shape.size, body), (200, 180), shape)
    left, top, right, bottom = shape.getbbox()
    return scene, ((200 + left) / 600, (180 + top) / 600, (200 + right) / 600, (180 + bottom) / 600)


def test_a_mark_whose_outline_vanishes_on_the_product_is_found_within_its_hull():
    mark = prepare_mark(round_mark(), "Orbit", "orbit.png")
    impostors = [photo_pixels(printed(logo(seed), body=body)[0])
                 for seed, body in ((2, (200, 60, 60)), (3, (60, 160, 90)), (4, (90, 140, 200)))]
    impostors.append(photo_pixels(printed(None)[0]))
    level, hull = calibrate_level(mark, impostors), calibrate_level(mark, impostors, hull=True)
    assert level is not None and hull is not None
    photo, where = dark_on_dark(round_mark())
    pixels = photo_pixels(photo)
    assert ShapeSearch([mark], {("Orbit", "orbit.png"): level}).find(pixels) == []  # the outline alone misses it
    shapes = ShapeSearch([mark], {("Orbit", "orbit.png"): level}, {("Orbit", "orbit.png"): hull})
    found = shapes.find(pixels)
    assert [s.brand for s in found] == ["Orbit"] and found[0].score >= hull
    assert overlap(found[0].box, where) > 0.5, (found[0].box, where)
    for negative in (printed(None, body=(30, 35, 30))[0], printed(logo(5), body=(240, 200, 60))[0]):
        assert shapes.find(photo_pixels(negative)) == []


def test_a_solid_mark_has_no_hull_search():
    solid = Image.new("RGB", (400, 400), "white")
    ImageDraw.Draw(solid).polygon([(200, 40), (360, 360), (40, 360)], fill=(200, 30, 30))
    assert calibrate_level(prepare_mark(solid, "Tri", "tri.png"), [photo_pixels(printed(None)[0])], hull=True) is None


def rings() -> Image.Image:
    """A ring with three discs on it: many keypoints in the file, none that SIFT places when the
    mark is printed small."""
    image = Image.new("RGB", (1600, 1600), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((300, 300, 1300, 1300), outline=(230, 80, 30), width=140)
    for angle in (90, 210, 330):
        x, y = 800 + 560 * np.cos(np.radians(angle)), 800 + 560 * np.sin(np.radians(angle))
        draw.ellipse((x - 190, y - 190, x + 190, y + 190), fill="white")
        draw.ellipse((x - 150, y - 150, x + 150, y + 150), fill=(230, 80, 30))
    return image.resize((400, 400), Image.LANCZOS)


def test_marks_that_keypoints_place_when_small_are_not_searched_by_shape():
    busy = prepare_mark(logo(1), "Acme", "acme.png")
    simple = prepare_mark(round_mark(), "Orbit", "orbit.png")
    ringed = prepare_mark(rings(), "Circle", "circle.png")
    assert len(busy.plain) >= SHAPE_KEYPOINTS and not searched_by_shape(busy)
    assert len(simple.plain) < SHAPE_KEYPOINTS and searched_by_shape(simple)
    assert len(ringed.plain) >= SHAPE_KEYPOINTS and searched_by_shape(ringed)
    assert not ShapeSearch([simple], {("Orbit", "orbit.png"): None})
    assert calibrate_level(simple, []) is None


def test_a_mark_with_many_keypoints_lost_when_small_is_calibrated_and_counted_by_shape(tmp_path):
    index = load_index(simple_mark_shop(tmp_path, "Circle", rings(), width=0.12), load_indexes=False)
    circle, acme = index.brands["Circle"].marks[0], index.brands["Acme"].marks[0]
    assert circle["keypoints"] >= SHAPE_KEYPOINTS and circle["shape_level"] is not None
    assert circle["in_references"] == 2 and acme["shape_level"] is None


def test_only_marks_a_brands_photos_show_are_searched_by_shape():
    entry = BrandEntry("Acme", np.zeros((1, 4), np.float32), [], marks=[
        {"image": "unseen.png", "shape_level": 0.7, "in_references": 0, "shape_rule": SHAPE_RULE},
        {"image": "seen.png", "shape_level": 0.7, "in_references": 2, "shape_rule": SHAPE_RULE},
        {"image": "busy.png", "shape_level": None, "in_references": 3, "shape_rule": SHAPE_RULE},
        {"image": "old.png", "shape_level": 0.7, "in_references": 2},  # scored by correlation alone
    ])
    index = ReferenceIndex(Path("idx"), {}, {"Acme": entry})
    assert shape_levels(index) == {("Acme", "unseen.png"): None, ("Acme", "seen.png"): 0.7, ("Acme", "busy.png"): None,
                                   ("Acme", "old.png"): None}
    assert shape_levels(index, "hull_level") == {("Acme", "unseen.png"): None, ("Acme", "seen.png"): None,
                                                 ("Acme", "busy.png"): None, ("Acme", "old.png"): None}
    assert marked_brands(index) == {"Acme"}


def test_cached_mark_searches_are_not_reused_when_the_levels_change():
    # a warm rescan against an index rebuilt with other levels must search the photos again
    def index_with(**levels):
        marks = [{"image": "seen.png", "image_sha256": "ab", "in_references": 2, **levels}]
        return ReferenceIndex(Path("idx"), {}, {"Acme": BrandEntry("Acme", np.zeros((1, 4), np.float32), [], marks=marks)})

    keys = {marks_key(index_with(shape_level=0.7)), marks_key(index_with(shape_level=0.7, hull_level=0.6)),
            marks_key(index_with(shape_level=0.75, hull_level=0.6)),
            marks_key(index_with(shape_level=0.75, hull_level=0.6, shape_rule=SHAPE_RULE))}
    assert len(keys) == 4
    assert marks_key(index_with(shape_level=0.7)) == marks_key(index_with(shape_level=0.7))


def test_a_mark_without_a_drawing_is_a_row_error_and_a_one_pixel_mark_still_builds(marked_shop, tmp_path):
    Image.new("RGB", (300, 300), "white").save(tmp_path / "blank.png")
    Image.new("RGBA", (200, 200), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.new("RGB", (1, 1), "red").save(tmp_path / "dot.png")
    marks = write_csv(tmp_path / "marks.csv", ["brand", "image"],
                      [["Acme", "blank.png"], ["Borel", "clear.png"], ["Borel", "dot.png"]])
    catalog = write_csv(tmp_path / "catalog.csv", ["brand", "product_id", "image", "price", "currency"],
                        [["Acme", "ACME-1", str(marked_shop / "acme-ref.png"), "100", "USD"],
                         ["Borel", "BOR-1", str(marked_shop / "borel-ref.png"), "100", "USD"]])
    with pytest.raises(UserError) as failed:
        build_index(catalog, tmp_path / "idx", marks=marks, allow_outside_paths=True, device="cpu")
    assert "marks.csv line 2: mark blank.png has no drawing" in str(failed.value)
    assert "marks.csv line 3: mark clear.png has no drawing" in str(failed.value)
    assert "line 4" not in str(failed.value)
    info = build_index(catalog, tmp_path / "idx", marks=marks, allow_outside_paths=True, skip_bad_rows=True,
                       device="cpu")
    assert info.manifest["brands"]["Borel"]["marks"] == 1


def simple_mark_shop(tmp_path: Path, brand: str, mark: Image.Image, width: float = 0.3) -> Path:
    """``brand`` (its mark printed at ``width`` on each of its two products) and Acme (a busy
    mark), indexed with their marks into ``tmp_path / "idx"``."""
    name = brand.lower()
    mark.save(tmp_path / f"{name}.png")
    logo(3).save(tmp_path / "acme.png")
    rows = []
    for i, body in enumerate(((90, 140, 200), (200, 80, 60))):
        printed(mark, body=body, ink=(250, 250, 250), width=width)[0].save(tmp_path / f"{name}-{i}.png")
        rows.append([brand, f"{name}-{i}", f"{name}-{i}.png", "100", "USD"])
    for i, seed in enumerate((2, 4, 6)):
        printed(logo(seed), body=(60, 160, 90))[0].save(tmp_path / f"acme-{i}.png")
        rows.append(["Acme", f"ACME-{i}", f"acme-{i}.png", "100", "USD"])
    catalog = write_csv(tmp_path / "catalog.csv", ["brand", "product_id", "image", "price", "currency"], rows)
    marks = write_csv(tmp_path / "marks.csv", ["brand", "image"], [[brand, f"{name}.png"], ["Acme", "acme.png"]])
    build_index(catalog, tmp_path / "idx", marks=marks, device="cpu")
    return tmp_path / "idx"


def test_a_simple_mark_on_every_catalogue_photo_counts_as_shown_there(tmp_path):
    # SIFT rarely places a simple mark, so counted by keypoints alone a brand whose every product
    # carries it would seem to carry none, and be judged without marks; its shape finds it
    orbit = load_index(simple_mark_shop(tmp_path, "Orbit", round_mark()), load_indexes=False).brands["Orbit"].marks[0]
    assert orbit["shape_level"] is not None and orbit["in_references"] == 2


def test_a_scan_without_the_screen_searches_the_same_photos_by_shape(tmp_path, monkeypatch):
    # On a photo nothing else ties to a product the shape correlation's sightings are mostly false,
    # so the scan with every stage (--no-screen, the CUDA default) searches by shape only the
    # photos the screen would send on, as the screened scan does
    index = simple_mark_shop(tmp_path, "Orbit", round_mark())
    photos = {"copy": printed(round_mark(), body=(30, 30, 40))[0], "box": printed(None, body=(30, 35, 30))[0],
              "scene-5": draw_product(5, size=600).convert("RGB"), "scene-8": draw_product(8, size=600).convert("RGB")}
    for name, photo in photos.items():
        photo.save(tmp_path / f"{name}.png")
    listings = write_csv(tmp_path / "listings.csv", ["listing_id", "seller_id", "title", "price", "currency", "image"],
                         [[name, "someone", "mug", "20", "USD", f"{name}.png"] for name in photos])
    searched = []
    find = ShapeSearch.find
    monkeypatch.setattr(ShapeSearch, "find", lambda self, pixels: searched.append(float(pixels.sum())) or find(self, pixels))
    found = {}
    with Detector.open(index, device="cpu", cache=False) as detector:
        for screen in (True, False):
            searched.clear()
            detector.scan(listings, tmp_path / f"out-{screen}", screen=screen)
            found[screen] = sorted(searched)
            decisions = {d["listing_id"]: d for d in map(json.loads, (tmp_path / f"out-{screen}" / "decisions.jsonl").open())}
            assert [m["brand"] for m in decisions["copy"]["marks"]] == ["Orbit"]
            assert decisions["scene-5"]["marks"] == decisions["scene-8"]["marks"] == []
    assert found[True] == found[False] and float(photo_pixels(photos["copy"]).sum()) in found[False]


def disc_like(mark: Image.Image) -> Image.Image:
    """A plain disc the size and colour of ``mark``'s drawing: its silhouette without the pattern."""
    disc = Image.new("RGB", mark.size, "white")
    ImageDraw.Draw(disc).ellipse(ImageOps.invert(mark.convert("L")).getbbox(), fill=(230, 90, 30))
    return disc


def photographed(picture: Image.Image, blur: float = 1.5, quality: int = 50) -> Image.Image:
    """``picture`` softened and JPEG-compressed, as a phone photo of it would be."""
    data = io.BytesIO()
    picture.filter(ImageFilter.GaussianBlur(blur)).save(data, "JPEG", quality=quality)
    return Image.open(data).convert("RGB")


def test_a_round_mark_is_told_from_another_brands_plain_disc():
    # another brand's logo is a plain disc: a filled silhouette's correlation is mostly its area,
    # which the disc shares with this round mark, so by correlation alone the disc set a level
    # that a softened, small, turned print of the mark no longer reached; the mark's own edges
    # (the crescent) tell them apart
    mark = prepare_mark(round_mark(), "Orbit", "orbit.png")
    impostors = [photo_pixels(printed(logo(seed), body=body)[0]) for seed, body in ((2, (200, 60, 60)), (3, (60, 160, 90)))]
    impostors.append(photo_pixels(printed(disc_like(round_mark()), body=(90, 140, 200))[0]))
    shapes = ShapeSearch([mark], {("Orbit", "orbit.png"): calibrate_level(mark, impostors)})
    for kwargs in ({"ink": (170, 170, 180), "body": (90, 100, 120)},
                   {"ink": (20, 20, 20), "body": (120, 100, 60), "angle": 25, "width": 0.18, "at": (0.4, 0.45)}):
        photo, where = printed(round_mark(), **kwargs)
        found = shapes.find(photo_pixels(photographed(photo)))
        assert [s.brand for s in found] == ["Orbit"], kwargs
        assert overlap(found[0].box, where) > 0.5
    disc = printed(disc_like(round_mark()), body=(30, 30, 40), width=0.25, at=(0.4, 0.4))[0]
    assert shapes.find(photo_pixels(photographed(disc))) == []


def test_an_index_whose_shape_levels_were_scored_another_way_must_be_rebuilt(tmp_path, monkeypatch):
    index = simple_mark_shop(tmp_path, "Orbit", round_mark())
    monkeypatch.setattr("detector.matches.SHAPE_RULE", "a-later-rule")  # this version scores shapes otherwise
    with pytest.raises(UserError, match="rebuild it with `counterfeit index build CATALOG"):
        Detector.open(index, device="cpu", cache=False)
    result = CliRunner().invoke(app, ["lookup", str(tmp_path / "orbit-0.png"), "--index", str(index)])
    assert result.exit_code != 0 and "rebuild it" in result.output and "Traceback" not in result.output
    monkeypatch.undo()
    build_index(tmp_path / "catalog.csv", index, device="cpu")  # without --marks: kept and recalibrated
    Detector.open(index, device="cpu", cache=False).close()


@pytest.mark.parametrize("showing, shown", [(1, 0), (2, 2)])
def test_a_lone_shape_sighting_among_many_catalogue_photos_does_not_mark_the_brand(tmp_path, showing, shown):
    # a shape is weak evidence: one of six catalogue photos "showing" a round mark (a ring-shaped
    # product is enough) would make every unmarked listing of the brand mark_missing; a third will do
    round_mark().save(tmp_path / "orbit.png")
    logo(3).save(tmp_path / "acme.png")
    rows = []
    for i, body in enumerate(((90, 140, 200), (200, 80, 60), (60, 160, 90), (150, 150, 60), (120, 60, 160), (60, 60, 60))):
        printed(round_mark() if i < showing else None, body=body)[0].save(tmp_path / f"orbit-{i}.png")
        rows.append(["Orbit", f"ORB-{i}", f"orbit-{i}.png", "100", "USD"])
    for i, seed in enumerate((2, 4, 6)):
        printed(logo(seed), body=(60, 160, 90))[0].save(tmp_path / f"acme-{i}.png")
        rows.append(["Acme", f"ACME-{i}", f"acme-{i}.png", "100", "USD"])
    catalog = write_csv(tmp_path / "catalog.csv", ["brand", "product_id", "image", "price", "currency"], rows)
    marks = write_csv(tmp_path / "marks.csv", ["brand", "image"], [["Orbit", "orbit.png"], ["Acme", "acme.png"]])
    build_index(catalog, tmp_path / "idx", marks=marks, device="cpu")
    index = load_index(tmp_path / "idx", load_indexes=False)
    assert index.brands["Orbit"].marks[0]["in_references"] == shown
    assert ("Orbit" in marked_brands(index)) == bool(shown)
