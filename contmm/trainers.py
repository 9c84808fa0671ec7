"""The Lightning objects of a run: a fresh Trainer for every stage, and the score loggers.

A fresh Trainer per stage, because a reused one counts epochs across fits and keeps its
callbacks' state; each stage logs under ``logs/{csv,tensorboard}/<stage>/``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from contmm.results import RunDirectory


def run_loggers(run: RunDirectory, version: str) -> list[Logger]:
    return [
        CSVLogger(run.logs, name="csv", version=version),
        TensorBoardLogger(run.logs, name="tensorboard", version=version),
    ]


def check_strategy_installed(strategy: Any) -> None:
    """Stop on a DeepSpeed strategy without DeepSpeed, before the model is built: Lightning
    finds out only when the first Trainer is made, after the model is built."""
    deepspeed = isinstance(strategy, str) and strategy.startswith("deepspeed")
    if deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise ValueError(
            f"trainer.strategy {strategy!r} needs DeepSpeed, which is not installed (contmm does "
            "not depend on it): `pip install deepspeed`, on a machine with a CUDA GPU"
        )


class StageTrainers:
    """Builds each stage's Trainer from the config's ``trainer:`` settings."""

    def __init__(self, settings: dict[str, Any], run: RunDirectory) -> None:
        check_strategy_installed(settings.get("strategy"))
        self.settings, self.run = settings, run

    def __call__(self, stage: str, in_progress: Path | None = None, **overrides: Any) -> L.Trainer:
        # The data module shards evaluation itself (no padding duplicates) and seeds the
        # training sampler; Lightning's sampler replacement would undo both.
        settings = {**self.settings, **overrides, "use_distributed_sampler": False}
        callbacks = list(settings.pop("callbacks", None) or [])
        if in_progress is not None and settings.get("enable_checkpointing", True):
            # Lightning's last.ckpt after every epoch of a stage: an interrupted stage goes on
            # from its last finished epoch instead of from its start.
            callbacks.append(
                ModelCheckpoint(dirpath=in_progress, filename="last", enable_version_counter=False)
            )
        return L.Trainer(
            **settings,
            callbacks=callbacks,
            logger=run_loggers(self.run, stage),
            default_root_dir=self.run.path,
        )
