"""The benchmark metrics, on tiny cases checked by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("evaluate", Path(__file__).resolve().parents[2] / "scripts" / "evaluate.py")
evaluate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(evaluate)


def test_precision_recall_f1():
    result = evaluate.precision_recall_f1([True, True, False, False], [True, False, True, False])
    assert (result["tp"], result["fp"], result["fn"]) == (1, 1, 1)
    assert result["precision"] == 0.5 and result["recall"] == 0.5 and result["f1"] == 0.5
    assert evaluate.precision_recall_f1([False], [False])["f1"] == 0.0


def test_recall_at_k():
    ranked = [["a", "b"], ["c", "a"], ["x", "y"]]
    assert evaluate.recall_at_k(ranked, ["a", "a", "a"], 1) == pytest.approx(1 / 3)
    assert evaluate.recall_at_k(ranked, ["a", "a", "a"], 2) == pytest.approx(2 / 3)


def test_micro_average_precision():
    truth = {"q1": "r1", "q2": "r2"}
    # ranked: (q1,r1) correct, (q2,r9) wrong, (q2,r2) correct → AP = (1/1 + 2/3) / 2
    predictions = [("q1", "r1", 0.9), ("q2", "r9", 0.8), ("q2", "r2", 0.7)]
    assert evaluate.micro_average_precision(predictions, truth) == pytest.approx((1 + 2 / 3) / 2)
    # a query with no true reference only adds false positives
    assert evaluate.micro_average_precision([("q3", "r1", 0.95)] + predictions, truth) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert evaluate.micro_average_precision([], {}) == 0.0


def test_score_combines_everything():
    decisions = [
        {"listing_id": "A", "verdict": "flagged", "matches": [{"product_id": "P1", "similarity": 0.9}]},
        {"listing_id": "B", "verdict": "flagged", "matches": [{"product_id": "P2", "similarity": 0.8}]},
        {"listing_id": "C", "verdict": "clear", "matches": [{"product_id": "P9", "similarity": 0.3}]},
    ]
    truth = [
        {"listing_id": "A", "should_flag": "1", "kind": "copy_cheap_rogue", "product_id": "P1"},
        {"listing_id": "B", "should_flag": "0", "kind": "authorized_fullprice", "product_id": "P2"},
        {"listing_id": "C", "should_flag": "0", "kind": "unrelated_cheap", "product_id": ""},
        {"listing_id": "D", "should_flag": "1", "kind": "copy_cheap_rogue", "product_id": "P4"},
    ]
    result = evaluate.score(decisions, truth)
    assert result["precision"] == 0.5 and result["recall"] == 0.5
    assert result["recall_at_1"] == pytest.approx(2 / 3)
    assert result["false_flag_rate_authorized_fullprice"] == 1.0
    assert result["per_kind_accuracy"] == {"authorized_fullprice": 0.0, "copy_cheap_rogue": 0.5, "unrelated_cheap": 1.0}
    assert result["missing_decisions"] == 1


def test_sweep_settings_are_written_into_the_policy_sections():
    import tomllib

    user = "[match]\nmin_similarity = 0.5\n"
    changed = tomllib.loads(evaluate.with_keys(user, {"match": {"threshold_offset": -0.05},
                                             "verify": {"confirm_inliers": 6, "strong_similarity": 0.8}}))
    assert changed == {"match": {"min_similarity": 0.5, "threshold_offset": -0.05},
                       "verify": {"confirm_inliers": 6, "strong_similarity": 0.8}}


def test_a_brand_split_decides_each_brand_under_constants_chosen_on_the_others(tmp_path):
    # brands A and B have fakes, C only innocent listings; setting "A" flags A's listings, "B"
    # B's, "AB" both. Chosen on all brands, "AB" would catch every fake; chosen on the others,
    # A is decided under "B" (the first of the best on B and C) and B under "A": both missed.
    truth = [{"listing_id": f"{b}{i}", "should_flag": "1" if b != "C" else "0", "kind": "k", "brand": b,
              "product_id": f"{b}-P"} for b in "ABC" for i in range(2)]
    truth.append({"listing_id": "N1", "should_flag": "0", "kind": "unrelated", "brand": "", "product_id": ""})
    grid = [(name, {"match": {"threshold_offset": offset}}) for name, offset in (("B", 0.01), ("A", 0.02), ("AB", 0.03))]
    flags = {"0.01": "B", "0.02": "A", "0.03": "AB"}
    scan_dir = tmp_path / "scan"
    scan_dir.mkdir()

    def scan(policy):
        text = policy.read_text() if policy is not None else ""
        brands = next((b for key, b in flags.items() if key in text), "")
        lines = [evaluate.json.dumps({"listing_id": t["listing_id"], "matches": [],
                                      "verdict": "flagged" if t["brand"] and t["brand"] in brands else "clear"})
                 for t in truth]
        (scan_dir / "decisions.jsonl").write_text("\n".join(lines) + "\n")

    split = evaluate.brand_split(scan, scan_dir, tmp_path, None, truth, 3, grid)
    chosen = {tuple(g["held_brands"]): g["chosen"] for g in split["groups"]}
    assert chosen == {("A",): "B", ("B",): "A", ("C",): "AB"}
    assert split["recall"] == 0.0 and split["f1"] == 0.0
    groups = evaluate.brand_groups(truth, 3)
    assert {groups[f"{b}0"] for b in "ABC"} == {0, 1, 2} and groups["A0"] == groups["A1"]
    with pytest.raises(SystemExit, match="only 3 brands"):
        evaluate.brand_groups(truth, 4)
    # the scan's outputs are left as the unchanged policy made them
    assert '"flagged"' not in (scan_dir / "decisions.jsonl").read_text()
