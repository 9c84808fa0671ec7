"""Scorers: normalisation, list references, VQA accuracy, option letters, strict and lenient."""

from __future__ import annotations

import pytest

from contmm.scoring.text import (
    SCORERS,
    contains,
    exact_match,
    extract_choice,
    get_scorer,
    multiple_choice,
    normalize,
    score,
    vqa_accuracy,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Red", "red"),
        ("red!", "red"),
        ("a red car.", "red car"),
        ("The dog", "dog"),
        ("two", "2"),
        ("Two dogs", "2 dogs"),
    ],
)
def test_normalize_ignores_case_punctuation_articles_and_number_words(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_exact_match_compares_normalised_text() -> None:
    assert exact_match("Two.", "2") == 1.0
    assert exact_match("The Cat", "cat") == 1.0
    assert exact_match("black cat", "cat") == 0.0


def test_exact_match_accepts_any_of_several_references() -> None:
    assert exact_match("dog", ["cat", "Dog", "puppy"]) == 1.0
    assert exact_match("horse", ["cat", "dog"]) == 0.0


def test_empty_reference_list_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        exact_match("dog", [])


@pytest.mark.parametrize(
    ("agreeing", "expected"),
    # Leave-one-out over 10 annotators, k of them giving the prediction: the k subsets that drop
    # a match hold k - 1 matches, the other 10 - k hold k; each scores min(matches / 3, 1).
    [
        (0, 0.0),
        (1, (1 * 0 + 9 * 1 / 3) / 10),  # 0.3
        (2, (2 * 1 / 3 + 8 * 2 / 3) / 10),  # 0.6
        (3, (3 * 2 / 3 + 7 * 1) / 10),  # 0.9
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_vqa_accuracy_averages_leave_one_annotator_out(agreeing: int, expected: float) -> None:
    references = ["cat"] * agreeing + ["dog"] * (10 - agreeing)
    assert vqa_accuracy("Cat", references) == pytest.approx(expected)


def test_vqa_accuracy_with_fewer_than_four_references_is_exact_match_against_any() -> None:
    assert vqa_accuracy("two", "2") == 1.0
    assert vqa_accuracy("two", ["2"]) == 1.0
    assert vqa_accuracy("three", "2") == 0.0
    assert vqa_accuracy("cat", ["cat", "cat", "cat"]) == 1.0  # not 2/3 from subsets of two
    assert vqa_accuracy("cat", ["dog", "cat"]) == 1.0


def test_vqa_accuracy_with_fewer_references_leaves_each_one_out() -> None:
    # 2 of 4 agree: the 2 subsets dropping a match hold 1 match, the other 2 hold 2.
    assert vqa_accuracy("cat", ["cat", "cat", "dog", "dog"]) == pytest.approx((2 / 3 + 4 / 3) / 4)


@pytest.mark.parametrize(
    ("prediction", "letter"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("B)", "B"),
        ("The answer is B", "B"),
        ("The answer is (C).", "C"),
        ("b) cat", "B"),
        ("(d) a dog", "D"),
        ("A cat, so the answer is B", "B"),
        ("I think it is C", "C"),
        ("A cat", "A"),
        ("A", "A"),
        ("Answer: D, because it is red", "D"),
    ],
)
def test_extract_choice_reads_common_answer_formats(prediction: str, letter: str) -> None:
    assert extract_choice(prediction) == letter


@pytest.mark.parametrize("prediction", ["", "a cat", "none of them", "e.g. the U.S. flag"])
def test_extract_choice_finds_no_letter_in_plain_text(prediction: str) -> None:
    assert extract_choice(prediction) is None


def test_multiple_choice_compares_the_chosen_letter() -> None:
    assert multiple_choice("The answer is (B).", "B") == 1.0
    assert multiple_choice("b) cat", "(B)") == 1.0
    assert multiple_choice("C", "B") == 0.0
    assert multiple_choice("A cat, so the answer is B", "A") == 0.0


def test_multiple_choice_scores_zero_without_a_letter() -> None:
    assert multiple_choice("a cat", "A") == 0.0


def test_multiple_choice_reference_without_a_letter_is_an_error() -> None:
    with pytest.raises(ValueError, match="no option letter"):
        multiple_choice("B", "cat")


def test_contains_matches_whole_words_only() -> None:
    assert contains("it is red", "red") == 1.0
    assert contains("It is Red!", "the red") == 1.0
    assert contains("reddish", "red") == 0.0
    assert contains("a red car", "red car") == 1.0
    assert contains("it is blue", ["green", "blue"]) == 1.0


@pytest.mark.parametrize(
    ("scorer", "prediction", "answer", "strict", "lenient"),
    [
        ("exact_match", "red", "red", 1.0, 1.0),
        ("exact_match", "it is red", "red", 0.0, 1.0),
        ("exact_match", "blue", "red", 0.0, 0.0),
        ("vqa_accuracy", "it is a cat", ["cat"] * 2 + ["dog"] * 8, 0.0, 1.0),
        # Lenient credits any one annotator's answer, so it ignores the VQA consensus.
        ("vqa_accuracy", "cat", ["cat"] + ["dog"] * 9, 0.3, 1.0),
        ("multiple_choice", "(B)", "B", 1.0, 1.0),
        ("multiple_choice", "C", "B", 0.0, 0.0),
    ],
)
def test_score_returns_strict_and_lenient(
    scorer: str, prediction: str, answer: str | list[str], strict: float, lenient: float
) -> None:
    result = score(scorer, prediction, answer)
    assert result == {"strict": pytest.approx(strict), "lenient": pytest.approx(lenient)}
    assert result["lenient"] >= result["strict"]


def test_every_scorer_accepts_a_string_or_a_list_and_stays_in_unit_interval() -> None:
    for name in SCORERS:
        for answer in ("B", ["B", "(B)", "C"]):
            for prediction in ("B", "it is b", "nothing"):
                result = score(name, prediction, answer)
                assert 0.0 <= result["strict"] <= result["lenient"] <= 1.0


def test_unknown_scorer_names_it_and_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="'nope'") as error:
        get_scorer("nope")
    for name in SCORERS:
        assert name in str(error.value)
