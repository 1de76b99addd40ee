"""Scan history across nights: repeat offenders, comebacks under new seller ids, trends."""

from __future__ import annotations

import csv
import shutil
import io
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from detector.cli import app

runner = CliRunner()
NIGHT1, NIGHT2 = "2026-11-01", "2026-11-02"
# Sellers are not checked against the authorised lists here, so that the history's own signals
# are the only inconsistency of a full-price listing with a plain title.
POLICY = "[seller]\ncheck = false\n"


def reedit(photo):
    """What a second seller does to a downloaded photo: trim the edges, re-save at low quality."""
    image = Image.open(photo).convert("RGB")
    w, h = image.size
    buffer = io.BytesIO()
    image.crop((w // 30, h // 30, w - w // 30, h - h // 30)).save(buffer, "JPEG", quality=50)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def nights(demo_data, tmp_path_factory):
    """Two nights of listings. Night 1: shop-a sells a cheap 'replica' copy of AUR-000 (flagged).
    Night 2: a new seller, shop-b, re-uses shop-a's photo, re-edited, at full price; shop-a is
    back with another product at full price; two craft sellers list unrelated things."""
    folder = tmp_path_factory.mktemp("nights")
    with open(demo_data.truth, newline="") as fh:
        copies = {row["product_id"]: row["listing_id"] for row in csv.DictReader(fh) if row["kind"] == "copy_cheap_rogue"}
    source = demo_data.folder / "listings" / f"{copies['AUR-000']}.jpg"
    (folder / "n1-shop-a.jpg").write_bytes(source.read_bytes())
    (folder / "n2-shop-b.jpg").write_bytes(reedit(source))
    (folder / "n2-shop-a.jpg").write_bytes((demo_data.folder / "listings" / f"{copies['BEL-001']}.jpg").read_bytes())
    for name, seed in (("craft-1.jpg", 1), ("craft-2.jpg", 2)):  # noise: like no product
        pixels = np.random.default_rng(seed).integers(0, 256, (240, 240, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name, "JPEG", quality=90)
    catalogue = {row["product_id"]: row["price"] for row in csv.DictReader(open(demo_data.catalog, newline=""))}
    header = ["listing_id", "seller_id", "title", "price", "currency", "image"]
    tables = {
        NIGHT1: [["N1-1", "shop-a", "Aurora replica AAA", "20.00", "USD", "n1-shop-a.jpg"],
                 ["N1-2", "crafts-1", "handmade bowl", "15.00", "USD", "craft-1.jpg"]],
        NIGHT2: [["N2-1", "shop-b", "Aurora AUR-000", catalogue["AUR-000"], "USD", "n2-shop-b.jpg"],
                 ["N2-2", "shop-a", "Bellmont BEL-001", catalogue["BEL-001"], "USD", "n2-shop-a.jpg"],
                 ["N2-3", "crafts-2", "handmade cup", "12.00", "USD", "craft-2.jpg"],
                 ["N2-4", "crafts-1", "handmade bowl", "15.00", "USD", "craft-1.jpg"]],
    }
    for night, rows in tables.items():
        with open(folder / f"{night}.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([header, *rows])
    (folder / "policy.toml").write_text(POLICY)
    return folder


def scan_night(folder, index, night, history, out, policy_text=POLICY):
    (folder / "run-policy.toml").write_text(policy_text)
    result = runner.invoke(app, ["scan", str(folder / f"{night}.csv"), "--index", str(index), "--out", str(out),
                                 "--history", str(history), "--night", night, "--policy", str(folder / "run-policy.toml"),
                                 "--no-cache"])
    assert result.exit_code == 0, result.output
    decisions = {d["listing_id"]: d for d in map(json.loads, (out / "decisions.jsonl").read_text().splitlines())}
    return result, decisions, json.loads((out / "summary.json").read_text())


def test_second_night_finds_the_comeback_and_the_repeat_offender(nights, demo_index, tmp_path):
    history = tmp_path / "history.sqlite"
    _, first, _ = scan_night(nights, demo_index, NIGHT1, history, tmp_path / "n1")
    assert first["N1-1"]["verdict"] == "flagged" and first["N1-2"]["verdict"] == "clear"
    printed, second, summary = scan_night(nights, demo_index, NIGHT2, history, tmp_path / "n2")

    comeback = second["N2-1"]
    assert comeback["verdict"] == "flagged"
    assert comeback["comeback"][0]["seller_id"] == "shop-a" and comeback["comeback"][0]["listing_id"] == "N1-1"
    assert [f["code"] for f in comeback["findings"] if f["weight"] > 0] == ["comeback"]
    repeat = second["N2-2"]
    assert repeat["verdict"] == "flagged" and repeat["prior_flags"] == [NIGHT1]
    assert [f["code"] for f in repeat["findings"] if f["weight"] > 0] == ["repeat_offender"]
    assert second["N2-3"]["verdict"] == "clear" and not second["N2-3"]["comeback"]
    assert second["N2-4"]["verdict"] == "clear" and not second["N2-4"]["prior_flags"]

    h = summary["history"]
    assert (h["night"], h["repeat_offenders"], h["comeback_sellers"]) == (NIGHT2, 1, 1)
    assert [t["night"] for t in h["trend"]] == [NIGHT1, NIGHT2]
    assert "1 repeat offender(s), 1 probable comeback seller(s)" in printed.output
    report = (tmp_path / "n2" / "report.html").read_text()
    assert "Repeat offenders and comebacks" in report and "<svg" in report and "shop-b" in report

    seller = runner.invoke(app, ["history", "seller", str(history), "shop-b", "--json"])
    record = json.loads(seller.output)
    assert record["comeback_of"] == [{"night": NIGHT2, "listing_id": "N2-1", "comeback_of": "shop-a"}]
    assert record["linked_sellers"][0]["seller_id"] == "shop-a"
    assert record["linked_sellers"][0]["evidence"]["other_listing_id"] == "N1-1"
    table = runner.invoke(app, ["history", "seller", str(history), "shop-a"])
    assert table.exit_code == 0 and NIGHT1 in table.output and NIGHT2 in table.output and "shop-b" in table.output

    # a rerun of night 2 replaces its record instead of counting it twice
    scan_night(nights, demo_index, NIGHT2, history, tmp_path / "n2")
    trend = json.loads(runner.invoke(app, ["history", "brand", str(history), "--json"]).output)
    assert [(t["night"], t["listings"]) for t in trend] == [(NIGHT1, 2), (NIGHT2, 4)]


def test_the_policy_decides_how_much_history_counts(nights, demo_index, tmp_path):
    history = tmp_path / "history.sqlite"
    scan_night(nights, demo_index, NIGHT1, history, tmp_path / "n1")
    quiet = POLICY + "[history]\nprior_flag_weight = 0.0\ncomeback_weight = 0.0\n"
    _, second, summary = scan_night(nights, demo_index, NIGHT2, history, tmp_path / "n2", quiet)
    assert second["N2-1"]["verdict"] == "clear" and second["N2-2"]["verdict"] == "clear"
    assert {"code": "comeback", "weight": 0.0} in [{k: f[k] for k in ("code", "weight")}
                                                   for f in second["N2-1"]["findings"]]  # still reported
    assert summary["history"]["comeback_sellers"] == 1 and summary["history"]["repeat_offenders"] == 0


def test_history_commands_explain_a_missing_file_and_a_bad_night(tmp_path, demo_index, nights):
    missing = runner.invoke(app, ["history", "seller", str(tmp_path / "none.sqlite"), "x"])
    assert missing.exit_code != 0 and "no scan history at" in missing.output
    bad = runner.invoke(app, ["scan", str(nights / f"{NIGHT1}.csv"), "--index", str(demo_index), "--out",
                              str(tmp_path / "o"), "--history", str(tmp_path / "h.sqlite"), "--night", "yesterday"])
    assert bad.exit_code != 0 and "--night 'yesterday' is not a date" in bad.output
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database" * 100)
    broken = runner.invoke(app, ["scan", str(nights / f"{NIGHT1}.csv"), "--index", str(demo_index), "--out",
                                 str(tmp_path / "o2"), "--history", str(garbage), "--no-cache"])
    assert broken.exit_code != 0 and f"scan history {garbage}" in broken.output
    assert "progress" not in broken.output and "Traceback" not in broken.output


def test_reviewers_labels_carry_into_the_next_night(nights, demo_index, tmp_path):
    from detector.labels import LabelStore

    history = tmp_path / "history.sqlite"
    scan_night(nights, demo_index, NIGHT1, history, tmp_path / "n1")
    store = LabelStore(tmp_path / "n1")
    store.add("N1-1", "counterfeit", "ann")
    store.add("N1-1", "genuine", "bo")  # a change of mind: the latest label counts
    store.close()
    night3 = "2026-11-03"
    with open(nights / f"{night3}.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["listing_id", "seller_id", "title", "price", "currency", "image"],
                                  ["N3-1", "shop-a", "Aurora replica AAA", "20.00", "USD", "n1-shop-a.jpg"],
                                  ["N3-2", "shop-c", "Aurora replica AAA", "20.00", "USD", "n1-shop-a.jpg"]])
    printed, third, summary = scan_night(nights, demo_index, night3, history, tmp_path / "n3")
    cleared = third["N3-1"]
    assert cleared["verdict"] == "clear" and cleared["visual_match"]
    finding = next(f for f in cleared["findings"] if f["code"] == "cleared_by_review")
    assert finding["weight"] == 0 and "cleared by review on 20" in finding["text"] and "'bo'" in finding["text"]
    assert "repeat_offender" not in [f["code"] for f in cleared["findings"]]  # a cleared flag is no offence
    other = third["N3-2"]  # the same photo from another seller is not cleared, and no comeback of a cleared flag
    assert other["verdict"] == "flagged" and not other["comeback"]
    assert "cleared_by_review" not in [f["code"] for f in other["findings"]]
    assert summary["history"]["cleared_by_review"] == 1 and "1 listing(s) cleared by review" in printed.output


def test_a_confirmed_counterfeit_makes_a_repeat_offender(nights, demo_index, tmp_path):
    from detector.labels import LabelStore

    history = tmp_path / "history.sqlite"
    scan_night(nights, demo_index, NIGHT1, history, tmp_path / "n1")
    store = LabelStore(tmp_path / "n1")
    store.add("N1-1", "counterfeit", "ann")
    store.close()
    _, second, _ = scan_night(nights, demo_index, NIGHT2, history, tmp_path / "n2")
    repeat = next(f for f in second["N2-2"]["findings"] if f["code"] == "repeat_offender")
    assert second["N2-2"]["verdict"] == "flagged" and repeat["weight"] == 0.9
    assert "1 listing(s) confirmed counterfeit by review, last N1-1 of 2026-11-01" in repeat["text"]
    shutil.rmtree(tmp_path / "n1")  # the labels were copied into the history: they outlive the scan folder
    _, again, _ = scan_night(nights, demo_index, NIGHT2, history, tmp_path / "n2")
    assert next(f for f in again["N2-2"]["findings"] if f["code"] == "repeat_offender")["weight"] == 0.9


def test_checks_at_posting_count_from_their_own_night_and_never_hide_a_comeback(tmp_path):
    """A listing flagged when it was posted (counterfeit serve) is a prior flag of its seller, and
    its photo one a new seller's comeback links to, in that very night's scan; the posting does
    not make its seller "seen before" that night, and it is not a night of the trend."""
    from detector.history import ScanHistory
    from detector.records import pack_vector, packed_bytes

    vector = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    vector /= np.linalg.norm(vector)
    history = ScanHistory(tmp_path / "history.sqlite", durable=True)
    ids = history.record_checks([
        {"at": "2026-11-02T09:30:00+00:00", "answer": {"verdict": "flagged"}, "photo": ("abc", packed_bytes(pack_vector(vector))),
         "decision": {"listing_id": "", "seller_id": "shop-a", "verdict": "flagged", "brand": "Aurora"}},
        {"at": "2026-11-02T09:31:00+00:00", "answer": {"verdict": "clear"}, "photo": None,
         "decision": {"listing_id": "P-2", "seller_id": "shop-c", "verdict": "clear"}},
    ])
    assert [c["listing_id"] for c in history.checks()] == [f"check-{ids[0]}", "P-2"]
    tonight = history.prior_evidence("2026-11-02", [(0, "other-digest", vector)], link_similarity=0.95)
    assert tonight.prior_flags("shop-a") == ["2026-11-02"]
    assert "shop-a" not in tonight.known_sellers
    assert [(link.seller_id, link.listing_id) for link in tonight.comebacks(0, "shop-b")] == [("shop-a", f"check-{ids[0]}")]
    the_night_before = history.prior_evidence("2026-11-01", [(0, "abc", vector)], link_similarity=0.95)
    assert the_night_before.prior_flags("shop-a") == [] and not the_night_before.links
    the_next_night = history.prior_evidence("2026-11-03", [], link_similarity=0.95)
    assert {"shop-a", "shop-c"} <= the_next_night.known_sellers
    assert history.trend() == []
    history.close()
