"""Brand words: a protected brand's name read in a listing photo.

A wordmark (IKEA, DIOR, SAMSUNG printed on the goods) is the brand's mark however it is drawn,
and a counterfeit that redraws or recolours it still spells it. The photo's text is read by
:mod:`detector.text_reading`, and each line is matched to the brands' names as written, or spelt
evasively as titles are (:func:`detector.spelling.misspelt_brand`: N1KE, ADIDASS). A name read
this way is a :class:`detector.marks.Sighting` found by ``word``; the policy counts it as the
brand's mark unless ``[marks] words`` is off.

The scanner reads only photos that could still change verdict: sent on by the screen, looking
like some protected product, and with no registered mark found (docs/performance.md).
"""

from __future__ import annotations

from PIL import Image

from detector.records import Sighting
from detector.spelling import letters, misspelt_brand
from detector.text_reading import TEXT_ID, Line, TextReader

MIN_NAME = 3
"""Brand names shorter than this (HP, LG, X) are not looked for: such strings are read everywhere."""
READER_ID = f"words-{TEXT_ID}-name{MIN_NAME}"
"""What names read by this reader are cached under: another reader, level or name length reads again."""
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

    def __init__(self, brands: list[str], text: TextReader | None = None):
        self.brands = [b for b in brands if len(letters(b)) >= MIN_NAME]
        self.text = (text or TextReader()) if self.brands else None

    def __bool__(self) -> bool:
        return bool(self.brands)

    def find(self, image: Image.Image) -> list[Sighting]:
        """The brand names read in ``image``, one sighting per brand (its best line), best first."""
        return self.named(self.text.lines(image)) if self.text else []

    def named(self, lines: list[Line]) -> list[Sighting]:
        """The brand names in lines already read, one sighting per brand (its best line), best first."""
        best: dict[str, Sighting] = {}
        for line in lines:
            for brand in brands_in(line.text, self.brands):
                if brand not in best or line.score > best[brand].score:
                    best[brand] = Sighting(brand, line.text, 0, False, line.box, line.score, BY_WORD)
        return sorted(best.values(), key=lambda s: -s.score)
