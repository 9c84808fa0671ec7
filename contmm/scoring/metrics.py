"""Continual-learning metrics: pure functions of the score matrix R.

R has T+1 rows and T columns: row 0 is the model before the first continual stage, row i
the model after tuning on task i (1-based), column j task j (0-based here: ``R[i][j]`` is
the score on the j-th task after stage i). A cell that was not evaluated is ``None``; a
metric that needs a missing cell is ``None`` with the reason, never computed from a
stand-in zero.

With ``t_j = j + 1`` the stage that trains column j:

```text
ACC (final average, "MFN")  = mean_j R[T][j]
MFT (plasticity)            = mean_j R[t_j][j]
MAA                         = mean_{t>=1} mean_{j<t} R[t][j]
BWT                         = mean_{j<T-1} (R[T][j] - R[t_j][j])
Forgetting                  = mean_{j<T-1} (max_{t_j<=l<T} R[l][j] - R[T][j])
FWT                         = mean_{j>=1} (R[t_j - 1][j] - R[0][j])
Intransigence               = mean_j (S_j - R[t_j][j])
```

FWT < 0 is negative forward transfer (tuning on earlier tasks made the model worse at a
future one). ``S_j`` is the score of task j tuned alone from the same starting model (a
single-task reference run); intransigence > 0: the continual model learns task j less
well than it could.

Every metric but MAA is a mean of per-task terms; those terms are reported as well.

A held-out task (never trained, not a column of R) has one score per stage, h_0..h_T; its
retention is ``h_T / h_0``, the share of what the model could do before tuning that survives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

Matrix = Sequence[Sequence[float | None]]
Cell = tuple[int, int]


@dataclass(frozen=True)
class PerTaskMetric:
    """A mean over ``tasks(T)`` of ``term(values of cells(j, T))``."""

    tasks: Callable[[int], range]
    cells: Callable[[int, int], list[Cell]]
    term: Callable[[list[float]], float]


PER_TASK: dict[str, PerTaskMetric] = {
    "acc": PerTaskMetric(lambda T: range(T), lambda j, T: [(T, j)], lambda v: v[0]),
    "mft": PerTaskMetric(lambda T: range(T), lambda j, T: [(j + 1, j)], lambda v: v[0]),
    "bwt": PerTaskMetric(lambda T: range(T - 1), lambda j, T: [(T, j), (j + 1, j)], lambda v: v[0] - v[1]),
    "forgetting": PerTaskMetric(
        lambda T: range(T - 1),
        lambda j, T: [(T, j)] + [(row, j) for row in range(j + 1, T)],
        lambda v: max(v[1:]) - v[0],
    ),
    "fwt": PerTaskMetric(lambda T: range(1, T), lambda j, T: [(j, j), (0, j)], lambda v: v[0] - v[1]),
}


def tasks_to_evaluate(stage: int, num_tasks: int, mode: str) -> list[int]:
    """The columns of row ``stage`` that are scored: all of them (``full``), or (``lower``)
    all at row 0 and at the last row, else the tasks tuned so far and the next one."""
    if mode == "full" or stage in (0, num_tasks):
        return list(range(num_tasks))
    return list(range(stage + 1))


def _check(R: Matrix) -> int:
    if not R or len(R) != len(R[0]) + 1:
        rows, cols = len(R), len(R[0]) if R else 0
        raise ValueError(f"R must have T+1 rows for T tasks, got {rows} rows and {cols} columns")
    return len(R[0])


def _missing(R: Matrix, cells: list[Cell]) -> Cell | None:
    return next(((i, j) for i, j in cells if R[i][j] is None), None)


def per_task(R: Matrix, name: str) -> dict[int, float | None]:
    """The per-task terms of metric ``name`` (task index -> value; None where a cell is missing)."""
    T = _check(R)
    metric = PER_TASK[name]
    terms = {}
    for j in metric.tasks(T):
        cells = metric.cells(j, T)
        terms[j] = None if _missing(R, cells) else metric.term([R[i][k] for i, k in cells])
    return terms


def stage_averages(R: Matrix) -> list[float | None]:
    """Mean score of the tasks tuned so far after each stage t >= 1 (the curve MAA averages)."""
    _check(R)
    return [
        None if any(R[t][j] is None for j in range(t)) else sum(R[t][j] for j in range(t)) / t
        for t in range(1, len(R))
    ]


def _mean(values: Sequence[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def acc(R: Matrix) -> float | None:
    return _mean(list(per_task(R, "acc").values()))


def mft(R: Matrix) -> float | None:
    return _mean(list(per_task(R, "mft").values()))


def maa(R: Matrix) -> float | None:
    return _mean(stage_averages(R))


def bwt(R: Matrix) -> float | None:
    return _mean(list(per_task(R, "bwt").values()))


def forgetting(R: Matrix) -> float | None:
    return _mean(list(per_task(R, "forgetting").values()))


def fwt(R: Matrix) -> float | None:
    return _mean(list(per_task(R, "fwt").values()))


def intransigence_per_task(R: Matrix, reference: Sequence[float | None]) -> dict[int, float | None]:
    """``S_j - R[t_j][j]`` per task, with ``S_j`` the single-task reference score of task j."""
    T = _check(R)
    if len(reference) != T:
        raise ValueError(f"{len(reference)} reference scores for {T} tasks")
    return {
        j: None if reference[j] is None or R[j + 1][j] is None else reference[j] - R[j + 1][j]
        for j in range(T)
    }


def intransigence(R: Matrix, reference: Sequence[float | None]) -> float | None:
    return _mean(list(intransigence_per_task(R, reference).values()))


def retention(scores: Sequence[float | None]) -> float | None:
    """A held-out task's final score over its score before tuning; None where either is
    missing or the model scored 0 before tuning (nothing to retain)."""
    before, final = scores[0], scores[-1]
    return None if before is None or final is None or before == 0 else final / before


def mean_retention(held_out: dict[str, Sequence[float | None]]) -> float | None:
    """The mean retention of the held-out tasks; None without any, or if one's is None."""
    values = [retention(scores) for scores in held_out.values()]
    return _mean(values) if values else None


