"""Routing without the task id, shared by the strategies that route each sample to a
task's own module (projector expansion's projectors, routed LoRA's adapters): task keys
from a task's training data, a sample's similarity to them, and routing accuracy.

A task has two keys (EProj, arXiv 2311.16206): an image key, from the features the input
projector reads, and an instruction key, from the LLM's input embeddings of the
instruction's words. EProj trains each key to maximise its summed cosine similarity to the
task's features; that objective, Σ_i cos(k, f_i), has a closed-form maximiser, the
direction of Σ_i f_i/|f_i|, so the keys are computed in one pass over the task's training
data (summed over DDP ranks) instead of by gradient steps. The features come from the
encoder and the LLM's embeddings, which should stay frozen during the tasks: keys stored
after task 1 are compared with features of a later model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.apply_func import move_data_to_device

from contmm.model.collate import IGNORE_INDEX
from contmm.training.distributed import all_reduce_sum


def image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The features the input projector reads, averaged over the image tokens: (batch, width)."""
    return model.projector_inputs(pixel_values).mean(1)


def image_width(model) -> int:
    """The width of :func:`image_features`, read from one blank image."""
    size = model.encoder.image_size
    weight = next(model.encoder.parameters())
    blank = torch.zeros(1, 3, size, size, device=weight.device, dtype=weight.dtype)
    return image_features(model, blank).shape[-1]


def instruction_features(model, batch: dict) -> torch.Tensor:
    """The mean input embedding of the instruction's words: no media, padding or answer tokens."""
    input_ids = batch["input_ids"]
    words = batch["attention_mask"].bool()
    for token_id in getattr(model, "placeholder_ids", {"image": model.image_token_id}).values():
        words &= input_ids != token_id
    if "labels" in batch:
        words &= batch["labels"] == IGNORE_INDEX
    embeds = model.backbone.lm.get_input_embeddings()(input_ids).float()
    return (embeds * words.unsqueeze(-1)).sum(1) / words.sum(1, keepdim=True).clamp(min=1)


@torch.no_grad()
def task_keys(model, dataloader, key_batches: int | None, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A task's (image key, instruction key) from up to ``key_batches`` training batches per
    rank (None: all); a task without images (generation prompts) gets a zero image key, which
    no sample is near."""
    image_sum = instruction_sum = 0  # every rank has as many batches (a DistributedSampler)
    for i, batch in enumerate(dataloader):
        if i == key_batches:
            break
        batch = move_data_to_device(batch, device)
        if len(batch["pixel_values"]):
            image_sum = image_sum + F.normalize(
                image_features(model, batch["pixel_values"]).float(), dim=-1
            ).sum(0)
        instruction_sum = instruction_sum + F.normalize(instruction_features(model, batch), dim=-1).sum(0)
    if isinstance(image_sum, int):
        image_sum = torch.zeros(image_width(model), device=device)
    all_reduce_sum(image_sum, instruction_sum)
    return F.normalize(image_sum, dim=0), F.normalize(instruction_sum, dim=0)


def key_similarity(
    image_keys: torch.Tensor,
    instruction_keys: torch.Tensor,
    instruction: torch.Tensor,
    image: torch.Tensor | None = None,
    image_weight: float = 1.0,
) -> torch.Tensor:
    """(batch, tasks): each sample's cosine similarity to every task's instruction key, plus
    ``image_weight`` times its image's to the image key where it has an image."""
    similarity = F.normalize(instruction.float(), dim=-1) @ instruction_keys.T
    if image is not None:
        similarity = similarity + image_weight * (F.normalize(image.float(), dim=-1) @ image_keys.T)
    return similarity


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
