"""Brand words: a protected brand's name read in a listing photo counts as its mark (attribution,
the visual state ``mark``, a box in the decision), spelt plainly or evasively; names too short to
tell apart are not looked for; the policy can list names read without counting them."""

from __future__ import annotations

import json

import pytest
from PIL import Image, ImageDraw, ImageFont

from detector import Detector, build_index
from detector.brand_words import WordReader, brands_in
from detector.demo import draw_product
from detector.policy import load_policy
from index.store import load_index
from tests.detector.test_marks import two_marked_brands, write_csv


@pytest.mark.parametrize("line, expected", [
    ("IKEA", ["Ikea"]), ("ikea store", ["Ikea"]), ("S A M S U N G", ["Samsung"]), ("AC-ME", ["Acme"]),
    ("N1KE", ["Nike"]), ("adidass", ["Adidas"]), ("Nikon camera", []), ("idea", []), ("HP", []), ("", []),
])
def test_a_line_names_the_brands_it_spells_plainly_or_evasively(line, expected):
    assert brands_in(line, ["Acme", "Adidas", "HP", "Ikea", "Nike", "Samsung"]) == expected


def worded(text: str, seed: int = 5, at=(0.3, 0.4), size: int = 70) -> Image.Image:
    """The demo's product ``seed`` with ``text`` printed on it in white."""
    scene = draw_product(seed, size=600).convert("RGB")
    ImageDraw.Draw(scene).text((at[0] * 600, at[1] * 600), text, fill=(250, 250, 250),
                               font=ImageFont.load_default(size=size))
    return scene


def test_the_reader_finds_the_name_with_its_box_and_nothing_in_a_photo_without_it():
    reader = WordReader(["Acme", "Borel", "HP"])
    assert reader.brands == ["Acme", "Borel"]
    found = reader.find(worded("ACME"))
    assert [(s.brand, s.name, s.how) for s in found] == [("Acme", "ACME", "word")]
    x0, y0, x1, y1 = found[0].box
    assert 0.2 < x0 < 0.35 and 0.35 < y0 < 0.45 and x1 > 0.5 and found[0].score >= 0.6
    assert reader.find(draw_product(5, size=600).convert("RGB")) == []
    for odd in (Image.new("RGB", (3000, 20), "white"), Image.new("L", (5, 5)), Image.new("RGBA", (80, 80))):
        assert reader.find(odd) == []  # a picture the reader cannot take shows no name; it is no crash


@pytest.fixture(scope="module")
def worded_shop(tmp_path_factory):
    """Acme and Borel, whose catalogue photos show their (pictogram) marks, and listings of Acme's
    product carrying Acme's name instead of its mark: from a rogue seller, cheap; from Acme's own
    shop; and the bare product from a rogue seller."""
    root = two_marked_brands(tmp_path_factory.mktemp("worded"))
    worded("ACME").save(root / "named.png")
    draw_product(5, size=600).convert("RGB").save(root / "bare.png")
    write_csv(root / "listings.csv", ["listing_id", "seller_id", "title", "price", "currency", "image"], [
        ["rogue", "someone", "mug", "20", "USD", "named.png"],
        ["own", "acme-shop", "mug", "100", "USD", "named.png"],
        ["bare", "someone", "mug", "20", "USD", "bare.png"],
    ])
    build_index(root / "catalog.csv", root / "idx", authorized=root / "authorized.csv", marks=root / "marks.csv",
                device="cpu")
    return root


def scanned(root, out, policy=None) -> dict:
    with Detector.open(root / "idx", device="cpu", cache=False, policy=policy) as detector:
        detector.scan(root / "listings.csv", out)
    return {d["listing_id"]: d for d in map(json.loads, (out / "decisions.jsonl").open())}


def test_a_brand_name_in_the_photo_counts_as_its_mark(worded_shop, tmp_path):
    decisions = scanned(worded_shop, tmp_path / "out")
    rogue = decisions["rogue"]
    # Acme's product copied, its mark replaced by its name: without the name, mark_missing (below)
    assert (rogue["verdict"], rogue["visual_state"], rogue["brand"]) == ("flagged", "copy", "Acme")
    assert [(m["brand"], m["mark"], m["found_by"]) for m in rogue["marks"]] == [("Acme", "ACME", "word")]
    assert rogue["marks"][0]["read_score"] >= 0.6 and rogue["marks"][0]["shape_score"] is None
    assert (decisions["own"]["verdict"], decisions["own"]["seller_authorized"]) == ("clear", True)
    assert (decisions["bare"]["verdict"], decisions["bare"]["visual_state"]) == ("clear", "mark_missing")
    report = (tmp_path / "out" / "report.html").read_text()
    assert 'class="mark-box"' in report


def test_the_policy_can_leave_names_read_uncounted(worded_shop, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text("[marks]\nwords = false\n")
    decisions = scanned(worded_shop, tmp_path / "out", policy=load_policy(policy))
    assert (decisions["rogue"]["verdict"], decisions["rogue"]["visual_state"]) == ("clear", "mark_missing")
    assert decisions["rogue"]["marks"] == []


def test_a_brand_whose_catalogue_shows_its_name_needs_it_or_a_mark_in_a_match(tmp_path):
    # Acme's catalogue photo shows its name, not its registered pictogram: its products carry a
    # mark all the same, so the bare product is not Acme's (unless the policy leaves names uncounted)
    root = two_marked_brands(tmp_path)
    worded("ACME").save(root / "acme-ref.png")
    draw_product(5, size=600).convert("RGB").save(root / "bare.png")
    write_csv(root / "listings.csv", ["listing_id", "seller_id", "title", "price", "currency", "image"],
              [["bare", "someone", "mug", "20", "USD", "bare.png"]])
    build_index(root / "catalog.csv", root / "idx", authorized=root / "authorized.csv", marks=root / "marks.csv",
                device="cpu")
    acme = load_index(root / "idx", load_indexes=False).brands["Acme"].marks[0]
    assert (acme["in_references"], acme["words_in_references"]) == (0, 1)
    assert scanned(root, tmp_path / "out")["bare"]["visual_state"] == "mark_missing"
    policy = tmp_path / "policy.toml"
    policy.write_text("[marks]\nwords = false\n")
    bare = scanned(root, tmp_path / "off", policy=load_policy(policy))["bare"]
    assert (bare["verdict"], bare["visual_state"]) == ("flagged", "copy")


def test_index_build_reads_a_catalogue_photo_at_the_size_a_scan_reads_a_listing(tmp_path, monkeypatch):
    # a large JPEG is decoded at the embedder's draft size by the scan; the build must read the
    # brand's name in the same picture, not in a full-size decode twice as large
    root = two_marked_brands(tmp_path)
    worded("ACME").resize((2400, 2400)).save(root / "acme-ref.png", format="JPEG", quality=90)
    write_csv(root / "listings.csv", ["listing_id", "seller_id", "title", "price", "currency", "image"],
              [["same", "someone", "mug", "20", "USD", "acme-ref.png"]])
    read = []
    real = WordReader.find

    def recording(self, image):
        read.append(image.size)
        return real(self, image)

    monkeypatch.setattr(WordReader, "find", recording)
    build_index(root / "catalog.csv", root / "idx", authorized=root / "authorized.csv", marks=root / "marks.csv",
                device="cpu")
    at_build = list(read)
    read.clear()
    with Detector.open(root / "idx", device="cpu", cache=False) as detector:
        detector.lookup(root / "acme-ref.png")
    assert (2400, 2400) not in at_build and read and read[0] in at_build
