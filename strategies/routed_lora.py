"""Routed LoRA: a LoRA adapter per task, picked per sample at evaluation without the task id.

Each task tunes its own adapter on the frozen LLM, as LoRA per task does; after the task
its keys are stored (an instruction key and an image key, ``strategies/routing.py``, the same
code projector expansion routes with). At evaluation every sample goes to the adapter of
the task whose keys its own features are most similar to, and the batch is decoded with a
per-row adapter (peft's mixed-adapter batches). This is the idea behind DISCO, HiDe-LLaVA
and MR-LoRA (per-task experts chosen by feature similarity); routing accuracy is reported
after every evaluation. The encoder and the LLM's embeddings must stay frozen (they give
the features), which LoRA per task needs anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch

from contmm.scoring.images import generates_images
from strategies.lora_per_task import LLM_PROJECTIONS, LoRAPerTask
from strategies.routing import (
    RoutingAccuracy,
    image_features,
    instruction_features,
    key_similarity,
    task_keys,
)


class RoutedLoRA(LoRAPerTask):
    """An adapter per task, routed per sample by task keys.

    Args:
        r, alpha, dropout, target_modules: each adapter's settings (as LoRAPerTask's).
        image_weight: weight of the image similarity against the instruction's 1 (0: route by
            the instruction alone; the synthetic tasks share one image distribution).
        key_batches: training batches (per rank) a task's keys are computed from; None: all.
    """

    def __init__(
        self,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: Sequence[str] | str = LLM_PROJECTIONS,
        image_weight: float = 0.0,
        key_batches: int | None = None,
    ) -> None:
        super().__init__(r, alpha, dropout, target_modules)
        self.image_weight, self.key_batches = image_weight, key_batches
        self.image_keys = self.instruction_keys = torch.zeros(0, 0)
        self.accuracy: RoutingAccuracy | None = None

    @property
    def media(self) -> tuple[str, ...] | None:
        """Routing by the instruction alone reads any medium's samples; by the image, images only."""
        return ("image",) if self.image_weight else None

    def setup(self, model, stream) -> None:
        if model.cfg.pretrained:
            raise ValueError(
                "RoutedLoRA decodes each row with its own adapter through the assembled model's "
                "generate; a whole checkpoint (model.pretrained) is not wired for it yet"
            )
        if drawn := [task.name for task in stream.tasks if generates_images(task.scorer)]:
            raise ValueError(
                f"RoutedLoRA routes decoding only; the generation task(s) {drawn} would draw with "
                "the wrong adapter's signal states: not supported yet"
            )
        super().setup(model, stream)
        self.accuracy = RoutingAccuracy(stream.task_names)

    def after_task(self, model, task_id, dataloader) -> None:
        if len(self.instruction_keys) != task_id:
            raise RuntimeError(
                f"keys of task {task_id} computed after {len(self.instruction_keys)} tasks' keys"
            )
        device = next(model.parameters()).device
        image_key, instruction_key = task_keys(model, dataloader, self.key_batches, device)
        self.image_keys = torch.cat([self.image_keys.reshape(-1, len(image_key)).to(device), image_key[None]])
        self.instruction_keys = torch.cat(
            [self.instruction_keys.reshape(-1, len(instruction_key)).to(device), instruction_key[None]]
        )

    def route(self, model, batch: dict) -> torch.Tensor:
        """The task each sample of ``batch`` is routed to."""
        device = batch["input_ids"].device
        with_image = self.image_weight and len(batch["pixel_values"])
        image = image_features(model, batch["pixel_values"]) if with_image else None
        return key_similarity(
            self.image_keys.to(device),
            self.instruction_keys.to(device),
            instruction_features(model, batch),
            image,
            self.image_weight,
        ).argmax(1)

    @contextmanager
    def eval_context(self, model, task_id, batch=None):
        seen = len(self.instruction_keys)
        if seen == 0 or batch is None:  # before any task: the base LLM (or the task's own)
            with super().eval_context(model, task_id, batch):
                yield
            return
        route = self.route(model, batch)
        batch["adapter_names"] = [f"task_{task}" for task in route.tolist()]
        try:
            yield
        finally:
            del batch["adapter_names"]
        if task_id < seen:  # a task not tuned yet has no adapter of its own to be routed to
            self.accuracy.update(task_id, route)

    def state_dict(self, model) -> dict:
        return {
            **super().state_dict(model),
            "image_keys": self.image_keys.cpu(),
            "instruction_keys": self.instruction_keys.cpu(),
        }

    def load_state_dict(self, state: dict, model) -> None:
        super().load_state_dict(state, model)
        self.image_keys, self.instruction_keys = state["image_keys"], state["instruction_keys"]

    def evaluation_report(self, model) -> dict:
        """Routing accuracy per tuned task in the evaluation just finished, summed over ranks."""
        return self.accuracy.report(next(model.parameters()).device) if self.accuracy else {}
