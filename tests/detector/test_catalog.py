"""Index builds: incremental re-embedding, removals, bad rows, and a failed build's safety."""

from __future__ import annotations

import csv
import shutil
import zlib

import pytest

from detector.catalog import build_catalog_index
from detector.demo import _caption, draw_product
from detector.errors import UserError
from index.calibrate import CountRule
from index.store import DATA, load_index

HEADER = ["brand", "product_id", "image", "price", "currency", "title"]


def make_catalog(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    for _, _, image, *_ in rows:
        if not (folder / image).exists():
            draw_product(zlib.crc32(image.encode()) % 10_000).save(folder / image)
    with open(folder / "catalog.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([HEADER, *rows])
    return folder / "catalog.csv"


ROWS = [
    ["Acme", "A-1", "a1.png", "100", "USD", "one"],
    ["Acme", "A-2", "a2.png", "150", "USD", "two"],
    ["Bolt", "B-1", "b1.png", "80", "EUR", "three"],
]


def alike_sibling(folder, of, name):
    """A second product of ``of``'s design: the same picture with a caption (what flavours of one
    carton are), so the two share most keypoints."""
    folder.mkdir(parents=True, exist_ok=True)
    _caption(draw_product(zlib.crc32(of.encode()) % 10_000), "ORANGE").save(folder / name)


def test_incremental_build_embeds_only_new_photos_and_drops_removed_products(tmp_path, embedder):
    alike_sibling(tmp_path / "cat", "a1.png", "a2.png")
    catalog = make_catalog(tmp_path / "cat", ROWS)
    out = tmp_path / "idx"
    first = build_catalog_index(catalog, out, embedder)
    assert (first.embedded, first.reused, first.edited, first.read) == (3, 0, 3, 2)  # only Acme's alike siblings are read
    words = {p["product_id"]: p.get("words") for e in load_index(out).brands.values() for p in e.products}
    assert words["B-1"] is None and words["A-1"] is not None and words["A-2"] is not None

    again = build_catalog_index(catalog, out, embedder)
    assert (again.embedded, again.reused, again.edited, again.read) == (0, 3, 0, 0)  # nor edited, nor read again
    for brand, entry in again.manifest["brands"].items():
        assert entry["calibration"] == first.manifest["brands"][brand]["calibration"]

    changed = [r for r in ROWS if r[1] != "A-2"] + [["Bolt", "B-2", "b2.png", "90", "EUR", "four"]]
    catalog = make_catalog(tmp_path / "cat", changed)
    third = build_catalog_index(catalog, out, embedder)
    assert (third.embedded, third.reused, third.edited, third.read) == (1, 2, 3, 0)  # both brands' photos changed
    index = load_index(out)
    ids = sorted(p["product_id"] for e in index.brands.values() for p in e.products)
    assert ids == ["A-1", "B-1", "B-2"]
    assert third.manifest["build"] == {"embedded": 1, "reused": 2, "edited": 3, "read": 0, "skipped_rows": 0}


def test_a_rebuild_reuses_the_verifications_and_views_it_calibrated_on(tmp_path, embedder, monkeypatch):
    from detector import build_samples

    catalog = make_catalog(tmp_path / "cat", ROWS)
    first = build_catalog_index(catalog, tmp_path / "idx", embedder)
    calls = []
    real = build_samples.verify_candidates
    monkeypatch.setattr(build_samples, "verify_candidates", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(embedder, "preprocess_views", lambda *a: pytest.fail("a stored calibration view was embedded again"))
    again = build_catalog_index(catalog, tmp_path / "idx", embedder)
    assert calls == [] and again.manifest["brands"] == first.manifest["brands"]


def test_beyond_the_budgets_small_brands_borrow_pooled_counts_and_levels(tmp_path, embedder, monkeypatch):
    from detector import build_samples

    rows = ROWS + [["Acme", "A-3", "a3.png", "120", "USD", "five"], ["Cove", "C-1", "c1.png", "60", "USD", "six"]]
    catalog = make_catalog(tmp_path / "cat", rows)
    monkeypatch.setattr(build_samples, "PRODUCT_VERIFICATIONS", 3)  # one impostor per brand
    monkeypatch.setattr(build_samples, "EDITED_PHOTOS", 3)  # Acme, the largest brand, alone
    report = build_catalog_index(catalog, tmp_path / "idx", embedder, count_rule=CountRule(min_impostors=2))
    calibration = {brand: e["calibration"] for brand, e in report.manifest["brands"].items()}
    assert report.edited == 3
    assert calibration["Acme"]["gate_source"] == "brand"
    assert {calibration[b]["gate_source"] for b in ("Bolt", "Cove")} == {"pooled"}
    assert calibration["Bolt"]["gate_level"] == calibration["Cove"]["gate_level"] is not None
    assert {c["product_impostors"] for c in calibration.values()} == {3}  # 1 each, pooled: 3 in all
    assert {c["product_source"] for c in calibration.values()} == {"pooled"}


def test_a_changed_photo_at_the_same_path_is_embedded_again(tmp_path, embedder):
    catalog = make_catalog(tmp_path / "cat", ROWS)
    build_catalog_index(catalog, tmp_path / "idx", embedder)
    draw_product(4242).save(tmp_path / "cat" / "a1.png")
    report = build_catalog_index(catalog, tmp_path / "idx", embedder)
    assert (report.embedded, report.reused) == (1, 2)


def test_bad_rows_are_all_listed_and_the_old_index_survives(tmp_path, embedder):
    catalog = make_catalog(tmp_path / "cat", ROWS)
    out = tmp_path / "idx"
    build_catalog_index(catalog, out, embedder)
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    bad = ROWS + [
        ["Acme", "A-3", "missing.png", "10", "USD", ""],
        ["Acme", "A-4", "broken.jpg", "10", "USD", ""],
        ["Acme", "A-5", "../outside.png", "10", "USD", ""],
        ["Acme", "A-6", "a1.png", "lots", "USD", ""],
    ]
    make_catalog(tmp_path / "cat", ROWS)  # images only
    with open(catalog, "w", newline="") as fh:
        csv.writer(fh).writerows([HEADER, *bad])
    with pytest.raises(UserError) as caught:
        build_catalog_index(catalog, out, embedder)
    message = str(caught.value)
    assert "4 bad catalogue row(s)" in message and "--skip-bad-rows" in message
    for fragment in ("line 5: image file not found: missing.png", "line 6: file is not a recognised image",
                     "line 7: image path '../outside.png' leads outside", "line 8: price 'lots' is not a number"):
        assert fragment in message
    assert len(load_index(out).brands["Acme"].products) == 2  # untouched

    report = build_catalog_index(catalog, out, embedder, skip_bad_rows=True)
    assert len(report.skipped) == 4 and report.manifest["build"]["skipped_rows"] == 4


def test_authorised_sellers_are_stored_and_kept_when_not_given(tmp_path, embedder):
    catalog = make_catalog(tmp_path / "cat", ROWS)
    sellers = tmp_path / "cat" / "sellers.csv"
    sellers.write_text("brand,seller_id\nAcme,acme-shop\nAcme,acme-outlet\nGhost,g1\n")
    report = build_catalog_index(catalog, tmp_path / "idx", embedder, authorized_path=sellers)
    assert any("not in the catalogue: Ghost" in n for n in report.notes)
    assert load_index(tmp_path / "idx").authorized("Acme") == {"acme-shop", "acme-outlet"}
    again = build_catalog_index(catalog, tmp_path / "idx", embedder)
    assert any("kept from the previous build" in n for n in again.notes)
    assert load_index(tmp_path / "idx").authorized("Acme") == {"acme-shop", "acme-outlet"}


def test_background_photos_join_the_impostors(tmp_path, embedder):
    catalog = make_catalog(tmp_path / "cat", ROWS)
    background = tmp_path / "bg"
    background.mkdir()
    for i in range(4):
        draw_product(7000 + i).save(background / f"{i}.png")
    (background / "junk.jpg").write_bytes(b"junk")
    report = build_catalog_index(catalog, tmp_path / "idx", embedder, background_dir=background)
    assert report.manifest["background_images"] == 4
    assert report.manifest["brands"]["Acme"]["calibration"]["impostors"] >= 1


def test_a_different_embedder_re_embeds_everything(tmp_path, embedder):
    import dataclasses

    catalog = make_catalog(tmp_path / "cat", ROWS)
    build_catalog_index(catalog, tmp_path / "idx", embedder)
    other = dataclasses.replace(embedder, pooling="avg")
    report = build_catalog_index(catalog, tmp_path / "idx", other)
    assert report.embedded == 3 and any("another embedder" in n for n in report.notes)


def test_images_of_every_odd_kind_can_be_references(tmp_path, embedder):
    folder = tmp_path / "cat"
    folder.mkdir()
    draw_product(1).convert("CMYK").save(folder / "cmyk.jpg")
    draw_product(2).convert("P").save(folder / "palette.png", transparency=0)
    draw_product(3).save(folder / "photo.webp")
    rows = [["Acme", f"A-{i}", name, "10", "USD", ""] for i, name in enumerate(["cmyk.jpg", "palette.png", "photo.webp"])]
    with open(folder / "catalog.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([HEADER, *rows])
    assert build_catalog_index(folder / "catalog.csv", tmp_path / "idx", embedder).embedded == 3
    shutil.rmtree(tmp_path / "idx")


def rewrite_manifest(index_dir, **changes):
    """Stand in for an index an older version built: changed fields, under a valid checksum."""
    import json

    from index.store import _manifest_digest

    path = index_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    manifest["manifest_sha256"] = _manifest_digest(manifest)
    path.write_text(json.dumps(manifest))


def test_an_index_made_with_other_reference_views_is_re_embedded_and_refused_until_rebuilt(tmp_path, embedder):
    from detector.matches import open_index

    catalog = make_catalog(tmp_path / "cat", ROWS)
    build_catalog_index(catalog, tmp_path / "idx", embedder)
    rewrite_manifest(tmp_path / "idx", reference_view="trimmed-v0")
    with pytest.raises(UserError, match="reference_view 'trimmed-v0'.*rebuild it"):
        open_index(tmp_path / "idx")
    report = build_catalog_index(catalog, tmp_path / "idx", embedder)
    assert report.embedded == 3 and any("another way" in n for n in report.notes)
    open_index(tmp_path / "idx")


def test_the_keypoint_calibration_reports_progress_and_does_not_depend_on_the_worker_count(tmp_path, embedder):
    # Each brand's products are verified against the other brands' photos (most of a many-brand
    # build's time); they run on the worker threads, and a user sees how far they are.
    rows = ROWS + [["Crest", f"C-{i}", f"c{i}.png", "60", "USD", "crest"] for i in range(3)]
    catalog = make_catalog(tmp_path / "cat", rows)
    seen = []
    one = build_catalog_index(catalog, tmp_path / "one", embedder, workers=1)
    four = build_catalog_index(catalog, tmp_path / "four", embedder, workers=4,
                               on_calibration=lambda done, total: seen.append((done, total)))
    # Acme has 4 other brands' photos to check, Bolt 5, Crest 3
    assert seen == [(done, 12) for done in range(1, 13)]
    for brand, impostors in (("Acme", 4), ("Bolt", 5), ("Crest", 3)):
        assert four.manifest["brands"][brand]["calibration"] == one.manifest["brands"][brand]["calibration"]
        assert four.manifest["brands"][brand]["calibration"]["product_impostors"] == impostors


def test_the_first_stage_levels_are_fitted_on_the_catalogue_alone_and_rebuilt_alike(tmp_path, embedder):
    catalog = make_catalog(tmp_path / "cat", ROWS + [["Acme", "A-3", "a3.png", "90", "USD", "three"]])
    first = build_catalog_index(catalog, tmp_path / "one", embedder)
    again = build_catalog_index(catalog, tmp_path / "two", embedder)
    assert first.manifest["gate_rule"]["edits"].startswith("edits-")
    for brand, entry in first.manifest["brands"].items():
        calibration = entry["calibration"]
        assert calibration["gate_level"] < entry["threshold"]
        assert calibration["gate_level"] == again.manifest["brands"][brand]["calibration"]["gate_level"]
    # Acme's 3 photos give 24 edits, its own; Bolt's one photo too few, so it borrows every brand's
    assert first.manifest["brands"]["Acme"]["calibration"]["gate_source"] == "brand"
    assert first.manifest["brands"]["Bolt"]["calibration"]["gate_source"] == "pooled"


def test_damaged_edit_scores_are_made_again_not_trusted(tmp_path, embedder):
    catalog = make_catalog(tmp_path / "cat", ROWS)
    first = build_catalog_index(catalog, tmp_path / "idx", embedder)
    spec = first.manifest["brands"]["Acme"]["files"]["edit_scores"]
    (tmp_path / "idx" / DATA / spec["name"]).write_bytes(b"not the scores")
    again = build_catalog_index(catalog, tmp_path / "idx", embedder)
    assert again.edited == 2 and any("Acme" in note and "edit scores" in note for note in again.notes)
    assert again.manifest["brands"]["Acme"]["calibration"] == first.manifest["brands"]["Acme"]["calibration"]


def test_adding_a_brand_writes_and_calibrates_that_brand_alone(tmp_path, embedder, monkeypatch):
    import hashlib

    from detector import build_samples, catalog as catalog_module
    from index import calibrate

    rows = [[f"Brand{b}", f"P{b}-{p}", f"p{b}-{p}.png", "50", "USD", ""] for b in range(4) for p in range(2)]
    catalog = make_catalog(tmp_path / "cat", rows)
    digest = lambda name: hashlib.sha256((tmp_path / "cat" / name).read_bytes()).hexdigest()  # noqa: E731
    last = max(digest(r[2]) for r in rows)
    for i in range(100):  # a new brand whose photo sorts after the others: outside every sample below
        new = ["Brand9", "P9-0", f"p9-{i}.png", "70", "USD", ""]
        make_catalog(tmp_path / "cat", [new])
        if digest(new[2]) > last:
            break
    # every sample at its size before the brand is added: 8 photos for thresholds; 6 impostors per
    # brand (7 before, 30 verifications over 4 brands; 6 over 5), each brand calibrated on its own
    monkeypatch.setattr(catalog_module, "MAX_CALIBRATION_PHOTOS", 8)
    monkeypatch.setattr(build_samples, "PRODUCT_VERIFICATIONS", 30)
    rules = {"rule": calibrate.CalibrationRule(min_impostors=5), "count_rule": CountRule(min_impostors=6),
             "gate_rule": calibrate.GateRule(min_edits=16)}
    catalog = make_catalog(tmp_path / "cat", rows)
    first = build_catalog_index(catalog, tmp_path / "idx", embedder, **rules)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "idx" / DATA).iterdir()}
    calibrated = []
    real = calibrate.calibrate_thresholds
    monkeypatch.setattr(catalog_module, "calibrate_thresholds",
                        lambda vectors, *a, **k: calibrated.append(sorted(vectors)) or real(vectors, *a, **k))
    added = build_catalog_index(make_catalog(tmp_path / "cat", rows + [new]), tmp_path / "idx", embedder, **rules)
    assert (added.embedded, added.reused) == (1, 8)
    brands, old = added.manifest["brands"], first.manifest["brands"]
    assert all(brands[b] == old[b] for b in old)
    assert calibrated == [["Brand9"]]
    written = {p.name for p in (tmp_path / "idx" / DATA).iterdir()
               if p.name not in before or p.stat().st_mtime_ns != before[p.name]}
    assert {f["name"] for f in brands["Brand9"]["files"].values()} <= written
    assert not written & {f["name"] for b in old for f in old[b]["files"].values()}
