"""Experience replay: a small memory of earlier tasks' samples is mixed into each stage.

The memory is one of Avalanche's storage policies over index views of the task datasets
(no copies): experience-balanced (each seen task keeps an equal share) or a reservoir over
the whole stream. It is updated after each task with that task's training samples, from a
random generator seeded by ``seed`` and the task id alone, so every DDP rank (and a rerun)
holds the same memory. That also makes the memory a function of the stream and the number
of tasks seen: a resumed run rebuilds it by repeating the updates (index views, no images).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Literal

import torch
from torch.utils.data import ConcatDataset, Dataset

from contmm.strategy import Strategy


class Replay(Strategy):
    """Experience replay: a memory of past tasks' samples mixed into each stage.

    Args:
        memory_size: samples kept in memory, over all past tasks.
        policy: ``experience_balanced`` (an equal share per task) or ``reservoir``.
        seed: seed of the memory's sampling.
    """

    def __init__(
        self,
        memory_size: int = 400,
        policy: Literal["experience_balanced", "reservoir"] = "experience_balanced",
        seed: int = 0,
    ) -> None:
        from avalanche.training.storage_policy import ExperienceBalancedBuffer, ReservoirSamplingBuffer

        if memory_size <= 0:
            raise ValueError(f"Replay.memory_size must be positive, got {memory_size}")
        self.memory_size, self.policy, self.seed = memory_size, policy, seed
        if policy == "experience_balanced":
            self.storage = ExperienceBalancedBuffer(max_size=memory_size, adaptive_size=True)
        else:
            self.storage = ReservoirSamplingBuffer(max_size=memory_size)
        self._stage_data: Dataset | None = None
        self.tasks_seen = 0
        self.stream = None

    def setup(self, model, stream) -> None:
        self.stream = stream

    @property
    def memory(self) -> Dataset:
        return self.storage.buffer

    def train_data(self, task_id: int, dataset: Dataset) -> Dataset:
        self._stage_data = dataset
        return ConcatDataset([dataset, self.memory]) if len(self.memory) else dataset

    def after_task(self, model, task_id, dataloader) -> None:
        self._update(task_id, self._stage_data)

    def _update(self, task_id: int, dataset: Dataset) -> None:
        from avalanche.benchmarks.utils import AvalancheDataset

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + task_id)
            # Avalanche's policies read only ``.dataset`` of the experience they are given, and
            # keep index views of it (``subset`` / ``concat`` of an AvalancheDataset).
            self.storage.post_adapt(None, SimpleNamespace(dataset=AvalancheDataset([dataset])))
        self.tasks_seen = task_id + 1

    def state_dict(self, model) -> dict:
        return {"tasks_seen": self.tasks_seen}

    def load_state_dict(self, state: dict, model) -> None:
        """Rebuild the memory by repeating the updates of the tasks seen (needs ``setup``)."""
        if state["tasks_seen"] and self.stream is None:
            raise RuntimeError("Replay.load_state_dict needs the stream: call setup(model, stream) first")
        for task_id, task in enumerate(self.stream.tasks[: state["tasks_seen"]]):
            self._update(task_id, task.train)
