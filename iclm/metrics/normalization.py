"""Answer normalisation for exact match, as in the paper: only the continuation's first word counts.

A model may go on generating after the answer ("on. The light...", "B. On an image, ..."), so
ACRE compares the first word and RAVEN the first word when it is a single letter A-H ("B.", "(c)"),
lower-cased and stripped of punctuation. A longer first word is no letter answer: "Because ..." or
"All ..." must not count as "B" or "A".
"""

from __future__ import annotations

import string

_PUNCTUATION = string.punctuation + "\u201c\u201d\u2018\u2019"
FORMATS = ("word", "letter")


def answer_format(reference: str) -> str:
    """``"letter"`` for RAVEN-style references (a single letter A-H), else ``"word"``."""
    return "letter" if len(reference.strip()) == 1 and reference.strip().upper() in "ABCDEFGH" else "word"


def normalize_answer(text: str, format: str = "word") -> str:
    """First word of ``text``, lower-cased, without surrounding punctuation; with ``format="letter"``
    only a one-letter first word a-h counts. ``""`` when there is no such word."""
    if format not in FORMATS:
        raise ValueError(f"Unknown answer format {format!r}; expected one of {', '.join(FORMATS)}.")
    for word in str(text).split():
        word = word.strip(_PUNCTUATION).lower()
        if word:
            if format == "letter":
                return word if len(word) == 1 and word in "abcdefgh" else ""
            return word
    return ""
