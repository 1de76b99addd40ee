"""The stage registry: a new kind of evidence is one module and one registry line; a scan's
decisions depend on its input, never on what the cache holds or which engine ran it; a stage
whose version changed is run again, never misread."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

import detector.stages as stages
from detector import Detector
from detector.decisions import Decision
from detector.images import decode_image, read_image_bytes
from detector.stages import Stage, register_stage
from tests.detector.toy_stage import NEAR, Brightness

DOCS = Path(__file__).resolve().parents[2] / "docs" / "stages.md"


@pytest.fixture(scope="module")
def loaded(demo_index):
    with Detector.open(demo_index, device="cpu", cache=False) as detector:
        yield detector


def decisions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "decisions.jsonl").read_text(encoding="utf-8").splitlines()]


def test_every_stage_has_a_name_and_a_version_and_docs_list_them_in_order():
    names = [stage.name for stage in stages.STAGES]
    assert len(set(names)) == len(names) >= 10
    assert all(isinstance(stage.version, str) and stage.version for stage in stages.STAGES)
    listed = re.findall(r"^\| \d+ \| `([a-z_]+)` \|", DOCS.read_text(encoding="utf-8"), re.M)
    assert listed == names


def test_a_registered_toy_stage_adds_its_field_to_decisions_and_lookups_where_its_gate_lets_it(
        monkeypatch, tmp_path, demo_data, loaded):
    monkeypatch.setattr(stages, "STAGES", list(stages.STAGES))
    register_stage(Brightness(), after="search")
    assert [s.name for s in stages.STAGES].index("brightness") == [s.name for s in stages.STAGES].index("search") + 1

    summary = loaded.scan(demo_data.listings, tmp_path / "out")
    got = decisions(tmp_path / "out")
    measured = [d for d in got if "brightness" in d["evidence"]]
    skipped = [d for d in got if "brightness" not in d["evidence"]]
    assert measured and skipped
    assert summary.summary["stages"]["brightness"] == "mean-grey-v1"
    for d in measured:  # its value is the photo's own, read by name
        photo = decode_image(read_image_bytes(demo_data.folder / d["image"]), draft=loaded.embedder.decode_size)
        grey = photo.convert("L")
        expected = round(sum(v * n for v, n in enumerate(grey.histogram())) / (grey.width * grey.height), 2)
        assert d["evidence"]["brightness"]["brightness"] == pytest.approx(expected, abs=0.01)
    # the gate: the top similarity over every view; photos the first stage stopped never reach it
    assert all(d["matches"][0]["similarity"] >= NEAR - 1e-4 for d in measured)
    assert all(not d["matches"] or d["matches"][0]["similarity"] < NEAR + 1e-4 for d in skipped)
    assert all(Decision.from_record(d).evidence == d["evidence"] for d in got)

    photo = demo_data.folder / measured[0]["image"]
    result = loaded.lookup(photo)
    assert result.evidence == {"brightness": measured[0]["evidence"]["brightness"]}
    assert result.as_json()["evidence"] == result.evidence
    dark = tmp_path / "dark.png"
    Image.new("RGB", (300, 200), (5, 5, 5)).save(dark)
    assert loaded.lookup(dark).evidence == {}


def test_the_registry_refuses_a_stage_whose_needs_come_later_or_whose_fields_repeat(monkeypatch):
    monkeypatch.setattr(stages, "STAGES", list(stages.STAGES))

    class Early(Brightness):
        name = "early"

    with pytest.raises(ValueError, match="needs hits"):
        register_stage(Early(), after="read")

    class Twice(Stage):
        name, version, adds = "twice", "v1", ("hits",)

    with pytest.raises(ValueError, match="adds hits"):
        register_stage(Twice())
    assert "early" not in [s.name for s in stages.STAGES] and "twice" not in [s.name for s in stages.STAGES]


def test_decisions_do_not_depend_on_what_the_cache_holds(tmp_path, demo_data, loaded):
    """A cold default scan, a warm rescan, and a default scan after a --no-screen scan or after
    lookups filled the cache all decide every listing alike."""
    cold = loaded.scan(demo_data.listings, tmp_path / "cold")
    assert cold.screened_out > 0  # the demo has a photo the first stage stops: the case that used to differ
    expected = decisions(tmp_path / "cold")

    with loaded.using(cache=tmp_path / "warm.sqlite") as warm:
        warm.scan(demo_data.listings, tmp_path / "first")
        warm.scan(demo_data.listings, tmp_path / "again")
    with loaded.using(cache=tmp_path / "full.sqlite") as full:
        full.scan(demo_data.listings, tmp_path / "no-screen", screen=False)
        after_full = full.scan(demo_data.listings, tmp_path / "after-full")
    with loaded.using(cache=tmp_path / "lookup.sqlite") as looked:
        for name in sorted({d["image"] for d in expected if d["image"]}):
            looked.lookup(demo_data.folder / name)
        after_lookup = looked.scan(demo_data.listings, tmp_path / "after-lookup")
    assert after_full.from_cache == after_lookup.from_cache == 38
    for name in ("first", "again", "after-full", "after-lookup"):
        assert decisions(tmp_path / name) == expected, name


def test_a_stage_whose_version_changed_is_run_again_not_misread(monkeypatch, tmp_path, demo_data, loaded):
    out = tmp_path / "out"
    first = loaded.scan(demo_data.listings, out)
    verify = stages.stage_named("verify")
    monkeypatch.setattr(type(verify), "version", verify.version + "-next")
    again = loaded.scan(demo_data.listings, out)
    assert again.photos_this_run == 38 and again.summary["stages"]["verify"].endswith("-next")
    assert decisions(out) == decisions(tmp_path / "out") and first.listings == again.listings
    state = out / ".scan" / "state.sqlite"
    import sqlite3

    db = sqlite3.connect(state)
    versions = {json.loads(record)["stages"]["verify"]["version"] for (record,) in db.execute("SELECT record FROM rows")}
    db.close()
    assert versions == {verify.version}
    unchanged = loaded.scan(demo_data.listings, out)  # nothing changed since: nothing is run again
    assert unchanged.photos_this_run == 0
