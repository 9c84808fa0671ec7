"""The Lightning objects of a run: a fresh Trainer for every stage, and the run's loggers.

A fresh Trainer per stage, because a reused one counts epochs across fits and keeps its
callbacks' state; each stage logs under ``logs/{csv,tensorboard}/<stage>/``. The loggers
the config gives under ``trainer.logger`` (W&B, MLflow, ...) are built once per run and
handed to every stage's Trainer, so the whole stream is one run of theirs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from contmm.rundir.directory import RunDirectory
from contmm.training.sharding import STRATEGY_NAME


def run_loggers(run: RunDirectory, version: str) -> list[Logger]:
    return [
        CSVLogger(run.logs, name="csv", version=version),
        TensorBoardLogger(run.logs, name="tensorboard", version=version),
    ]


def check_sharded_strategy(settings: dict[str, Any]) -> None:
    """Stop on a sharded strategy contmm or this machine cannot run, before the model is
    built: Lightning finds out only when the first Trainer is made. contmm shards with
    FSDP2 (``fsdp2``, ``contmm/training/sharding.py``; on GPUs or the CPU); Lightning runs DeepSpeed
    on CUDA GPUs only."""
    strategy = settings.get("strategy")
    if not isinstance(strategy, str) or strategy == STRATEGY_NAME:
        return
    if strategy.startswith("fsdp"):
        raise ValueError(
            f"trainer.strategy {strategy!r} is Lightning's FSDP1, whose flat parameters contmm's "
            f"continual loop does not handle: use trainer.strategy {STRATEGY_NAME} (FSDP2; parameters, "
            "gradients and AdamW state sharded)"
        )
    if not strategy.startswith("deepspeed"):
        return
    if strategy.startswith("deepspeed_stage_3"):
        # Outside its forward a ZeRO-3 weight is an empty placeholder, and contmm reads the
        # weights between fits (checkpoints, EWC's anchors, routing keys).
        raise ValueError(
            f"trainer.strategy {strategy!r} partitions the weights, which contmm's continual loop "
            f"reads between stages: use trainer.strategy {STRATEGY_NAME} (weights sharded too, tested)"
        )
    if importlib.util.find_spec("deepspeed") is None:
        raise ValueError(
            f"trainer.strategy {strategy!r} needs DeepSpeed, which is not installed (contmm does "
            'not depend on it): `pip install -e ".[deepspeed]"`, on a machine with a CUDA GPU'
        )
    accelerator = settings.get("accelerator", "auto")
    if accelerator not in ("auto", "cuda", "gpu"):
        where = f"trainer.accelerator is {accelerator!r}"
    elif not torch.cuda.is_available():
        where = "no CUDA GPU is visible"
    else:
        return
    raise ValueError(
        f"trainer.strategy {strategy!r} shards the model over CUDA GPUs (Lightning runs DeepSpeed "
        f"on GPUs only), but {where}: use strategy {STRATEGY_NAME} or ddp here"
    )


def fit_ends_after_this_epoch(trainer: L.Trainer) -> bool:
    epochs = trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
    steps = trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps
    return epochs or steps or trainer.should_stop


class InProgressCheckpoint(ModelCheckpoint):
    """``last.ckpt`` after every epoch of a stage but its last. Resumed from a checkpoint of a
    finished fit, Lightning would skip the fit and with it ``on_train_end``, where the
    strategies' ``after_task`` runs (replay's memory update, EWC's Fisher): a stage killed
    after its last epoch redoes that epoch instead, and its end-of-task step runs once."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not fit_ends_after_this_epoch(trainer):
            super().on_train_epoch_end(trainer, pl_module)


