"""Words printed on a product: what tells siblings of one brand apart when their keypoints do not.

The flavours of one carton design (orange, apple, red grapefruit) share the brand's logo and
layout, so local features establish "one of them" and colour is fooled by shop light; the words
printed on the package still differ. ``index build`` reads each reference photo's words
(:func:`words_of`, stored with the product); the scanner reads a listing photo's words where two
or more siblings of one brand remain (the ``product_words`` stage), and the policy asks
:func:`single_out` whether the words read name one of them.

A word is a run of at least MIN_LETTERS letters, lower-cased (digits, prices and sizes are not
words). Phone photos are read imperfectly ("range&red" for "orange&red", "appdle" for "apple"),
so two words are the same word when they are equal, when the shorter (of at least MIN_PART
letters) is part of the longer, or when both have at least MIN_EDITED letters and one letter
changed, added or dropped turns one into the other.
"""

from __future__ import annotations

import re

from detector.text_reading import TEXT_ID, Line

MIN_LETTERS = 3
MIN_PART = 4
MIN_EDITED = 5
WORDS_ID = f"product-words-{TEXT_ID}-letters{MIN_LETTERS}-v1"
"""What product words are stored and cached under: another reader or word rule reads them again."""

_LETTERS = re.compile(r"[^\W\d_]+")


def words_of(lines: list[Line]) -> list[str]:
    """The distinct words of the lines read, sorted."""
    return sorted({w.lower() for line in lines for w in _LETTERS.findall(line.text) if len(w) >= MIN_LETTERS})


def _one_edit(a: str, b: str) -> bool:
    """Whether one letter changed, added or dropped turns ``a`` into ``b`` (or they are equal)."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    return a[i + (len(a) == len(b)):] == b[i + 1:]


def same_word(a: str, b: str) -> bool:
    """Whether a word read and a word printed are the same word, as a reader misreads (see above)."""
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    if len(short) >= MIN_PART and short in long:
        return True
    return len(short) >= MIN_EDITED and _one_edit(a, b)


def single_out(read: list[str], products: list[list[str] | None]) -> tuple[int, list[str]] | None:
    """Which of ``products`` (each sibling's printed words) the words ``read`` in the photo name:
    the one with strictly more of its words read than any other, counting only words that not
    every one of them has (the brand's name, "juice"), and the words that count for it; ``None``
    when no words were read, a sibling's words are unknown, or no one stands out."""
    if not read or len(products) < 2 or any(words is None for words in products):
        return None
    shared = set.intersection(*(set(words) for words in products))
    found = [[w for w in words if w not in shared and any(same_word(w, r) for r in read)] for words in products]
    counts = [len(f) for f in found]
    best = max(counts)
    if best == 0 or counts.count(best) > 1:
        return None
    chosen = counts.index(best)
    return chosen, found[chosen]
