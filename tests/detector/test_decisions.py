"""The decision record: docs/decisions.md names every code the detector can write, and a record
read back from decisions.jsonl is the decision that was written."""

from __future__ import annotations

import re
from pathlib import Path

from detector.decisions import FINDINGS, VISUAL_STATES, Decision, Finding, Match
from detector.images import ERROR_CODES

ROOT = Path(__file__).resolve().parents[2]


def documented(section: str) -> set[str]:
    """The codes in the first column of the table under ``## section`` in docs/decisions.md."""
    text = (ROOT / "docs" / "decisions.md").read_text(encoding="utf-8")
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", body, flags=re.M))


def test_the_docs_list_every_code_and_no_other():
    assert documented("Visual states") == set(VISUAL_STATES)
    assert documented("Findings") == set(FINDINGS)
    assert documented("Error codes") == set(ERROR_CODES)


def test_every_image_error_the_code_raises_has_a_documented_code():
    source = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "detector").glob("*.py"))
    raised = set(re.findall(r'ImageError\(\s*"([a-z_]+)"', source))
    assert raised and raised <= set(ERROR_CODES)


def test_a_record_reads_back_as_the_same_decision():
    decision = Decision(listing_id="L1", verdict="flagged", score=0.7, visual_state="copy", visual_match=True,
                        findings=[Finding("title_cue", 0.7, "title has counterfeit cue(s): 'replica'")],
                        matches=[Match("A", "A-1", 0.91234567, 0.8, "copy", inliers=12, alignment=0.97,
                                       reference_image="refs/a.jpg")])
    record = decision.as_record()
    assert record["findings"] == [{"code": "title_cue", "weight": 0.7, "text": "title has counterfeit cue(s): 'replica'"}]
    assert record["matches"] == [{"brand": "A", "product_id": "A-1", "similarity": 0.9123, "threshold": 0.8,
                                  "visual_state": "copy", "inliers": 12, "alignment": 0.97, "unique": None,
                                      "colour": None, "region": None, "sharpness": None, "residual": None}]
    assert "reference_path" not in record
    assert Decision.from_record({**record, "a_future_field": 1}).as_record() == record
