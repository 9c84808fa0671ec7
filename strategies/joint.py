"""Joint training, the multi-task upper bound: stage i trains on the union of tasks 1..i.

Nothing is forgotten because nothing is left out, so every results table has its
ceiling. It costs what continual learning is meant to avoid: stage i sees i tasks' data.
"""

from __future__ import annotations

from torch.utils.data import ConcatDataset, Dataset

from contmm.strategy import Strategy


class Joint(Strategy):
    """Train each stage on every task seen so far."""

    def setup(self, model, stream) -> None:
        self.tasks = stream.tasks

    def train_data(self, task_id: int, dataset: Dataset) -> Dataset:
        return ConcatDataset([*(task.train for task in self.tasks[:task_id]), dataset])
