"""Image side of the counterfeit detector: decoding, embedding, matching, policy, scanning, reports
and the CLI. The public API is re-exported here (see :mod:`detector.api`)::

    from detector import Detector, build_index
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = [
    "Checked", "Decision", "Detector", "Finding", "IndexInfo", "LookupResult", "Match", "Policy", "ScanSummary",
    "Upload", "UserError", "build_index", "load_policy",
]

_HOMES = {
    "Decision": "detector.decisions", "Finding": "detector.decisions", "Match": "detector.decisions",
    "Detector": "detector.api", "IndexInfo": "detector.api", "LookupResult": "detector.api",
    "Upload": "detector.api", "Checked": "detector.api",
    "build_index": "detector.api", "ScanSummary": "detector.scanner", "Policy": "detector.policy",
    "load_policy": "detector.policy", "UserError": "detector.errors",
}

if TYPE_CHECKING:
    from detector.api import Checked, Detector, IndexInfo, LookupResult, Upload, build_index
    from detector.decisions import Decision, Finding, Match
    from detector.errors import UserError
    from detector.policy import Policy, load_policy
    from detector.scanner import ScanSummary


def __getattr__(name: str):
    """Import the public names on first use, so that ``counterfeit --help`` stays fast."""
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'detector' has no attribute {name!r}")
