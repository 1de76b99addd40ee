"""Per-brand thresholds follow each brand's impostor distribution."""

from __future__ import annotations

import numpy as np

from index.calibrate import CalibrationRule, CountRule, GateRule, calibrate_counts, calibrate_gate, calibrate_thresholds


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_crowded_brand_gets_a_higher_threshold():
    rng = np.random.default_rng(0)
    base = unit(rng.standard_normal((1, 64)))
    crowded = unit(base + 0.05 * rng.standard_normal((30, 64)))   # near the others
    lonely = unit(rng.standard_normal((30, 64)))
    neighbours = unit(base + 0.05 * rng.standard_normal((30, 64)))
    result = calibrate_thresholds({"crowded": crowded, "lonely": lonely, "neighbours": neighbours})
    assert result["crowded"]["threshold"] > result["lonely"]["threshold"]
    assert result["crowded"]["source"] == "brand" and result["crowded"]["impostors"] == 60


def test_threshold_is_quantile_plus_margin_within_bounds():
    rule = CalibrationRule(quantile=0.5, margin=0.1, floor=0.0, ceiling=1.0, min_impostors=1)
    a = unit([[1.0, 0.0]])
    others = unit([[0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])  # similarities to a: 0.6, 0.8, 0.0
    result = calibrate_thresholds({"a": a, "b": others}, rule=rule)
    assert result["a"]["threshold"] == 0.7  # median 0.6 + 0.1


def test_floor_ceiling_and_fallbacks():
    a = unit([[1.0, 0.0]])
    alone = calibrate_thresholds({"a": a})
    assert alone["a"] == {"threshold": 0.75, "source": "default", "impostors": 0}
    background = unit(np.tile([[1.0, 0.01]], (25, 1)))  # near-copies of a: would push over the ceiling
    capped = calibrate_thresholds({"a": a}, background)
    assert capped["a"]["threshold"] == 0.9 and capped["a"]["source"] == "brand"
    far = unit(np.tile([[-1.0, 0.0]], (25, 1)))
    assert calibrate_thresholds({"a": a}, far)["a"]["threshold"] == 0.55


def test_small_brands_borrow_the_pooled_distribution():
    rng = np.random.default_rng(3)
    big = {f"b{i}": unit(rng.standard_normal((10, 16))) for i in range(3)}
    small = unit(rng.standard_normal((1, 16)))
    rule = CalibrationRule(min_impostors=25)
    result = calibrate_thresholds({**big, "small": small}, rule=rule)
    assert result["small"]["source"] == "brand"  # 30 impostors from the big brands
    tiny = calibrate_thresholds({"x": unit(rng.standard_normal((1, 16))), "y": unit(rng.standard_normal((30, 16)))}, rule=rule)
    assert tiny["x"]["source"] == "brand" and tiny["y"]["source"] == "pooled"


def test_impostors_seen_through_several_views_score_their_best_view():
    rule = CalibrationRule(quantile=1.0, margin=0.0, floor=0.0, ceiling=1.0, min_impostors=1)
    a = unit([[1.0, 0.0]])
    b_single = unit([[0.0, 1.0]])
    b_views = unit(np.array([[[0.0, 1.0], [0.8, 0.6]]]))  # its second view looks like a
    plain = calibrate_thresholds({"a": a, "b": b_single}, rule=rule)
    viewed = calibrate_thresholds({"a": a, "b": b_single}, rule=rule, queries_by_brand={"a": a[:, None], "b": b_views})
    assert plain["a"]["threshold"] == 0.0 and viewed["a"]["threshold"] == 0.8


def test_product_counts_sit_above_what_impostors_reach():
    rule = CountRule(quantile=0.99, margin=1, floor=5, min_impostors=20, default=8)
    crowded = np.r_[np.full(95, 3.0), [10, 12, 20, 30, 40]]  # other brands share its designs
    quiet = np.r_[np.full(99, 2.0), [4]]
    got = calibrate_counts({"Crowded": crowded, "Quiet": quiet, "Tiny": np.array([2.0, 3.0])}, rule)
    assert got["Crowded"]["product_inliers"] == int(np.ceil(np.quantile(crowded, 0.99))) + 1 == 32
    assert got["Quiet"]["product_inliers"] == 5  # the floor: chance layouts of 3-4 keypoints are common
    assert got["Tiny"]["product_source"] == "pooled"
    assert calibrate_counts({"Alone": np.zeros(0)}, rule)["Alone"] == {
        "product_inliers": 8, "product_source": "default", "product_impostors": 0}


def test_gate_level_sits_a_margin_below_a_low_quantile_of_the_brands_own_edits():
    rng = np.random.default_rng(0)
    tight, loose = rng.uniform(0.8, 0.9, 200), rng.uniform(0.4, 0.9, 200)
    found = calibrate_gate({"tight": tight, "loose": loose}, GateRule(quantile=0.05, margin=0.02))
    assert found["tight"]["gate_level"] == round(float(np.quantile(tight, 0.05)) - 0.02, 4)
    assert found["loose"]["gate_level"] < found["tight"]["gate_level"] - 0.3  # a brand's level follows its edits
    assert found["tight"]["gate_source"] == "brand"


def test_a_brand_with_few_edits_borrows_the_pooled_edits_and_none_at_all_stops_nothing():
    found = calibrate_gate({"big": np.linspace(0.5, 0.9, 40), "small": np.array([0.95, 0.96])})
    assert found["small"]["gate_source"] == "pooled" and found["small"]["gate_level"] < 0.6
    assert calibrate_gate({"alone": np.array([0.9])})["alone"]["gate_level"] is None
