"""counterfeit prevalence: the stratified estimator on hand-checked cases, its coverage, and the CLI."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from detector.cli import app
from detector.prevalence import Stratum, domain_share, estimate, korn_graubard
from scripts.studies.prevalence_coverage import NIGHT, simulate
from tests.detector.test_sampling import decisions, write_decisions

runner = CliRunner()


def test_stratified_estimates_match_hand_computed_values():
    # flagged: 10 listings, 5 reviewed, 4 fake; clear: 90 listings, 10 reviewed, 1 fake
    result = estimate({"flagged|A": Stratum(10, 5, 4), "clear|A": Stratum(90, 10, 1)})
    assert result["counterfeit_per_10000"]["value"] == pytest.approx(1700)  # (10 * 0.8 + 90 * 0.1) / 100
    # var(T_f) = 10^2 (1 - 5/10) 0.2 / 5 = 2; var(T_c) = 90^2 (1 - 10/90) 0.1 / 10 = 72; var(p) = 74 / 100^2
    assert result["counterfeit_per_10000"]["stderr"] == pytest.approx(10_000 * 74**0.5 / 100)
    assert result["precision"]["value"] == pytest.approx(0.8)
    assert result["recall"]["value"] == pytest.approx(8 / 17)
    assert result["missed_per_10000"]["value"] == pytest.approx(900)
    for metric in ("counterfeit_per_10000", "missed_per_10000", "precision", "recall"):
        assert result[metric]["low"] < result[metric]["value"] < result[metric]["high"]


def test_zero_counts_give_the_clopper_pearson_bound_not_a_zero_width_interval():
    assert korn_graubard(0.0, 0.0, labels=50, strata=1) == (0.0, pytest.approx(1 - 0.025 ** (1 / 50)))
    found = domain_share([Stratum(10_000, 50, 0), Stratum(5_000, 50, 0)])
    assert found.value == 0 and found.high > 0.03


def test_intervals_cover_the_true_rates_at_the_nominal_rate():
    for metric, row in simulate(NIGHT, n=400, reviews=100, seed=1).items():
        assert row["coverage"] >= 0.90, (metric, row)


def label(path, truth):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["label"] = truth(row)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_sample_then_prevalence_from_the_command_line(tmp_path):
    out = write_decisions(tmp_path / "scan", decisions())
    sampled = runner.invoke(app, ["sample", str(out), "--n", "60"])
    assert sampled.exit_code == 0, sampled.output
    assert "not sampled: 5 decision(s) with verdict error" in sampled.output and "60 listings to review" in sampled.output
    reviewed = out / "review" / "sample.csv"
    # every flagged listing is fake, and cleared ones of brand A are fake one time in ten
    label(reviewed, lambda row: "counterfeit" if row["verdict"] == "flagged" or row["listing_id"].endswith("7") and row["brand"] == "A" else "genuine")
    result = runner.invoke(app, ["prevalence", str(out), "--labels", str(reviewed), "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    assert got["listings"] == 530 and got["flagged"] == 30 and got["labels"] == 60
    assert got["precision"]["value"] == 1.0 and got["precision"]["high"] == 1.0
    assert json.loads((out / "review" / "prevalence.json").read_text())["labels"] == 60
    table = runner.invoke(app, ["prevalence", str(out), "--labels", str(reviewed)])
    assert "counterfeits per 10,000 listings" in table.output and "recall" in table.output


@pytest.mark.parametrize("problem, message", [
    ("bad label", "label 'maybe' is not one of counterfeit, genuine"),
    ("unknown id", "review_id 'R99999' is not in this scan's sample"),
    ("no sample", "no usable review sample"),
    ("rescanned", "decisions.jsonl changed after the sample was drawn"),
    ("stratum unlabelled", "every stratum needs at least one reviewed listing"),
])
def test_bad_review_input_gives_one_clear_line(tmp_path, problem, message):
    out = write_decisions(tmp_path / "scan", decisions())
    assert runner.invoke(app, ["sample", str(out), "--n", "30"]).exit_code == 0
    reviewed = out / "review" / "sample.csv"
    label(reviewed, lambda row: "genuine")
    if problem == "bad label":
        label(reviewed, lambda row: "maybe")
    elif problem == "unknown id":
        reviewed.write_text(reviewed.read_text() + "R99999,,,,,,,,,genuine\n")
    elif problem == "no sample":
        (out / "review" / "design.json").unlink()
    elif problem == "rescanned":
        write_decisions(out, decisions(clear_b=201))
    else:
        label(reviewed, lambda row: "" if row["verdict"] == "flagged" else "genuine")
    result = runner.invoke(app, ["prevalence", str(out), "--labels", str(reviewed)])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
