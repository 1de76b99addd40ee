"""Output helpers: spreadsheet-safe cells, the Wilson interval, atomic files."""

from __future__ import annotations

import pytest

from detector.outputs import csv_safe, wilson_interval, write_json


@pytest.mark.parametrize(
    "value, expected",
    [
        ("=1+1", "'=1+1"), ("+SUM(A1)", "'+SUM(A1)"), ("-2", "'-2"), ("@cmd", "'@cmd"), ("\tx", "'\tx"),
        ("＝1+1", "'＝1+1"), ("plain", "plain"), ("a=b", "a=b"), (None, ""), (True, "yes"), (-3.5, -3.5), (7, 7),
    ],
)
def test_csv_safe(value, expected):
    assert csv_safe(value) == expected


def test_wilson_interval_matches_hand_computed_values():
    lo, hi = wilson_interval(10, 100)
    assert lo == pytest.approx(0.0552, abs=1e-4) and hi == pytest.approx(0.1744, abs=1e-4)
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(0, 50)[1] == pytest.approx(0.0714, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_write_json_leaves_no_temporary_files(tmp_path):
    write_json(tmp_path / "s.json", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]
