"""Words printed on a product: read on the catalogue photos at index build, read in a listing
photo only where keypoints leave siblings of one brand, and naming one of them only when the
photo's words are that sibling's and not the others'."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw, ImageFont

from detector import Detector, build_index
from detector.demo import draw_product
from detector.product_words import same_word, single_out, words_of
from detector.text_reading import Line, TextReader
from index.store import load_index
from tests.detector.test_marks import write_csv


def line(text: str) -> Line:
    return Line(text, 0.9, (0.0, 0.0, 1.0, 1.0))


def test_words_are_runs_of_letters_lower_cased_without_numbers_or_short_bits():
    assert words_of([line("ORANGE&RED 100% juice"), line("1L  Öl"), line("Orange")]) == ["juice", "orange", "red"]


@pytest.mark.parametrize("read, printed, same", [
    ("orange", "orange", True), ("range", "orange", True), ("apefruit", "grapefruit", True),
    ("appdle", "apple", True), ("aple", "apple", False), ("red", "bred", False), ("soa", "soya", False),
    ("vanilla", "blueberry", False), ("milk", "mild", False),
])
def test_a_word_read_matches_a_printed_word_as_a_reader_misreads_it(read, printed, same):
    assert same_word(read, printed) is same


def test_the_words_read_name_the_sibling_with_the_most_of_its_own_words():
    orange_red = ["god", "grapefruit", "morgon", "orange", "red"]
    red = ["god", "grapefruit", "morgon", "red"]
    orange = ["god", "morgon", "orange"]
    # the brand's own words (god, morgon) count for none; "range" is orange misread
    assert single_out(["god", "range", "red", "grapefruit"], [red, orange_red, orange]) == (1, ["grapefruit", "orange", "red"])
    assert single_out(["orange"], [red, orange]) == (1, ["orange"])
    # a tie (grapefruit is on both) or nothing read names none
    assert single_out(["grapefruit"], [red, orange_red]) is None
    assert single_out(["god", "morgon"], [red, orange]) is None
    assert single_out([], [red, orange]) is None
    # a sibling whose words were never read cannot be ruled out
    assert single_out(["orange"], [None, orange]) is None


def labelled(word: str, seed: int = 5, top: int = 440, left: int = 80) -> Image.Image:
    """The demo's product ``seed`` with a flavour printed large on a white band at ``top``."""
    picture = draw_product(seed, size=600).convert("RGB")
    draw = ImageDraw.Draw(picture)
    draw.rectangle((60, top, 540, top + 100), fill=(255, 255, 255))
    draw.text((left, top + 10), word, fill=(20, 20, 20), font=ImageFont.load_default(size=80))
    return picture


@pytest.fixture(scope="module")
def flavours(tmp_path_factory):
    """One brand, two flavours of one design (only the printed word differs), a third product,
    and listings: the lemon flavour's photo, the lemon flavour in a new print run (the word moved,
    so its keypoints match neither catalogue photo's layout and only the shared design does), and
    an unrelated picture."""
    root = tmp_path_factory.mktemp("flavours")
    labelled("MANGO").save(root / "mango.png")
    labelled("LEMON").save(root / "lemon.png")
    draw_product(9, size=600).convert("RGB").save(root / "other.png")
    labelled("LEMON").rotate(8, expand=True, fillcolor="white").save(root / "lemon-listing.png")
    labelled("LEMON", top=20, left=220).save(root / "lemon-reprint.png")
    draw_product(31, size=600).convert("RGB").save(root / "unrelated.png")
    write_csv(root / "catalog.csv", ["brand", "product_id", "image", "price", "currency"],
              [["Acme", "MANGO-1", "mango.png", "90", "USD"], ["Acme", "LEMON-1", "lemon.png", "30", "USD"],
               ["Acme", "OTHER-1", "other.png", "50", "USD"]])
    write_csv(root / "authorized.csv", ["brand", "seller_id"], [["Acme", "acme-shop"]])
    build_index(root / "catalog.csv", root / "idx", authorized=root / "authorized.csv", device="cpu")
    return root


def test_index_build_reads_each_catalogue_photos_words_and_a_rebuild_keeps_them(flavours, monkeypatch):
    products = {p["product_id"]: p["words"] for p in load_index(flavours / "idx").brands["Acme"].products}
    assert "mango" in products["MANGO-1"] and "lemon" in products["LEMON-1"]
    assert "lemon" not in products["MANGO-1"]
    read = []
    monkeypatch.setattr(TextReader, "lines", lambda self, image: read.append(image) or [])
    build_index(flavours / "catalog.csv", flavours / "idx", authorized=flavours / "authorized.csv", device="cpu")
    assert read == []  # unchanged photos are not read again
    again = {p["product_id"]: p["words"] for p in load_index(flavours / "idx").brands["Acme"].products}
    assert again == products


def test_a_listing_photo_is_read_only_where_keypoints_leave_siblings_in_doubt(flavours, monkeypatch):
    real, read = TextReader.lines, []

    def recording(self, image):
        read.append(image.size)
        return real(self, image)

    monkeypatch.setattr(TextReader, "lines", recording)
    with Detector.open(flavours / "idx", device="cpu", cache=False) as detector:
        # the word's own keypoints single out the lemon flavour: nothing to read
        lemon = detector.lookup(flavours / "lemon-listing.png", price=30.0, currency="USD", seller="acme-shop")
        assert lemon.decision.product_id == "LEMON-1" and lemon.plausible == ["LEMON-1"] and read == []
        # reprinted, only the shared design matches: the words decide, and the price is the lemon's
        reprint = detector.lookup(flavours / "lemon-reprint.png", price=30.0, currency="USD", seller="acme-shop")
        assert len(read) == 1
        assert (reprint.decision.product_id, reprint.plausible, reprint.verdict) == ("LEMON-1", ["LEMON-1"], "clear")
        assert "identified_by_words" in [f.code for f in reprint.findings]
        detector.lookup(flavours / "unrelated.png")
        assert len(read) == 1  # nothing in play: not read
