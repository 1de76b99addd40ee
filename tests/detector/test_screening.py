"""The first-stage screen: photos that cannot match skip the window views and full verification,
say so in their decision, and nothing a full scan would flag is lost on the demo dump."""

from __future__ import annotations

import json

import pytest

from detector import Detector
from detector.screening import screen
from detector.matches import ReferenceFeatures, index_marks, open_index, search_views
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
    references = ReferenceFeatures(index)
    truth = dict(tuple(row.split(",")[:3:2]) for row in demo_data.truth.read_text().splitlines()[1:])
    copy = next(k for k, kind in truth.items() if kind == "copy_cheap_rogue")
    photos = {"copy": Image.open(demo_data.folder / "listings" / f"{copy}.jpg").convert("RGB"),
              "noise": Image.effect_noise((400, 300), 60).convert("RGB")}
    verdicts = {}
    for name, photo in photos.items():
        hits = search_views(index, [embedder.embed([photo])[0]], 10)[0]
        verdicts[name] = screen(index, hits, extract_query(photo), references, index_marks(index))
    assert verdicts["copy"].go_on and verdicts["copy"].why in ("near", "keypoints")
    assert verdicts["noise"] == (False, None)


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


def test_the_screen_is_on_by_default_on_cpu_off_on_cuda_and_either_can_be_asked_for(monkeypatch, loaded, tmp_path):
    # On a GPU the window views cost little and the screen's keypoint matching cost more than it
    # saved (docs/performance.md#gpu-path), so the default follows the device the model runs on.
    import dataclasses

    import detector.scanner

    asked = []
    monkeypatch.setattr(detector.scanner, "scan", lambda listings, index, embedder, *args, options, **kw: asked.append(
        options.screen if options.engine == "ray" else options.stage_options(embedder.device).screen))
    listings = tmp_path / "l.csv"
    listings.write_text("listing_id,seller_id,title,price,currency,image\n")
    on_gpu = Detector(loaded.index, dataclasses.replace(loaded.embedder, device="cuda"), loaded.policy, device="cuda",
                      backend="torch", cache=None)
    for detector_, choice in ((loaded, None), (on_gpu, None), (loaded, False), (on_gpu, True)):
        detector_.scan(listings, tmp_path / "out", screen=choice)
    assert asked == [True, False, False, True]
    # On Ray the actors, not the driver, hold the model: the default is left to their device
    from detector.scanner import ScanOptions

    asked.clear()
    loaded.scan(listings, tmp_path / "out", engine="ray")
    assert asked == [None]
    options = [ScanOptions(batch_size=1, workers=1, screen=screen) for screen in (None, None, True, False)]
    assert [o.stage_options(device).screen for o, device in zip(options, ("cpu", "cuda", "cuda", "cpu"))] == \
        [True, False, True, False]
