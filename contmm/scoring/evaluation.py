"""Evaluating after a stage: per-task scores that add up across DDP ranks, and the result."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torchmetrics import Metric


class TaskScores(Metric):
    """Mean strict and lenient score per task from per-sample scores; sums and counts are
    reduced over ranks.

    Each rank scores a disjoint shard, so the reduced count is the test set's size and no
    sample is counted twice.
    """

    full_state_update = False

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(num_tasks, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("lenient_total", torch.zeros(num_tasks, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(num_tasks, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, task_id: int, strict: torch.Tensor, lenient: torch.Tensor) -> None:
        self.total[task_id] += strict.sum().to(self.total)
        self.lenient_total[task_id] += lenient.sum().to(self.total)
        self.count[task_id] += strict.numel()

    def compute(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(strict mean, lenient mean, samples scored) per task; means are NaN where none were."""
        return self.total / self.count, self.lenient_total / self.count, self.count

    def per_task(self) -> tuple[torch.Tensor, ...]:
        """``compute()`` with one value per task, whatever the number of tasks: torchmetrics
        squeezes a one-element result to a 0-d tensor, which a one-task stream cannot index."""
        return tuple(value.reshape(-1) for value in self.compute())


@dataclass
class Evaluation:
    """What one evaluation gave, the same on every rank: per evaluated task id, its strict and
    lenient score and its per-sample prediction records (all ranks'); the images generated
    for generation tasks (PNG bytes by sample id); and what the strategies reported (e.g.
    routing accuracy)."""

    scores: dict[int, float]
    lenient_scores: dict[int, float]
    predictions: dict[int, list[dict]]
    report: dict
    images: dict[int, dict[str, bytes]] = field(default_factory=dict)
