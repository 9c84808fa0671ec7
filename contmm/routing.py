"""Routing accuracy: how often per-sample routing without the task id picked the task's own
module (projector, adapter), for the strategies that route (reported per evaluation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from contmm.distributed import all_reduce_sum


class RoutingAccuracy:
    """Counts of right routes per task over one evaluation, summed over the ranks."""

    def __init__(self, task_names: Sequence[str]) -> None:
        self.task_names = list(task_names)
        self.correct = torch.zeros(len(task_names), dtype=torch.long)
        self.total = torch.zeros(len(task_names), dtype=torch.long)

    def update(self, task_id: int, route: torch.Tensor) -> None:
        """``route``: the task each sample of a batch of task ``task_id`` was sent to."""
        self.correct[task_id] += int((route == task_id).sum())
        self.total[task_id] += len(route)

    def report(self, device: torch.device) -> dict:
        """Routing accuracy per routed task and their mean (collective: call on every rank);
        the counts start again from zero."""
        counts = torch.stack([self.correct, self.total]).to(device)
        all_reduce_sum(counts)
        self.correct.zero_()
        self.total.zero_()
        correct, total = counts.tolist()
        accuracy = {name: c / t for name, c, t in zip(self.task_names, correct, total) if t}
        if not accuracy:
            return {}
        return {"routing_accuracy": accuracy, "mean_routing_accuracy": sum(accuracy.values()) / len(accuracy)}
