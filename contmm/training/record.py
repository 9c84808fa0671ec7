"""What a run has measured, stage by stage: the score matrix R, the held-out tasks' scores
and each stage's peak memory. It is kept in every stage checkpoint (a resume restores it),
written to ``results.json`` and logged with step = stage."""

from __future__ import annotations

from collections.abc import Sequence

from lightning.pytorch.loggers import Logger

from contmm.rundir.directory import RunDirectory, summary_table
from contmm.rundir.reading import load_run
from contmm.scoring.evaluation import Evaluation
from contmm.scoring.held_out import HeldOutScores
from contmm.scoring.matrix import ScoreMatrix
from contmm.scoring.metrics import compute_metrics
from contmm.training.peak_memory import StagePeaks
from contmm.training.trainers import run_loggers


class RunRecord:
    """R (a row per stage), the held-out tasks' scores and the stages' peak memory.

    Args:
        tasks: the stream's task names (the columns of R).
        held_out: the held-out task names (scored after the stream's tasks in an evaluation).
        reference: a single-task reference run directory; its diagonal is S_j.
        run: the run directory, where the scores are logged (``logs/*/scores``).
    """

    def __init__(
        self, tasks: Sequence[str], held_out: Sequence[str], reference: str | None, run: RunDirectory
    ):
        self.scores = ScoreMatrix(tasks)
        self.held_out = HeldOutScores(held_out, len(tasks), len(tasks) + 1)
        self.peaks = StagePeaks(len(tasks) + 1)
        # Read now, so that a wrong reference stops the run before any training.
        self.reference_scores = (
            load_run(reference).single_task_scores(list(tasks), "this run's stream") if reference else None
        )
        # One logger pair across all stages, stage = step, so TensorBoard draws the scores
        # of every task over the stream (forgetting curves) without contmm.
        self.loggers = run_loggers(run, "scores")

    def record(self, stage: int, evaluation: Evaluation) -> None:
        """Row ``stage``'s scores and its stage's peak memory (on every rank)."""
        self.scores.record(stage, evaluation)
        self.held_out.record(stage, evaluation)
        self.peaks.record(stage)

    def log(self, stage: int, loggers: list[Logger]) -> None:
        for logger in loggers:
            logger.log_metrics(self.scores.scores(stage) | self.held_out.logged(stage), step=stage)
            logger.save()

    def summary_table(self) -> str:
        """R and its metrics as the table printed at the end of a run."""
        return summary_table(self.scores.tasks, self.scores.strict, compute_metrics(self.scores.strict))

    def results(self) -> dict:
        """The record's part of ``results.json``."""
        return {
            **self.scores.results(self.reference_scores),
            **(self.held_out.results() if self.held_out.tasks else {}),
            **self.peaks.results(),
        }

    def state_dict(self) -> dict:
        return {**self.scores.state_dict(), **self.held_out.state_dict(), **self.peaks.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.scores.load_state_dict(state)
        self.held_out.load_state_dict(state)
        self.peaks.load_state_dict(state)
