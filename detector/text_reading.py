"""Text read in a picture: the lines RapidOCR finds (the ``rapidocr`` package, whose PP-OCR
detection and recognition models ship in its wheel and run on ONNX Runtime; nothing is
downloaded), each with the reader's confidence and its box. Brand names in listing photos
(:mod:`detector.brand_words`) and the words printed on products (:mod:`detector.product_words`)
are both read here, one engine per reader.

Reading costs about a quarter of a second per photo on one core: the callers read only where the
text can still change a decision (docs/performance.md).
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np
from PIL import Image

from detector.paths import import_onnxruntime

MIN_CONFIDENCE = 0.6
"""Lines the recogniser reads with less confidence than this are ignored."""
DETECT_SIDE = 512
"""The text detector sees the photo with its shorter side at least this (RapidOCR's default, 736,
upsamples the scanner's 448-512 px decodes: 1.7x the cost, no detail gained)."""
TEXT_ID = f"rapidocr3-side{DETECT_SIDE}-conf{MIN_CONFIDENCE}"
"""What text read by this reader is cached under: another detector size or level reads again."""


class Line(NamedTuple):
    """One line of text: what was read, the reader's confidence, and its box (x0, y0, x1, y1) as
    fractions of the picture's width and height."""

    text: str
    score: float
    box: tuple[float, float, float, float]


class TextReader:
    """Reads the lines of text in a picture; safe to share between threads (one read at a time)."""

    def __init__(self):
        import_onnxruntime()  # here, on the caller's thread: it sets the environment while it imports
        self._engine = None
        self._lock = threading.Lock()

    def _ocr(self):
        if self._engine is None:
            from rapidocr import RapidOCR  # after import_onnxruntime (__init__): its files stay in our cache folder

            self._engine = RapidOCR(params={"Global.log_level": "error",  # it reports every model it loads
                                            "Det.limit_side_len": DETECT_SIDE})
        return self._engine

    def lines(self, image: Image.Image) -> list[Line]:
        """The lines read in ``image`` with at least MIN_CONFIDENCE, in the reader's order."""
        pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])  # RapidOCR reads BGR
        with self._lock:
            engine = self._ocr()
            try:
                result = engine(pixels)
            except Exception:  # noqa: BLE001 - a picture it cannot read (a 3000 x 20 strip) shows no text
                return []
        if result.txts is None:
            return []
        height, width = pixels.shape[:2]
        found = []
        for text, score, corners in zip(result.txts, result.scores, result.boxes):
            if score < MIN_CONFIDENCE:
                continue
            xs, ys = np.asarray(corners)[:, 0], np.asarray(corners)[:, 1]
            box = tuple(round(float(min(1.0, max(0.0, v))), 4)
                        for v in (xs.min() / width, ys.min() / height, xs.max() / width, ys.max() / height))
            found.append(Line(str(text), round(float(score), 4), box))
        return found
