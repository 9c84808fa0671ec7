"""The continual metrics on hand-computed matrices, and agreement with Avalanche."""

import pytest

from contmm.metrics import acc, bwt, compute_metrics, forgetting, fwt, maa, mft

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


def test_a_missing_cell_makes_the_metrics_that_need_it_none():
    holes = [row[:] for row in R]
    holes[1][1] = None  # task 1 not evaluated after stage 1: FWT needs it, nothing else
    metrics = compute_metrics(holes)
    assert metrics["fwt"] is None
    assert metrics["acc"] == pytest.approx(acc(R))
    assert metrics["bwt"] == pytest.approx(bwt(R))


def test_a_single_task_has_no_transfer_or_forgetting():
    metrics = compute_metrics([[0.2], [0.9]])
    assert metrics["acc"] == pytest.approx(0.9)
    assert metrics["bwt"] is None and metrics["forgetting"] is None and metrics["fwt"] is None


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
