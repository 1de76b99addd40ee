"""The first-stage screen: photos that cannot match skip the window views and full verification,
say so in their decision, and nothing a full scan would flag is lost on the demo dump."""

from __future__ import annotations

import json

import pytest

from detector import Detector
from detector.screening import gate_levels, screen, screen_levels, without_keypoints
from detector.matches import index_marks, open_index, search_views
from detector.verify import extract_query
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def loaded(demo_index):
    with Detector.open(demo_index, device="cpu", cache=False) as detector:
        yield detector


def decisions(out):
    return {d["listing_id"]: d for d in map(json.loads, (out / "decisions.jsonl").read_text().splitlines())}


def screened(decision) -> bool:
    return any(f["code"] == "screened_out" for f in decision["findings"])


@pytest.fixture(scope="module")
def both(demo_data, loaded, tmp_path_factory):
    folder = tmp_path_factory.mktemp("screen")
    loaded.scan(demo_data.listings, folder / "screened")
    loaded.scan(demo_data.listings, folder / "full", screen=False)
    return decisions(folder / "screened"), decisions(folder / "full")


def test_screening_keeps_every_verdict_of_the_full_scan_on_the_demo(both):
    first, full = both
    assert first.keys() == full.keys()
    assert {k: d["verdict"] for k, d in first.items()} == {k: d["verdict"] for k, d in full.items()}
    assert not any(screened(d) for d in full.values())


def test_screened_out_photos_say_so_and_match_nothing(both, demo_data):
    first, _ = both
    out = [d for d in first.values() if screened(d)]
    assert out, "the demo's unrelated photos should stop at the first stage"
    truth = {row.split(",")[0]: row.split(",")[2] for row in demo_data.truth.read_text().splitlines()[1:]}
    for d in out:
        assert d["verdict"] == "clear" and d["visual_state"] == "no_match"
        assert truth[d["listing_id"]] not in ("copy_cheap_rogue", "copy_fullprice_rogue", "authorized_cheap")
        note = next(f for f in d["findings"] if f["code"] == "screened_out")
        assert note["weight"] == 0 and "window views" in note["text"]
        assert any("window views" in r for r in d["reasons"])


def test_a_full_scan_never_takes_a_screened_photos_single_view_from_the_cache(tmp_path, demo_data, loaded):
    """A screened scan caches the whole view alone for the photos it stopped; a later full scan
    sharing the cache must embed their window views, not search one view as if it were six."""
    with loaded.using(cache=tmp_path / "cache.sqlite") as cached:
        cached.scan(demo_data.listings, tmp_path / "screened")
        again = cached.scan(demo_data.listings, tmp_path / "full", screen=False)
    loaded.scan(demo_data.listings, tmp_path / "fresh", screen=False)
    assert again.embedded == sum(screened(d) for d in decisions(tmp_path / "screened").values()) > 0
    assert decisions(tmp_path / "full") == decisions(tmp_path / "fresh")


def test_the_screen_sends_on_a_copy_and_stops_an_unrelated_picture(demo_index, demo_data):
    from PIL import Image

    index, embedder = open_index(demo_index, device="cpu")
    truth = dict(tuple(row.split(",")[:3:2]) for row in demo_data.truth.read_text().splitlines()[1:])
    copy = next(k for k, kind in truth.items() if kind == "copy_cheap_rogue")
    photos = {"copy": Image.open(demo_data.folder / "listings" / f"{copy}.jpg").convert("RGB"),
              "noise": Image.effect_noise((400, 300), 60).convert("RGB")}
    verdicts, keypoints_made = {}, []

    def keypoints(photo):
        keypoints_made.append(photo)
        return extract_query(photo)

    for name, photo in photos.items():
        hits = search_views(index, [embedder.embed([photo])[0]], 10)[0]
        verdicts[name] = screen(index, gate_levels(index), hits, lambda: keypoints(photo), index_marks(index))
    assert verdicts["copy"].go_on and verdicts["copy"].why in ("near", "catalogue")
    assert verdicts["noise"] == (False, None)
    assert keypoints_made == []  # the demo index has no marks: the whole view alone decides


def test_the_command_line_counts_screened_photos_and_no_screen_runs_every_stage(tmp_path, demo_data, demo_index):
    result = run_cli("scan", str(demo_data.listings), "--index", str(demo_index), "--out", str(tmp_path / "out"),
                     "--no-cache", "--no-screen")
    assert result.returncode == 0, result.stderr
    assert not any(screened(d) for d in decisions(tmp_path / "out").values())
    assert "first stage" not in result.stdout
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["screened_out"] == 0
    screened_run = run_cli("scan", str(demo_data.listings), "--index", str(demo_index), "--out", str(tmp_path / "s"),
                           "--no-cache")
    stopped = sum(screened(d) for d in decisions(tmp_path / "s").values())
    assert stopped > 0 and json.loads((tmp_path / "s" / "summary.json").read_text())["screened_out"] == stopped
    assert f"{stopped} {'photo' if stopped == 1 else 'photos'} matched nothing at the first stage" in screened_run.stdout
    help_text = run_cli("scan", "--help").stdout
    assert "--no-screen" in help_text and "screened_out" in help_text


