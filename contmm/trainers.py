"""The Lightning objects of a run: a fresh Trainer for every stage, and the score loggers.

A fresh Trainer per stage, because a reused one counts epochs across fits and keeps its
callbacks' state; each stage logs under ``logs/{csv,tensorboard}/<stage>/``.
"""

from __future__ import annotations

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


class StageTrainers:
    """Builds each stage's Trainer from the config's ``trainer:`` settings."""

    def __init__(self, settings: dict[str, Any], run: RunDirectory) -> None:
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
