"""Answer normalisation for exact match, as in the paper: only the continuation's first word counts.

A model may go on generating after the answer ("on. The light...", "B. On an image, ..."), so
ACRE compares the first word and RAVEN the first letter (A-H), lower-cased and stripped of
punctuation.
"""

from __future__ import annotations

import string

_PUNCTUATION = string.punctuation + "\u201c\u201d\u2018\u2019"
FORMATS = ("word", "letter")


def answer_format(reference: str) -> str:
    """``"letter"`` for RAVEN-style references (a single letter A-H), else ``"word"``."""
    return "letter" if len(reference.strip()) == 1 and reference.strip().upper() in "ABCDEFGH" else "word"


def normalize_answer(text: str, format: str = "word") -> str:
    """First word of ``text`` (``format="word"``) or its first letter (``"letter"``), lower-cased,
    without surrounding punctuation; ``""`` when there is no word."""
    if format not in FORMATS:
        raise ValueError(f"Unknown answer format {format!r}; expected one of {', '.join(FORMATS)}.")
    for word in str(text).split():
        word = word.strip(_PUNCTUATION).lower()
        if word:
            return word[:1] if format == "letter" else word
    return ""
