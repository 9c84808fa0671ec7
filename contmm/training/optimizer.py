"""The optimizer of every stage: AdamW with linear warmup and cosine decay, built anew at
each fit over the parameters trainable then (so adapters or projectors a strategy adds are
optimised), the input projector at a rate of its own."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import get_cosine_schedule_with_warmup

from contmm.checks import check_positive
from contmm.model import ComponentModel


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warmup and cosine decay over the stage's steps.

    Args:
        lr: learning rate of the encoder and backbone (and of adapters on them).
        projector_lr: learning rate of the input projectors, every modality's (defaults to ``lr``).
        weight_decay: AdamW weight decay.
        warmup_ratio: fraction of the stage's steps spent warming up.
    """

    lr: float = 1e-3
    projector_lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03

    def __post_init__(self) -> None:
        check_positive("optimizer.lr", self.lr)
        check_positive("optimizer.projector_lr", self.projector_lr)


def build_optimizer(model: ComponentModel, cfg: OptimizerConfig, total_steps: int):
    """AdamW over the parameters trainable now (projector at its own rate) and its schedule."""
    projector = {id(p) for module in model.input_projectors() for p in module.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("nothing is trainable in this stage: check the components' `freeze` settings")
    groups = [
        {"params": [p for p in trainable if id(p) not in projector], "lr": cfg.lr},
        {"params": [p for p in trainable if id(p) in projector], "lr": cfg.projector_lr or cfg.lr},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    return optimizer, scheduler
