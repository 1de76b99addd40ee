"""Where the tool keeps files between runs: one cache folder, overridable by environment. Nothing
is written outside it and a command's own outputs (ONNX Runtime's telemetry files included)."""

from __future__ import annotations

import importlib
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

_import_lock = threading.Lock()


def cache_dir() -> Path:
    """``$COUNTERFEIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/counterfeit-detector`` (``~/.cache/…``)."""
    base = os.environ.get("COUNTERFEIT_CACHE_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "counterfeit-detector"


def import_onnxruntime() -> ModuleType:
    """``onnxruntime``, imported so that the files it keeps per user (a device id and a telemetry
    store, under ``$XDG_CACHE_HOME/Microsoft/DeveloperTools``, chosen once as it is imported) go
    under :func:`cache_dir` instead of the user's home. Import it through here, before anything
    that imports it itself (RapidOCR)."""
    with _import_lock:
        if "onnxruntime" in sys.modules:
            return sys.modules["onnxruntime"]
        before = os.environ.get("XDG_CACHE_HOME")
        os.environ["XDG_CACHE_HOME"] = str(cache_dir() / "onnxruntime")
        try:
            return importlib.import_module("onnxruntime")
        finally:
            if before is None:
                del os.environ["XDG_CACHE_HOME"]
            else:
                os.environ["XDG_CACHE_HOME"] = before
