"""Scan outputs in standard formats: decisions.jsonl, flagged.csv and summary.json.

Each file is written under a temporary name and moved into place only when complete, so a
reader never sees half a file. Strings in flagged.csv are neutralised against spreadsheet
formula injection (a leading ``= + - @`` or control character gets a ``'`` prefix), and no text
output carries a raw control character (NUL and the like, which a listing's title or id can hold):
each is written as U+FFFD, as an HTML parser shows it. decisions.jsonl escapes them as JSON does.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

from detector.decisions import FLAGGED, Decision
from index.files import AtomicText, atomic_write

FLAGGED_COLUMNS = (
    "listing_id", "score", "brand", "product_id", "similarity", "threshold", "price", "currency",
    "catalogue_price", "catalogue_currency", "price_ratio", "seller_id", "seller_authorized", "title",
    "image", "reference_image", "reasons",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def printable(text: str) -> str:
    """``text`` with every control character but tab and line breaks replaced by U+FFFD."""
    return _CONTROL.sub("\ufffd", text)


def csv_safe(value) -> str | float | int:
    """A cell value a spreadsheet will show as text: strings that could start a formula get a ``'``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return value
    text = printable(str(value))
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_text(cell: str) -> str:
    """The text :func:`csv_safe` was given for a string cell (its ``'`` guard taken off)."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(_FORMULA_START) else cell


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


class DecisionWriter:
    """Stream decisions into decisions.jsonl and flagged.csv; both appear only on ``commit``."""

    def __init__(self, out_dir: Path):
        self.jsonl = AtomicText(out_dir / "decisions.jsonl")
        self.csv_file = AtomicText(out_dir / "flagged.csv", newline="")
        self.csv = csv.writer(self.csv_file.handle)
        self.csv.writerow(FLAGGED_COLUMNS)

    def write(self, decision: Decision, extra: dict | None = None) -> None:
        record = decision.as_record()
        if extra:
            record.update(extra)
        self.jsonl.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        if decision.verdict == FLAGGED:
            row = {**record, "reasons": "; ".join(decision.reasons)}
            self.csv.writerow([csv_safe(row.get(column)) for column in FLAGGED_COLUMNS])

    def commit(self) -> None:
        self.jsonl.commit()
        self.csv_file.commit()

    def abort(self) -> None:
        self.jsonl.abort()
        self.csv_file.abort()


def write_json(path: Path, payload: dict) -> None:
    """Write a JSON document atomically."""
    atomic_write(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
