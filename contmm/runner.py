"""The continual loop: optional MM pre-training, row 0, then one stage per task.

Under DDP the whole loop runs on every rank (Lightning re-launches the command for the
other ranks), so everything here is deterministic from the seed; only rank 0 writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from contmm.data import DataConfig, StageData
from contmm.environment import environment
from contmm.metrics import compute_metrics
from contmm.model import MMLLM, ModelConfig
from contmm.module import ContinualModule, EvalConfig, OptimizerConfig
from contmm.results import RunDirectory, summary_table
from contmm.strategy import Strategies, Strategy
from contmm.stream import TaskStream


@dataclass
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


class ContinualRun:
    """One run: a model, a stream, strategies and the settings of every stage's Trainer."""

    def __init__(
        self,
        stream: TaskStream,
        model: ModelConfig,
        strategies: list[Strategy],
        seed: int,
        output_dir: str,
        pretrain: PretrainConfig,
        optimizer: OptimizerConfig,
        data: DataConfig,
        evaluation: EvalConfig,
        trainer: dict[str, Any],
        config: dict[str, Any],
    ) -> None:
        L.seed_everything(seed, verbose=False)
        self.stream, self.seed, self.data, self.pretrain = stream, seed, data, pretrain
        self.trainer_settings, self.config = trainer, config
        self.run = RunDirectory(output_dir)
        self.model = MMLLM.build(model, stream.texts())
        self.strategies = Strategies(strategies)
        self.module = ContinualModule(self.model, self.strategies, optimizer, evaluation, len(stream.tasks))
        # Built before any Trainer starts the process group: importing Avalanche on a
        # non-zero rank inside a distributed session fails (it refuses to make loggers there).
        self.benchmark = stream.benchmark()
        tasks = stream.task_names
        self.matrix: list[list[float | None]] = [[None] * len(tasks) for _ in range(len(tasks) + 1)]

    def new_trainer(self, stage: str, **overrides: Any) -> L.Trainer:
        loggers = [
            CSVLogger(self.run.logs, name="csv", version=stage),
            TensorBoardLogger(self.run.logs, name="tensorboard", version=stage),
        ]
        # The data module shards evaluation itself (no padding duplicates) and seeds the
        # training sampler; Lightning's sampler replacement would undo both.
        settings = {**self.trainer_settings, **overrides, "use_distributed_sampler": False}
        return L.Trainer(**settings, logger=loggers, default_root_dir=self.run.path)

    def stage_data(self, train=None) -> StageData:
        return StageData(
            self.model,
            self.data,
            self.module.evaluation.batch_size,
            self.seed,
            train=train,
            eval_tasks=list(enumerate(self.stream.tasks)),
        )

    def fit(self) -> dict:
        self.run.write_text("config.yaml", self.config["yaml"])
        if self.run.is_writer():
            self.model.tokenizer.save_pretrained(self.run.path / "tokenizer")
        if self.pretrain.max_epochs:
            self.pretrain_stage()
        self.strategies.setup(self.model, self.stream)

        trainer = self.new_trainer("stage_0")
        self.evaluate(trainer, 0)
        for experience in self.benchmark.train_stream:
            task_id = experience.current_experience
            # Each stage draws from a seed of its own, so its shuffling and dropout do not
            # depend on how many random numbers the stages before it consumed.
            L.seed_everything(self.seed + task_id + 1, verbose=False)
            self.model.set_trainable(self.model.configured_trainable())
            self.strategies.before_task(self.model, task_id)
            self.module.task_id = task_id
            trainer = self.new_trainer(f"stage_{task_id + 1}")
            train = self.strategies.train_data(task_id, experience.dataset)
            trainer.fit(self.module, datamodule=self.stage_data(train))
            self.evaluate(trainer, task_id + 1)
        if self.run.is_writer():
            print("\n" + summary_table(self.stream.task_names, self.matrix, compute_metrics(self.matrix)))
        return self.results(trainer, len(self.stream.tasks))

    def pretrain_stage(self) -> None:
        if self.stream.pretrain_task is None:
            raise ValueError(
                f"pretrain.max_epochs is {self.pretrain.max_epochs} but the stream has no "
                "pre-training task: set pretrain.max_epochs to 0 or give the stream one"
            )
        self.model.set_trainable(self.pretrain.trainable)
        tuning = self.module.optimizer_cfg
        if self.pretrain.lr:
            self.module.optimizer_cfg = replace(tuning, lr=self.pretrain.lr, projector_lr=None)
        self.module.task_id = None
        trainer = self.new_trainer("pretrain", max_epochs=self.pretrain.max_epochs, max_steps=-1)
        trainer.fit(self.module, datamodule=self.stage_data(self.stream.pretrain_task.train))
        self.module.optimizer_cfg = tuning

    def evaluate(self, trainer: L.Trainer, stage: int) -> None:
        """Score every task after ``stage``; write the row, its predictions and results.json."""
        trainer.test(self.module, datamodule=self.stage_data(), verbose=False)
        for task_id, score in self.module.last_scores.items():
            self.matrix[stage][task_id] = score
        for task_id, records in self.module.last_predictions.items():
            self.run.write_predictions(stage, self.stream.tasks[task_id].name, records)
        self.run.write_results(self.results(trainer, stage))

    def results(self, trainer: L.Trainer, stages_completed: int) -> dict:
        return {
            "tasks": self.stream.task_names,
            "strategies": self.strategies.name,
            "stages_completed": stages_completed,
            "matrix": self.matrix,
            "metrics": compute_metrics(self.matrix),
            "config": self.config["dict"],
            "env": environment(trainer, self.data.batch_size),
        }
