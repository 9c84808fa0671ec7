"""The score matrix R of a run, with what goes beside it: the same cells scored leniently
and what the strategies reported after each row.

R has T+1 rows: row 0 is the model before the first task, row ``row_after(j)`` the model
after tuning on task j. Cells that were not evaluated are None.
"""

from __future__ import annotations

from collections.abc import Sequence

from contmm.scoring.evaluation import Evaluation
from contmm.scoring.metrics import compute_metrics, metric_details


def row_after(task_id: int) -> int:
    """The row of R (and the stage) that holds the scores after tuning on task ``task_id``."""
    return task_id + 1


class ScoreMatrix:
    def __init__(self, tasks: Sequence[str]) -> None:
        self.tasks = list(tasks)
        self.strict: list[list[float | None]] = [[None] * len(tasks) for _ in range(len(tasks) + 1)]
        self.lenient: list[list[float | None]] = [[None] * len(tasks) for _ in range(len(tasks) + 1)]
        self.reports: list[dict] = [{} for _ in range(len(tasks) + 1)]

    def record(self, row: int, evaluation: Evaluation) -> None:
        for task_id, score in evaluation.scores.items():
            if task_id >= len(self.tasks):  # a held-out task (contmm/scoring/held_out.py): not a column of R
                continue
            self.strict[row][task_id] = score
            self.lenient[row][task_id] = evaluation.lenient_scores[task_id]
        self.reports[row] = evaluation.report

    def scores(self, row: int) -> dict[str, float | None]:
        """The logged values of ``row``: every scored task, and the metrics of the stream cut
        after that row (its first ``row`` tasks)."""
        values = {f"score/{self.tasks[j]}": v for j, v in enumerate(self.strict[row]) if v is not None}
        if row:
            metrics = compute_metrics([cells[:row] for cells in self.strict[: row + 1]])
            values.update({f"metric/{name}": v for name, v in metrics.items() if v is not None})
        return values

    def results(self, reference: Sequence[float | None] | None = None) -> dict:
        """The matrix's part of ``results.json``: R, its metrics and their details."""
        results = {
            "matrix": self.strict,
            "metrics": compute_metrics(self.strict, reference),
            **metric_details(self.strict, self.tasks, reference),
        }
        # Stored only where leniency changed a score, so a strict scorer adds nothing.
        if self.lenient != self.strict:
            results["lenient_matrix"] = self.lenient
            results["lenient_metrics"] = compute_metrics(self.lenient)
        results["strategy_reports"] = self.reports
        return results

    def state_dict(self) -> dict:
        return {"matrix": self.strict, "lenient_matrix": self.lenient, "reports": self.reports}

    def load_state_dict(self, state: dict) -> None:
        self.strict, self.lenient, self.reports = state["matrix"], state["lenient_matrix"], state["reports"]
