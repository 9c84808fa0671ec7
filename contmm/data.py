"""From instruction samples to model batches, and the data of one continual stage.

Training batches are right-padded with labels on the answer tokens only (``-100``
elsewhere); evaluation batches are left-padded prompts for batched generation. Under DDP
training uses a seeded ``DistributedSampler``; evaluation gives each rank a disjoint shard
(``rank::world_size``) with no padding duplicates, so every test sample is scored once.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from contmm.model import MMLLM
from contmm.stream import Task

IGNORE_INDEX = -100


@dataclass(frozen=True)
class DataConfig:
    """Training batches: their size and how they are loaded.

    Args:
        batch_size: training samples per batch on each device.
        num_workers: DataLoader worker processes (0 renders images in the main process).
    """

    batch_size: int = 32
    num_workers: int = 0


class InstructionCollator:
    """Tokenise prompts (and answers), expand the image placeholder, preprocess images."""

    def __init__(self, model: MMLLM, train: bool) -> None:
        self.tokenizer = model.tokenizer
        self.prompt = model.cfg.prompt
        self.preprocess = model.encoder.preprocess
        self.image_token_id = model.image_token_id
        self.num_image_tokens = model.num_image_tokens
        self.train = train

    def _prompt_ids(self, sample: dict) -> list[int]:
        text = self.prompt.format(question=sample["question"])
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids.count(self.image_token_id) != 1:
            raise ValueError(
                f"sample {sample['id']!r}: the prompt must hold exactly one <image> placeholder, "
                f"found {ids.count(self.image_token_id)}: {text!r}"
            )
        at = ids.index(self.image_token_id)
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        return bos + ids[:at] + [self.image_token_id] * self.num_image_tokens + ids[at + 1 :]

    def _answer_ids(self, sample: dict) -> list[int]:
        ids = self.tokenizer(" " + sample["answer"], add_special_tokens=False)["input_ids"]
        return ids + [self.tokenizer.eos_token_id]

    def __call__(self, samples: list[dict]) -> dict:
        images = [
            s["image"] if isinstance(s["image"], Image.Image) else Image.open(s["image"]) for s in samples
        ]
        batch = {"pixel_values": self.preprocess([image.convert("RGB") for image in images])}
        prompts = [self._prompt_ids(s) for s in samples]
        if self.train:
            answers = [self._answer_ids(s) for s in samples]
            sequences = [p + a for p, a in zip(prompts, answers)]
            labels = [[IGNORE_INDEX] * len(p) + a for p, a in zip(prompts, answers)]
            batch.update(self._pad(sequences, left=False))
            batch["labels"] = self._pad_to(labels, IGNORE_INDEX, left=False)
        else:
            batch.update(self._pad(prompts, left=True))
            batch["ids"] = [s["id"] for s in samples]
            batch["questions"] = [s["question"] for s in samples]
            batch["answers"] = [s["answer"] for s in samples]
        return batch

    def _pad(self, sequences: list[list[int]], left: bool) -> dict:
        return {
            "input_ids": self._pad_to(sequences, self.tokenizer.pad_token_id, left),
            "attention_mask": self._pad_to([[1] * len(s) for s in sequences], 0, left),
        }

    @staticmethod
    def _pad_to(sequences: list[list[int]], value: int, left: bool) -> torch.Tensor:
        width = max(len(s) for s in sequences)
        rows = [[value] * (width - len(s)) + s if left else s + [value] * (width - len(s)) for s in sequences]
        return torch.tensor(rows, dtype=torch.long)


class StageData(L.LightningDataModule):
    """The data of one stage: a training set (optional) and the tasks evaluated after it."""

    def __init__(
        self,
        model: MMLLM,
        data: DataConfig,
        eval_batch_size: int,
        seed: int,
        train: Dataset | None = None,
        eval_tasks: list[tuple[int, Task]] = (),
    ) -> None:
        super().__init__()
        self.data, self.eval_batch_size, self.seed = data, eval_batch_size, seed
        self.train, self.eval_tasks = train, list(eval_tasks)
        self.train_collator = InstructionCollator(model, train=True)
        self.eval_collator = InstructionCollator(model, train=False)

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
            num_workers=self.data.num_workers,
        )

    def test_dataloader(self) -> list[DataLoader]:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        return [
            DataLoader(
                Subset(task.test, range(rank, len(task.test), world)),
                batch_size=self.eval_batch_size,
                collate_fn=self.eval_collator,
                num_workers=self.data.num_workers,
            )
            for _, task in self.eval_tasks
        ]
