"""Scorers: a prediction and a reference answer -> a score in [0, 1].

A task names its scorer (``Task.scorer``); evaluation looks it up in :data:`SCORERS`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable

ARTICLES = {"a", "an", "the"}
NUMBER_WORDS = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> str:
    """VQA-style normalisation: lower case, no punctuation or articles, number words as digits."""
    words = _PUNCTUATION.sub(" ", text.lower()).split()
    return " ".join(NUMBER_WORDS.get(w, w) for w in words if w not in ARTICLES)


def exact_match(prediction: str, answer: str) -> float:
    return float(normalize(prediction) == normalize(answer))


SCORERS: dict[str, Callable[[str, str], float]] = {"exact_match": exact_match}


def get_scorer(name: str) -> Callable[[str, str], float]:
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; known: {sorted(SCORERS)}")
    return SCORERS[name]
