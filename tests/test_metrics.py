"""The continual metrics on hand-computed matrices, and agreement with Avalanche."""

import pytest

from contmm.scoring.metrics import (
    acc,
    bwt,
    compute_metrics,
    forgetting,
    fwt,
    intransigence,
    maa,
    metric_details,
    mft,
    per_task,
    stage_averages,
    why_missing,
)

# Row 0 before tuning, row i after task i; three tasks.
R = [
    [0.1, 0.2, 0.3],
    [0.9, 0.1, 0.2],
    [0.6, 0.8, 0.4],
    [0.5, 0.7, 0.9],
]


def test_metrics_on_a_hand_computed_matrix():
    assert acc(R) == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    assert mft(R) == pytest.approx((0.9 + 0.8 + 0.9) / 3)
    assert maa(R) == pytest.approx((0.9 + (0.6 + 0.8) / 2 + (0.5 + 0.7 + 0.9) / 3) / 3)
    assert bwt(R) == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    # Task 0 peaked at 0.9 (row 1), task 1 at 0.8 (row 2).
    assert forgetting(R) == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    # Before task 1 it scored 0.1 (row 1) against 0.2 zero-shot; task 2: 0.4 against 0.3.
    assert fwt(R) == pytest.approx(((0.1 - 0.2) + (0.4 - 0.3)) / 2)


def test_forgetting_uses_the_best_earlier_score_not_the_first():
    rising = [[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.9, 0.5, 0.0], [0.2, 0.5, 0.8]]
    assert forgetting(rising) == pytest.approx(((0.9 - 0.2) + (0.5 - 0.5)) / 2)
    assert bwt(rising) == pytest.approx(((0.2 - 0.5) + (0.5 - 0.5)) / 2)


def test_per_task_terms_and_the_seen_task_average_after_each_stage():
    assert per_task(R, "bwt") == pytest.approx({0: 0.5 - 0.9, 1: 0.7 - 0.8})
    assert per_task(R, "forgetting") == pytest.approx({0: 0.9 - 0.5, 1: 0.8 - 0.7})
    assert per_task(R, "fwt") == pytest.approx({1: 0.1 - 0.2, 2: 0.4 - 0.3})
    assert per_task(R, "mft") == pytest.approx({0: 0.9, 1: 0.8, 2: 0.9})
    assert stage_averages(R) == pytest.approx([0.9, (0.6 + 0.8) / 2, (0.5 + 0.7 + 0.9) / 3])
    details = metric_details(R, ["a", "b", "c"])
    assert details["per_task_metrics"]["acc"] == {"a": 0.5, "b": 0.7, "c": 0.9}
    assert details["missing_metrics"] == {}


def test_intransigence_against_single_task_reference_scores():
    reference = [1.0, 0.9, 0.8]  # each task tuned alone from the same start
    # The diagonal is 0.9, 0.8, 0.9: learnt 0.1 and 0.1 less, and 0.1 more, than alone.
    assert intransigence(R, reference) == pytest.approx((0.1 + 0.1 - 0.1) / 3)
    assert compute_metrics(R, reference)["intransigence"] == pytest.approx(0.1 / 3)
    assert "intransigence" not in compute_metrics(R)
    assert intransigence(R, [1.0, None, 0.8]) is None
    with pytest.raises(ValueError, match="2 reference scores for 3 tasks"):
        intransigence(R, [1.0, 0.9])


def test_a_missing_cell_makes_the_metrics_that_need_it_none_and_says_which_cell():
    holes = [row[:] for row in R]
    holes[1][1] = None  # task 1 not evaluated after stage 1: FWT needs it, nothing else
    metrics = compute_metrics(holes)
    assert metrics["fwt"] is None
    assert metrics["acc"] == pytest.approx(acc(R))
    assert metrics["bwt"] == pytest.approx(bwt(R))
    assert why_missing(holes, ["a", "b", "c"]) == {"fwt": "R[1][1] (b after stage 1) was not evaluated"}
    assert per_task(holes, "fwt") == {1: None, 2: pytest.approx(0.1)}


def test_the_lower_matrix_holds_every_cell_the_metrics_need():
    lower = [row[:] for row in R]
    lower[1][2] = None  # row 1 scores the tuned task 0 and the next task 1 only
    assert compute_metrics(lower) == compute_metrics(R)
    assert why_missing(lower, ["a", "b", "c"]) == {}


def test_a_single_task_has_no_transfer_or_forgetting_and_says_why():
    metrics = compute_metrics([[0.2], [0.9]])
    assert metrics["acc"] == pytest.approx(0.9)
    assert metrics["bwt"] is None and metrics["forgetting"] is None and metrics["fwt"] is None
    reasons = why_missing([[0.2], [0.9]], ["a"])
    assert reasons == {
        name: "needs at least 2 tasks, the stream has 1" for name in ("bwt", "forgetting", "fwt")
    }


def test_a_matrix_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="T\\+1 rows"):
        compute_metrics(R[1:])


def test_bwt_and_fwt_agree_with_avalanche():
    from avalanche.evaluation.metrics import BWT, ForwardTransfer

    T = len(R[0])
    backward, forward = BWT(), ForwardTransfer()
    for j in range(T):
        forward.update(j, R[0][j], initial=True)
        backward.update(j, R[j + 1][j], initial=True)
    for j in range(1, T):
        forward.update(j, R[j][j])
    for j in range(T):
        backward.update(j, R[T][j])
    # Avalanche leaves out the last task (never forgotten) and the first (no transfer to it).
    expected_bwt = [v for k, v in backward.result().items() if k != T - 1]
    assert bwt(R) == pytest.approx(sum(expected_bwt) / len(expected_bwt))
    expected_fwt = [v for k, v in forward.result().items() if k != 0]
    assert fwt(R) == pytest.approx(sum(expected_fwt) / len(expected_fwt))


def test_forgetting_and_bwt_agree_with_avalanches_forgetting():
    from avalanche.evaluation.metrics import Forgetting

    T = len(R[0])
    forgetting_metric = Forgetting()
    for j in range(T):
        forgetting_metric.update(j, R[j + 1][j], initial=True)
    for j in range(T):
        forgetting_metric.update(j, R[T][j])
    avalanche = forgetting_metric.result()
    # Avalanche's forgetting is R[t_j][j] - R[T][j]: minus our per-task BWT.
    for j, value in per_task(R, "bwt").items():
        assert value == pytest.approx(-avalanche[j])
    # Ours is max-based; in R every task peaks at its own stage, where the two coincide.
    assert per_task(R, "forgetting") == pytest.approx({j: avalanche[j] for j in range(T - 1)})
