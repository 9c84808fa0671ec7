"""Continual-learning metrics: pure functions of the score matrix R.

R has T+1 rows and T columns: row 0 is the model before the first continual stage, row i
the model after tuning on task i (1-based), column j task j (0-based here: ``R[i][j]`` is
the score on the j-th task after stage i). A cell that was not evaluated is ``None``; a
metric that needs a missing cell is ``None``, never computed from a stand-in zero.

With t_j = j + 1 the stage that trains column j:

- ACC (final average, "MFN")  = mean_j R[T][j]
- MFT (plasticity)            = mean_j R[t_j][j]
- MAA                         = mean_{t>=1} mean_{j<t} R[t][j]
- BWT                         = mean_{j<T-1} (R[T][j] - R[t_j][j])
- Forgetting                  = mean_{j<T-1} (max_{t_j<=l<T} R[l][j] - R[T][j])
- FWT                         = mean_{j>=1} (R[t_j - 1][j] - R[0][j]); < 0 is negative
  forward transfer (tuning on earlier tasks made the model worse at a future one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Matrix = Sequence[Sequence[float | None]]


def _mean(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def acc(R: Matrix) -> float | None:
    return _mean(list(R[-1]))


def mft(R: Matrix) -> float | None:
    return _mean([R[j + 1][j] for j in range(len(R[0]))])


def maa(R: Matrix) -> float | None:
    return _mean([_mean([R[t][j] for j in range(t)]) for t in range(1, len(R))])


def bwt(R: Matrix) -> float | None:
    T = len(R[0])
    return _mean([_diff(R[T][j], R[j + 1][j]) for j in range(T - 1)])


def forgetting(R: Matrix) -> float | None:
    T = len(R[0])

    def best_before_end(j: int) -> float | None:
        seen = [R[row][j] for row in range(j + 1, T)]
        return None if any(v is None for v in seen) else max(seen)

    return _mean([_diff(best_before_end(j), R[T][j]) for j in range(T - 1)])


def fwt(R: Matrix) -> float | None:
    return _mean([_diff(R[j][j], R[0][j]) for j in range(1, len(R[0]))])


METRICS: dict[str, Callable[[Matrix], float | None]] = {
    "acc": acc,
    "mft": mft,
    "maa": maa,
    "bwt": bwt,
    "forgetting": forgetting,
    "fwt": fwt,
}


def compute_metrics(R: Matrix) -> dict[str, float | None]:
    """Every metric of :data:`METRICS`; BWT, forgetting and FWT need T >= 2 (else None)."""
    if len(R) != len(R[0]) + 1:
        raise ValueError(f"R must have T+1 rows for T tasks, got {len(R)} rows and {len(R[0])} columns")
    return {name: metric(R) for name, metric in METRICS.items()}
