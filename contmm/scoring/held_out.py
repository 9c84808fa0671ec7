"""Held-out tasks: tasks of the stream that are never trained, scored after every stage.

They play the part of the general benchmarks (MME, POPE, MMBench) that MCITlib scores after
every stage: how much of what the model could do before continual tuning survives it. A
held-out task is not a column of the matrix R (no stage trains it, so BWT or MFT mean
nothing for it); its scores after each stage, and its retention, final / before tuning, go
beside R in ``results.json``.
"""

from __future__ import annotations

from collections.abc import Sequence

from contmm.scoring.evaluation import Evaluation
from contmm.scoring.metrics import mean_retention, retention
from contmm.stream import Task, TaskStream


def split_held_out(stream: TaskStream, names: Sequence[str]) -> list[Task]:
    """Take the tasks named ``names`` out of ``stream.tasks`` (so no stage trains them) and
    return them; an unknown name, or holding every task out, is an error."""
    if unknown := sorted(set(names) - set(stream.task_names)):
        raise ValueError(
            f"eval.held_out names task(s) {unknown} the stream does not have: {stream.task_names}"
        )
    held_out = [task for task in stream.tasks if task.name in names]
    if len(held_out) == len(stream.tasks):
        raise ValueError("eval.held_out holds out every task of the stream: leave at least one to train")
    if held_out:
        stream.tasks = [task for task in stream.tasks if task.name not in names]
    return held_out


class HeldOutScores:
    """The scores of the held-out tasks after every stage (None: not evaluated yet).

    Args:
        tasks: the held-out task names; in an evaluation they have the ids ``first``,
            ``first + 1``, ... (after the stream's tasks).
        stages: the number of rows of R (stages + 1).
    """

    def __init__(self, tasks: Sequence[str], first: int, stages: int) -> None:
        self.tasks, self.first = list(tasks), first
        self.scores: dict[str, list[float | None]] = {task: [None] * stages for task in self.tasks}

    def ids(self) -> list[int]:
        return list(range(self.first, self.first + len(self.tasks)))

    def record(self, stage: int, evaluation: Evaluation) -> None:
        for k, task in enumerate(self.tasks):
            self.scores[task][stage] = evaluation.scores[self.first + k]

    def logged(self, stage: int) -> dict[str, float]:
        return {f"held_out/{task}": s[stage] for task, s in self.scores.items() if s[stage] is not None}

    def results(self) -> dict:
        """``held_out``: the scores per stage and each task's retention, final / before tuning
        (None until the last stage is scored, or when the model scored 0 before tuning)."""
        return {
            "held_out": {
                "scores": self.scores,
                "retention": {task: retention(scores) for task, scores in self.scores.items()},
                "mean_retention": mean_retention(self.scores),
            }
        }

    def state_dict(self) -> dict:
        return {"held_out": self.scores}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("held_out", {})
        if sorted(saved) != sorted(self.tasks):
            raise ValueError(
                f"the checkpoint holds held-out tasks {sorted(saved)}, the config {sorted(self.tasks)}"
            )
        self.scores = saved