def compute_metrics(R: Matrix, reference: Sequence[float | None] | None = None) -> dict[str, float | None]:
    """The mean of every metric (and intransigence given reference scores S_j)."""
    _check(R)
    metrics = {
        "acc": acc(R),
        "mft": mft(R),
        "maa": maa(R),
        "bwt": bwt(R),
        "forgetting": forgetting(R),
        "fwt": fwt(R),
    }
    if reference is not None:
        metrics["intransigence"] = intransigence(R, reference)
    return metrics


def why_missing(R: Matrix, tasks: Sequence[str]) -> dict[str, str]:
    """For each metric that is None, the reason: too few tasks, or the first cell it needs
    that was not evaluated."""
    T = _check(R)
    reasons = {}

    def cell(i: int, j: int) -> str:
        return f"R[{i}][{j}] ({tasks[j]} after stage {i}) was not evaluated"

    for name, metric in PER_TASK.items():
        if not metric.tasks(T):
            reasons[name] = f"needs at least 2 tasks, the stream has {T}"
            continue
        for j in metric.tasks(T):
            if (missing := _missing(R, metric.cells(j, T))) is not None:
                reasons[name] = cell(*missing)
                break
    seen = [(t, j) for t in range(1, T + 1) for j in range(t)]
    if (missing := _missing(R, seen)) is not None:
        reasons["maa"] = cell(*missing)
    return reasons


def metric_details(R: Matrix, tasks: Sequence[str], reference: Sequence[float | None] | None = None) -> dict:
    """Per-task terms by task name (intransigence too, given the reference scores S_j), the
    seen-task average after each stage, and why each missing metric is missing."""
    per_task_terms = {name: per_task(R, name) for name in PER_TASK}
    if reference is not None:
        per_task_terms["intransigence"] = intransigence_per_task(R, reference)
    reasons = why_missing(R, tasks)
    if reference is not None and None in per_task_terms["intransigence"].values():
        j = next(j for j, v in per_task_terms["intransigence"].items() if v is None)
        reasons["intransigence"] = f"no reference score or R[{j + 1}][{j}] for {tasks[j]}"
    return {
        "per_task_metrics": {
            name: {tasks[j]: v for j, v in terms.items()} for name, terms in per_task_terms.items()
        },
        "stage_averages": stage_averages(R),
        "missing_metrics": reasons,
    }
