"""counterfeit sample: the stratified allocation and the sample it writes for reviewers."""

from __future__ import annotations

import csv
import json

import pytest

from detector.errors import UserError
from detector.sampling import allocate, draw_sample, read_frame


def write_decisions(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "decisions.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return folder


def decisions(flagged_a=30, clear_a=300, clear_b=200, errors=5):
    rows = []
    for i in range(flagged_a):
        rows.append({"listing_id": f"F{i}", "verdict": "flagged", "brand": "A", "seller_id": "=HYPERLINK(1)", "reasons": ["r"]})
    for i in range(clear_a):
        rows.append({"listing_id": f"CA{i}", "verdict": "clear", "brand": "A", "seller_id": "s", "reasons": []})
    for i in range(clear_b):
        rows.append({"listing_id": f"CB{i}", "verdict": "clear", "brand": None, "seller_id": "s", "reasons": []})
    rows += [{"listing_id": f"E{i}", "verdict": "error", "brand": None} for i in range(errors)]
    return rows


def test_allocation_splits_by_side_then_by_size_with_a_floor_and_a_cap():
    sizes = allocate({"flagged|A": 30, "flagged|B": 1, "clear|A": 300, "clear|-": 100}, 100, flagged_share=0.25)
    assert sizes == {"flagged|A": 24, "flagged|B": 1, "clear|A": 56, "clear|-": 19}
    assert allocate({"clear|A": 1000, "clear|B": 3}, 10) == {"clear|A": 10, "clear|B": 2}  # one side takes all
    assert allocate({"flagged|A": 5}, 50) == {"flagged|A": 5}  # never more than the stratum holds


def test_sample_is_stratified_reproducible_and_safe_to_open_in_a_spreadsheet(tmp_path):
    out = write_decisions(tmp_path / "scan", decisions())
    design = draw_sample(out, 40, seed=7)
    assert design["excluded"] == {"error": 5}
    assert {k: v["population"] for k, v in design["strata"].items()} == {"clear|-": 200, "clear|A": 300, "flagged|A": 30}
    assert design["sampled"] == sum(v["sampled"] for v in design["strata"].values()) == 40
    with open(out / "review" / "sample.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 40 and len({r["listing_id"] for r in rows}) == 40
    assert all(r["label"] == "" for r in rows) and not any(r["listing_id"].startswith("E") for r in rows)
    assert {r["seller_id"] for r in rows if r["verdict"] == "flagged"} == {"'=HYPERLINK(1)"}
    first = (out / "review" / "sample.csv").read_bytes()
    draw_sample(out, 40, seed=7)
    assert (out / "review" / "sample.csv").read_bytes() == first
    draw_sample(out, 40, seed=8)
    assert (out / "review" / "sample.csv").read_bytes() != first


def test_a_scan_without_decisions_or_with_a_torn_file_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no decisions.jsonl.*counterfeit scan"):
        read_frame(tmp_path)
    (tmp_path / "decisions.jsonl").write_text('{"verdict": "clear"}\n{"verd')
    with pytest.raises(UserError, match="line 2 is not JSON"):
        read_frame(tmp_path)
