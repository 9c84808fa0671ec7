"""Per-task scores that add up correctly across DDP ranks."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class TaskScores(Metric):
    """Mean score per task from per-sample scores; sums and counts are reduced over ranks.

    Each rank scores a disjoint shard, so the reduced count is the test set's size and no
    sample is counted twice.
    """

    full_state_update = False

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(num_tasks, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(num_tasks, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, task_id: int, scores: torch.Tensor) -> None:
        self.total[task_id] += scores.sum().to(self.total)
        self.count[task_id] += scores.numel()

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean score per task, samples scored per task); the mean is NaN where none were."""
        return self.total / self.count, self.count
