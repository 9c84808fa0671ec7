"""MM pre-training (alignment): the stream's pre-training task, trained before row 0 with the
components LLaVA's first stage trains (the input projector), at a rate of its own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from contmm.checks import check_at_least, check_positive
from contmm.model.modalities import freeze_absent_modalities
from contmm.stream import TaskStream
from contmm.training.module import ContinualModule
from contmm.training.trainers import StageTrainers


@dataclass(frozen=True)
class PretrainConfig:
    """MM pre-training (alignment) on the stream's pre-training task, before row 0.

    Args:
        max_epochs: epochs of pre-training; 0 skips it.
        trainable: the components trained during pre-training (LLaVA: the projector only).
        lr: one learning rate for all of pre-training (default: the ``optimizer`` rates).
    """

    max_epochs: int = 0
    trainable: list[str] = field(default_factory=lambda: ["input_projector"])
    lr: float | None = None

    def __post_init__(self) -> None:
        check_at_least("pretrain.max_epochs", self.max_epochs, 0)
        check_positive("pretrain.lr", self.lr)

    def trained(self) -> list[str]:
        """The components pre-training trains (none when it is skipped)."""
        return list(self.trainable) if self.max_epochs else []


def pretrain(
    cfg: PretrainConfig,
    stream: TaskStream,
    module: ContinualModule,
    trainers: StageTrainers,
    stage_data: Callable,
) -> None:
    """Fit ``module`` on the stream's pre-training task with ``cfg.trainable`` trainable; the
    module's optimizer settings are the stages' again afterwards."""
    if stream.pretrain_task is None:
        raise ValueError(
            f"pretrain.max_epochs is {cfg.max_epochs} but the stream has no pre-training task: "
            "set pretrain.max_epochs to 0 or give the stream one"
        )
    module.model.set_trainable(cfg.trainable)
    freeze_absent_modalities(module.model, stream.pretrain_task.train)
    tuning = module.optimizer_cfg
    if cfg.lr:
        module.optimizer_cfg = replace(tuning, lr=cfg.lr, projector_lr=None)
    module.task_id = None
    trainer = trainers("pretrain", max_epochs=cfg.max_epochs, max_steps=-1)
    trainer.fit(module, datamodule=stage_data(stream.pretrain_task.train))
    module.optimizer_cfg = tuning
