"""How a brand's name is written: plainly, or evasively (N1ke, adidass, g-u-c-c-i).

Shared by the title check (:mod:`detector.policy`) and the brand names read in listing photos
(:mod:`detector.brand_words`).
"""

from __future__ import annotations

import re
import unicodedata

LEET = str.maketrans({"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
"""Digits and symbols read as the letters they stand in for (1 as l)."""
LEET_I = str.maketrans({"0": "o", "1": "i", "!": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
"""The same, with 1 and ! read as i."""


def normalise(text: str) -> str:
    """Casefolded, control characters dropped, runs of other symbols made one space."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    return re.sub(r"[^\w:]+", " ", text).strip()


def letters(text: str) -> str:
    """The letters and digits of ``text``, casefolded: how a name is compared however it is spaced."""
    return re.sub(r"\W+", "", unicodedata.normalize("NFKC", text).casefold())


def _squeeze(text: str) -> str:
    """Runs of one letter made one (adidass → adidas, addidas → adidas)."""
    return re.sub(r"(.)\1+", r"\1", text)


def misspelt_brand(title: str, brand: str) -> str | None:
    """The word of ``title`` that spells ``brand`` evasively, or ``None``: digits or symbols for
    letters (N1ke), letters spaced or hyphenated apart (g-u-c-c-i), a letter doubled or dropped
    from a double (adidass, Addidas), two neighbours swapped (Nkie). The brand's own spelling, in
    any case, is not evasive; neither is a one-letter change, which real words make (idea, Ikea)."""
    written = " ".join(unicodedata.normalize("NFKC", brand).casefold().split())
    name = letters(brand)
    if len(name) < 3 or not title:
        return None
    words = unicodedata.normalize("NFKC", title).casefold().split()
    tokens = [w.strip(".,;:()[]{}\"'") for w in words]
    spaced = re.findall(r"(?:\b\w\b[\s.\-_*]*){3,}", unicodedata.normalize("NFKC", title).casefold())
    found = [(t, t) for t in tokens] + [(s.strip(), re.sub(r"[\s.\-_*]+", "", s)) for s in spaced]
    found += [(f"{a} {b}", a + b) for a, b in zip(tokens, tokens[1:])]
    for shown, word in found:
        plain = re.sub(r"[\-_.*]+", "", word)
        if plain == name:
            if shown not in (name, written) and min(map(len, re.split(r"[\s\-_.*]+", shown))) == 1:
                return shown  # spelt out letter by letter
            continue
        variants = {plain.translate(LEET), plain.translate(LEET_I)}
        if name in variants:
            return shown
        if plain.isalpha() and len(plain) >= 4 and plain != name and _squeeze(plain) == _squeeze(name):
            return shown
        if len(plain) == len(name) >= 5 and any(plain == name[:i] + name[i + 1] + name[i] + name[i + 2:]
                                                for i in range(len(name) - 1)):
            return shown
    return None
