"""The data of one continual stage: its training set and the tasks evaluated after it.

The model's collator turns samples into batches (``contmm.model.collate``). Under DDP
training uses a seeded ``DistributedSampler``; evaluation gives each rank a disjoint shard
(``rank::world_size``) with no padding duplicates, so every test sample is scored once.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
from lightning.pytorch.accelerators import CUDAAccelerator
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from contmm.checks import check_at_least
from contmm.model import ComponentModel
from contmm.stream import Task
from contmm.training.environment import usable_cores


@dataclass(frozen=True)
class DataConfig:
    """Training batches: their size and how they are loaded.

    Args:
        batch_size: training samples per batch on each device.
        num_workers: DataLoader worker processes per device (0 decodes images in the main
            process); none: 0 on the CPU, on a GPU min(4, the cores per device), so that
            decoding overlaps the step.
    """

    batch_size: int = 32
    num_workers: int | None = None

    def __post_init__(self) -> None:
        check_at_least("data.batch_size", self.batch_size, 1)
        if self.num_workers is not None:
            check_at_least("data.num_workers", self.num_workers, 0)

    def workers(self, on_gpu: bool, devices: int) -> int:
        """The DataLoader workers of each process: ``num_workers``, or its default."""
        if self.num_workers is not None:
            return self.num_workers
        return min(4, max(1, usable_cores() // devices)) if on_gpu else 0


class StageData(L.LightningDataModule):
    """The data of one stage: a training set (optional) and the tasks evaluated after it."""

    def __init__(
        self,
        model: ComponentModel,
        data: DataConfig,
        eval_batch_size: int,
        seed: int,
        train: Dataset | None = None,
        eval_tasks: list[tuple[int, Task]] = (),
    ) -> None:
        super().__init__()
        self.data, self.eval_batch_size, self.seed = data, eval_batch_size, seed
        self.train, self.eval_tasks = train, list(eval_tasks)
        self.train_collator = model.collator(train=True)
        self.eval_collator = model.collator(train=False)

    def train_dataloader(self) -> DataLoader:
        # Built here rather than by Lightning so the shuffle is seeded and identical for any
        # world size; the runner turns Lightning's own sampler replacement off.
        sampler = DistributedSampler(
            self.train,
            num_replicas=self.trainer.world_size,
            rank=self.trainer.global_rank,
            shuffle=True,
            seed=self.seed,
        )
        return DataLoader(
            self.train,
            batch_size=self.data.batch_size,
            sampler=sampler,
            collate_fn=self.train_collator,
            num_workers=self.workers(),
        )

    def test_dataloader(self) -> list[DataLoader]:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        return [
            DataLoader(
                Subset(task.test, range(rank, len(task.test), world)),
                batch_size=self.eval_batch_size,
                collate_fn=self.eval_collator,
                num_workers=self.workers(),
            )
            for _, task in self.eval_tasks
        ]

    def workers(self) -> int:
        on_gpu = isinstance(self.trainer.accelerator, CUDAAccelerator)
        return self.data.workers(on_gpu, self.trainer.num_devices)
