"""Where the tool keeps files between runs: one cache folder, overridable by environment."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$COUNTERFEIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/counterfeit-detector`` (``~/.cache/…``)."""
    base = os.environ.get("COUNTERFEIT_CACHE_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "counterfeit-detector"
