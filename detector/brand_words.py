"""Brand words: a protected brand's name read in a listing photo.

A wordmark (IKEA, DIOR, SAMSUNG printed on the goods) is the brand's mark however it is drawn,
and a counterfeit that redraws or recolours it still spells it. The photo's text is read by
RapidOCR (the ``rapidocr`` package, whose PP-OCR detection and recognition models ship in its
wheel and run on ONNX Runtime; nothing is downloaded), and each line is matched to the brands'
names as written, or spelt evasively as titles are (:func:`detector.spelling.misspelt_brand`:
N1KE, ADIDASS). A name read this way is a :class:`detector.marks.Sighting` found by ``word``;
the policy counts it as the brand's mark unless ``[marks] words`` is off.

Reading text costs about a quarter of a second per photo on one core, so the scanner reads only
photos that could still change verdict: sent on by the screen, looking like some protected
product, and with no registered mark found (docs/performance.md).
"""

from __future__ import annotations

import threading

import numpy as np
from PIL import Image

from detector.paths import import_onnxruntime
from detector.records import Sighting
from detector.spelling import letters, misspelt_brand

MIN_CONFIDENCE = 0.6
"""Lines the recogniser reads with less confidence than this are ignored."""
MIN_NAME = 3
"""Brand names shorter than this (HP, LG, X) are not looked for: such strings are read everywhere."""
DETECT_SIDE = 512
"""The text detector sees the photo with its shorter side at least this (RapidOCR's default, 736,
upsamples the scanner's 448-512 px decodes: 1.7x the cost, no detail gained)."""
READER_ID = f"words-rapidocr3-side{DETECT_SIDE}-conf{MIN_CONFIDENCE}-name{MIN_NAME}"
"""What names read by this reader are cached under: another detector size or level reads again."""
BY_WORD = "word"
"""What a brand word's sighting is found by (:attr:`Sighting.found_by`)."""


def brands_in(line: str, brands: list[str]) -> list[str]:
    """The ``brands`` whose name ``line`` spells, as written (any case, spaced or not) or evasively."""
    words = [letters(w) for w in line.split()]
    joined = {"".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, min(len(words), i + 4) + 1)}
    found = []
    for brand in brands:
        name = letters(brand)
        if len(name) >= MIN_NAME and (name in joined or misspelt_brand(line, brand) is not None):
            found.append(brand)
    return found


class WordReader:
    """Reads a photo's text once per call and returns the brands it names, with where."""

    def __init__(self, brands: list[str]):
        self.brands = [b for b in brands if len(letters(b)) >= MIN_NAME]
        if self.brands:
            import_onnxruntime()  # here, on the caller's thread: it sets the environment while it imports
        self._engine = None
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.brands)

    def _ocr(self):
        if self._engine is None:
            from rapidocr import RapidOCR  # after import_onnxruntime (__init__): its files stay in our cache folder

            self._engine = RapidOCR(params={"Global.log_level": "error",  # it reports every model it loads
                                            "Det.limit_side_len": DETECT_SIDE})
        return self._engine

    def find(self, image: Image.Image) -> list[Sighting]:
        """The brand names read in ``image``, one sighting per brand (its best line), best first."""
        pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])  # RapidOCR reads BGR
        with self._lock:
            engine = self._ocr()
            try:
                result = engine(pixels)
            except Exception:  # noqa: BLE001 - a photo it cannot read (a 3000 x 20 strip) shows no name
                return []
        if result.txts is None:
            return []
        height, width = pixels.shape[:2]
        best: dict[str, Sighting] = {}
        for text, score, corners in zip(result.txts, result.scores, result.boxes):
            if score < MIN_CONFIDENCE:
                continue
            xs, ys = np.asarray(corners)[:, 0], np.asarray(corners)[:, 1]
            box = tuple(round(float(min(1.0, max(0.0, v))), 4)
                        for v in (xs.min() / width, ys.min() / height, xs.max() / width, ys.max() / height))
            for brand in brands_in(text, self.brands):
                if brand not in best or score > best[brand].score:
                    best[brand] = Sighting(brand, text, 0, False, box, round(float(score), 4), BY_WORD)
        return sorted(best.values(), key=lambda s: -s.score)