class StreamLogger(Logger):
    """One of the user's loggers, shared by every stage's Trainer: one run over the stream.

    Each stage's Trainer counts its steps from 0. The optimizer steps of the stages before
    are added (``step_offset``), so that a metric's steps never go back, and the names are
    kept, so that ``train/loss`` is one curve over pre-training and every stage. The stage's
    name as a prefix instead would split the loss into one chart per stage whose steps
    still restart at 0, the x axis of W&B (``trainer/global_step``), MLflow and TensorBoard.
    """

    def __init__(self, logger: Logger) -> None:
        super().__init__()
        self.logger = logger
        self.step_offset = 0

    @property
    def name(self) -> str | None:
        return self.logger.name

    @property
    def version(self) -> int | str | None:
        return self.logger.version

    @property
    def save_dir(self) -> str | None:
        return self.logger.save_dir

    @property
    def log_dir(self) -> str | None:
        return self.logger.log_dir

    @property
    def experiment(self) -> Any:
        # Lightning reads it when a fit starts: that is when a W&B run starts.
        return self.logger.experiment

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.logger.log_metrics(metrics, None if step is None else self.step_offset + step)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.logger.log_hyperparams(params, *args, **kwargs)

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        self.logger.log_graph(model, input_array)

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        self.logger.after_save_checkpoint(checkpoint_callback)

    def save(self) -> None:
        self.logger.save()

    def finalize(self, status: str) -> None:
        # Every Trainer finalizes its loggers when its fit or test ends, but a stage's end is
        # not the run's (MLflow would mark the run finished, TensorBoard close its writer):
        # StageTrainers.logged_run finalizes the user's logger once.
        self.save()


class StageTrainers:
    """Builds each stage's Trainer from the config's ``trainer:`` settings; holds the user's
    loggers (``trainer.logger``) across the stages."""

    def __init__(self, settings: dict[str, Any], run: RunDirectory) -> None:
        check_sharded_strategy(settings)
        self.settings = {k: v for k, v in settings.items() if k != "logger"}
        given = settings.get("logger") or []
        given = given if isinstance(given, list) else [given]
        # Only rank 0 gets them: Lightning's loggers log on rank 0 only by themselves, and so
        # does any other logger this way (the scores are logged outside Lightning, on every rank).
        self.user_loggers: list[Logger] = given if rank_zero_only.rank == 0 else []
        self.stream_loggers = [StreamLogger(logger) for logger in self.user_loggers]
        self.run = run
        # The optimizer steps of the stages before the current Trainer's: where its steps
        # start in the user's loggers. A checkpoint keeps it (``trained_steps``).
        self.steps_before = 0
        self.current: L.Trainer | None = None

    @property
    def trained_steps(self) -> int:
        """The optimizer steps of every stage so far, the current one's included."""
        return self.steps_before + (self.current.global_step if self.current else 0)

    @contextmanager
    def logged_run(self) -> Iterator[None]:
        """The run of the user's loggers: finalized once, at its end ("failed" on an error)."""
        try:
            yield
        except BaseException:
            for logger in self.user_loggers:
                logger.finalize("failed")
            raise
        for logger in self.user_loggers:
            logger.finalize("success")

    def __call__(self, stage: str, in_progress: Path | None = None, **overrides: Any) -> L.Trainer:
        # The data module shards evaluation itself (no padding duplicates) and seeds the
        # training sampler; Lightning's sampler replacement would undo both.
        settings = {**self.settings, **overrides, "use_distributed_sampler": False}
        callbacks = list(settings.pop("callbacks", None) or [])
        if in_progress is not None and settings.get("enable_checkpointing", True):
            # Lightning's last.ckpt after every epoch of a stage: an interrupted stage goes on
            # from its last finished epoch instead of from its start.
            callbacks.append(
                InProgressCheckpoint(dirpath=in_progress, filename="last", enable_version_counter=False)
            )
        self.steps_before = self.trained_steps
        for logger in self.stream_loggers:
            logger.step_offset = self.steps_before
        self.current = L.Trainer(
            **settings,
            callbacks=callbacks,
            # contmm's own first: trainer.log_dir, and a checkpoint callback without a dirpath,
            # use the first logger's directory.
            logger=[*run_loggers(self.run, stage), *self.stream_loggers],
            default_root_dir=self.run.path,
        )
        return self.current
