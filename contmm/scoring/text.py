"""Scorers: a prediction and its reference answer(s) -> a score in [0, 1].

A task names its scorer (``Task.scorer``); evaluation looks it up in :data:`SCORERS` with
:func:`get_scorer`, or calls :func:`score` for a strict and a lenient score at once.

A reference answer is a string, or a list of strings when several annotators answered
(VQA style). Every scorer accepts both.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence

Answer = str | Sequence[str]
Scorer = Callable[[str, Answer], float]

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

# One whitespace-separated token that names an option: "(B)", "B)" / "b)" / "B." / "b.", or a bare
# capital "B". Trailing ",;:!?" are stripped first so "B," and "B:" count as bare.
_OPTION = re.compile(r"\((?P<paren>[A-Za-z])\)\.?|(?P<marked>[A-Za-z])[.)]|(?P<bare>[A-Z])")
# One-letter English words written as capitals; before a lowercase word they read as words.
_LETTER_WORDS = {"A", "I"}


def normalize(text: str) -> str:
    """VQA-style normalisation: lower case, no punctuation or articles, number words as digits."""
    words = _PUNCTUATION.sub(" ", text.lower()).split()
    return " ".join(NUMBER_WORDS.get(w, w) for w in words if w not in ARTICLES)


def _references(answer: Answer) -> list[str]:
    """The reference answers as a list; a string is one reference."""
    references = [answer] if isinstance(answer, str) else list(answer)
    if not references:
        raise ValueError("empty list of reference answers")
    return references


def exact_match(prediction: str, answer: Answer) -> float:
    """1 if the normalised prediction equals any normalised reference, else 0."""
    pred = normalize(prediction)
    return float(any(pred == normalize(ref) for ref in _references(answer)))


def vqa_accuracy(prediction: str, answer: Answer) -> float:
    """VQA soft accuracy, in the official leave-one-annotator-out form.

    The simple form is ``min(#references equal to the prediction / 3, 1)``. The official VQA
    evaluator instead averages that over the 10 subsets of 9 annotators that leave one out, and
    so does this function: ``mean_i min(#matches among references other than i / 3, 1)``. With
    fewer than 10 references it leaves out each reference given in turn. Fewer than 4
    references leave subsets too small for "3 annotators agree" (3 matching references
    would score 2/3), so they are scored as an exact match against any of them.

    Matching uses :func:`normalize`, which is close to but not identical with the official
    evaluator's answer processing.
    """
    references = _references(answer)
    if len(references) < 4:
        return exact_match(prediction, references)
    pred = normalize(prediction)
    matches = [pred == normalize(ref) for ref in references]
    total = sum(matches)
    # Leaving reference i out removes its match, if it matched, from the count.
    return sum(min((total - left_out) / 3, 1.0) for left_out in matches) / len(matches)


def extract_choice(text: str) -> str | None:
    """The option letter (upper case) a text chooses, or None when it names none.

    Tokens are read left to right and the first clear one wins:

    - a letter in parentheses, or followed by ")" or "." ("(B)", "b)", "B.") -- either case;
    - a bare capital letter ("B", "The answer is B"), except "A" or "I" followed by a lowercase
      word ("A cat", "I think"), which read as the article and the pronoun.

    Only when no clear letter exists is the first such "A"/"I" taken, so "A cat" alone chooses A
    but "A cat, so B" chooses B. Lowercase letters count only when marked, since bare "a" is
    the article. "e.g." and "U.S." are not options: the whole token must match.
    """
    tokens = text.split()
    fallback = None
    for position, token in enumerate(tokens):
        match = _OPTION.fullmatch(token.rstrip(",;:!?"))
        if match is None:
            continue
        letter = match["paren"] or match["marked"] or match["bare"]
        following = tokens[position + 1] if position + 1 < len(tokens) else ""
        if match["bare"] in _LETTER_WORDS and following[:1].islower():
            fallback = fallback or letter
            continue
        return letter.upper()
    return fallback


def multiple_choice(prediction: str, answer: Answer) -> float:
    """1 if the option letter the prediction chooses (:func:`extract_choice`) is a reference's.

    References are letters ("B", "(B)", "b)"); a prediction naming no letter scores 0.
    """
    chosen = extract_choice(prediction)
    correct = set()
    for ref in _references(answer):
        letter = extract_choice(ref)
        if letter is None:
            raise ValueError(f"multiple-choice reference {ref!r} names no option letter")
        correct.add(letter)
    return float(chosen in correct)


def contains(prediction: str, answer: Answer) -> float:
    """1 if any normalised reference occurs as whole words in the normalised prediction.

    Lenient: "red" is in "it is red" but not in "reddish".
    """
    # normalize() leaves single spaces between words, so padding both sides with a space
    # makes substring search respect word boundaries.
    pred = f" {normalize(prediction)} "
    return float(any(f" {normalize(ref)} " in pred for ref in _references(answer)))


SCORERS: dict[str, Scorer] = {
    "exact_match": exact_match,
    "vqa_accuracy": vqa_accuracy,
    "multiple_choice": multiple_choice,
    "contains": contains,
}


def get_scorer(name: str) -> Scorer:
    """The scorer registered under ``name``; an unknown name lists the known ones."""
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; known: {sorted(SCORERS)}")
    return SCORERS[name]


def score(scorer_name: str, prediction: str, answer: Answer) -> dict[str, float]:
    """``{"strict": s, "lenient": l}`` for one sample.

    ``strict`` is the named scorer's score; ``lenient = max(strict, contains(...))`` also credits
    a prediction that states the reference inside a longer answer, so lenient >= strict always.
    With a list of references ``contains`` needs only one of them, so for ``vqa_accuracy``
    lenient is 1 whenever any single annotator's answer appears (no consensus is asked for).
    Both keys are always present, so per-sample dicts average key by key.
    """
    strict = get_scorer(scorer_name)(prediction, answer)
    return {"strict": strict, "lenient": max(strict, contains(prediction, answer))}