def test_the_first_stage_is_on_by_default_on_every_device_and_engine_and_can_be_turned_off(monkeypatch, loaded,
                                                                                           tmp_path):
    # It reads the whole view alone, so it costs a photo it stops no keypoints on either device
    import dataclasses

    import detector.scanner

    asked = []
    monkeypatch.setattr(detector.scanner, "scan", lambda listings, index, embedder, *args, options, **kw: asked.append(
        (options.engine, options.stage_options().screen)))
    listings = tmp_path / "l.csv"
    listings.write_text("listing_id,seller_id,title,price,currency,image\n")
    on_gpu = Detector(loaded.index, dataclasses.replace(loaded.embedder, device="cuda"), loaded.policy, device="cuda",
                      backend="torch", cache=None)
    for detector_, kwargs in ((loaded, {}), (on_gpu, {}), (loaded, {"engine": "ray"}), (loaded, {"screen": False}),
                              (on_gpu, {"screen": False})):
        detector_.scan(listings, tmp_path / "out", **kwargs)
    assert asked == [("local", True), ("local", True), ("ray", True), ("local", False), ("local", False)]


def test_a_photo_the_first_stage_stops_never_pays_for_keypoints(tmp_path, demo_data, loaded):
    from detector.demo import draw_surface
    from detector.profile import StageClock

    (tmp_path / "p").mkdir()
    rows = ["listing_id,seller_id,title,price,currency,image"]
    for i in range(3):
        draw_surface(900 + i).save(tmp_path / "p" / f"s{i}.jpg")
        rows.append(f"S{i},seller-{i},rug,12,USD,p/s{i}.jpg")
    (tmp_path / "night.csv").write_text("\n".join(rows) + "\n")
    gated, every = StageClock(), StageClock()
    first = loaded.scan(tmp_path / "night.csv", tmp_path / "gated", clock=gated)
    loaded.scan(tmp_path / "night.csv", tmp_path / "every", screen=False, clock=every)
    assert first.screened_out == 3
    assert "keypoints" not in gated.seconds and "keypoints" in every.seconds
    assert all(screened(d) and d["verdict"] == "clear" for d in decisions(tmp_path / "gated").values())


def test_an_index_built_before_gate_levels_lets_every_photo_through(tmp_path, demo_index, demo_data):
    import shutil

    from tests.detector.test_catalog import rewrite_manifest

    old = tmp_path / "old"
    shutil.copytree(demo_index, old)
    manifest = json.loads((old / "manifest.json").read_text())
    brands = manifest["brands"]
    for entry in brands.values():
        entry["calibration"] = {k: v for k, v in entry["calibration"].items() if not k.startswith("gate")}
    rewrite_manifest(old, brands=brands)
    with Detector.open(old, device="cpu", cache=False) as detector:
        summary = detector.scan(demo_data.listings, tmp_path / "out")
    assert summary.screened_out == 0
    assert not any(screened(d) for d in decisions(tmp_path / "out").values())


def test_among_many_alike_brands_the_first_stage_still_hands_on_the_brand_whose_level_the_photo_reaches(tmp_path):
    """300 brands whose products all come closer to the photo than the one it shows, each far
    below its own level: the 10 most similar references are all theirs, and the photo would stop;
    ranked by level, the brand whose level it reaches is handed on, and the photo goes on."""
    import numpy as np

    from index.store import BrandEntry, load_index, write_index

    rng = np.random.default_rng(7)

    def unit(v):
        return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)

    photo = unit(rng.standard_normal(64))

    def at(similarity, n):  # n references at exactly this similarity to the photo
        noise = rng.standard_normal((n, 64))
        return unit(similarity * photo + np.sqrt(1 - similarity**2) * unit(noise - np.outer(noise @ photo, photo)))

    crowd = [BrandEntry(f"Crowd {i:03d}", at(rng.uniform(0.75, 0.85), 3),
                        [{"product_id": f"C{i}-{r}", "image_sha256": f"c{i}{r}"} for r in range(3)],
                        threshold=0.95, calibration={"gate_level": 0.93}) for i in range(300)]
    mine = BrandEntry("Mine", at(0.65, 1), [{"product_id": "M0", "image_sha256": "m0"}], threshold=0.75,
                      calibration={"gate_level": 0.6})
    write_index(tmp_path, [*crowd, mine], {"dim": 64}, "toy")
    index = load_index(tmp_path)
    similarity = float(mine.vectors[0] @ photo)
    assert 0.6 <= similarity < min(float(v @ photo) for entry in crowd for v in entry.vectors)
    levels = gate_levels(index)
    by_similarity = search_views(index, [photo], 10)[0]
    assert "Mine" not in {hit.brand for hit in by_similarity} and without_keypoints(index, levels, by_similarity) is None
    by_level = search_views(index, [photo], 10, levels=screen_levels(index, levels))[0]
    assert by_level[0].brand == "Mine" and by_level[0].similarity == pytest.approx(similarity, abs=1e-5)
    assert without_keypoints(index, levels, by_level) == (True, "catalogue")
