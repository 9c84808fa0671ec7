"""The continual loop: optional MM pre-training, row 0, then one stage per task.

Under DDP the whole loop runs on every rank (Lightning re-launches the command for the
other ranks), so everything here is deterministic from the seed; only rank 0 writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from contmm.checkpoint import (
    Checkpoint,
    config_difference,
    in_progress_dir,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from contmm.data import DataConfig, StageData
from contmm.environment import environment
from contmm.metrics import compute_metrics, metric_details, tasks_to_evaluate
from contmm.model import MMLLM, ModelConfig
from contmm.module import ContinualModule, EvalConfig, OptimizerConfig
from contmm.results import RunDirectory, summary_table
from contmm.rundata import load_run
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


def running_metrics(matrix: list[list[float | None]], stage: int) -> dict[str, float | None]:
    """The metrics of the stream cut after ``stage`` (its first ``stage`` tasks)."""
    return compute_metrics([row[:stage] for row in matrix[: stage + 1]])


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
        resume: bool = True,
    ) -> None:
        L.seed_everything(seed, verbose=False)
        self.stream, self.seed, self.data, self.pretrain = stream, seed, data, pretrain
        self.trainer_settings, self.config, self.resume = trainer, config, resume
        self.run = RunDirectory(output_dir)
        self.model = MMLLM.build(model, stream.texts())
        # The tensors of components no stage trains are rebuilt identically from the config,
        # so checkpoints leave them out (a frozen pretrained LLM is not copied per stage).
        # They are known by identity, not by name: peft renames the layers it wraps. (A buffer
        # moved to a GPU is a new tensor and is then saved: buffers are small. The list keeps
        # every tensor alive, so no id is reused by a new tensor.)
        trained = {*self.model.configured_trainable(), *(pretrain.trainable if pretrain.max_epochs else ())}
        self.untrained_tensors = [
            t
            for name, module in self.model.named_children()
            if name not in trained
            for t in [*module.parameters(), *module.buffers()]
        ]
        self.untrained = {id(t) for t in self.untrained_tensors}
        self.strategies = Strategies(strategies)
        self.module = ContinualModule(self.model, self.strategies, optimizer, evaluation, len(stream.tasks))
        # Built before any Trainer starts the process group: importing Avalanche on a
        # non-zero rank inside a distributed session fails (it refuses to make loggers there).
        self.benchmark = stream.benchmark()
        # Read now, so that a wrong reference stops the run before any training.
        self.reference_scores = (
            load_run(evaluation.reference).single_task_scores(stream.task_names, "this run's stream")
            if evaluation.reference
            else None
        )
        tasks = stream.task_names
        self.matrix: list[list[float | None]] = [[None] * len(tasks) for _ in range(len(tasks) + 1)]
        # The same cells scored leniently (the answer found inside a longer prediction).
        self.lenient_matrix: list[list[float | None]] = [[None] * len(tasks) for _ in range(len(tasks) + 1)]
        # What the strategies report after each evaluation (e.g. routing accuracy), per row.
        self.reports: list[dict] = [{} for _ in range(len(tasks) + 1)]
        # One logger pair across all stages, stage = step, so TensorBoard draws the scores
        # of every task over the stream (forgetting curves) without contmm.
        self.score_loggers = [
            CSVLogger(self.run.logs, name="csv", version="scores"),
            TensorBoardLogger(self.run.logs, name="tensorboard", version="scores"),
        ]

    def new_trainer(self, stage: str, in_progress: Path | None = None, **overrides: Any) -> L.Trainer:
        loggers = [
            CSVLogger(self.run.logs, name="csv", version=stage),
            TensorBoardLogger(self.run.logs, name="tensorboard", version=stage),
        ]
        # The data module shards evaluation itself (no padding duplicates) and seeds the
        # training sampler; Lightning's sampler replacement would undo both.
        settings = {**self.trainer_settings, **overrides, "use_distributed_sampler": False}
        callbacks = list(settings.pop("callbacks", None) or [])
        if in_progress is not None and settings.get("enable_checkpointing", True):
            # Lightning's last.ckpt after every epoch of a stage: an interrupted stage goes on
            # from its last finished epoch instead of from its start.
            callbacks.append(
                ModelCheckpoint(dirpath=in_progress, filename="last", enable_version_counter=False)
            )
        return L.Trainer(**settings, callbacks=callbacks, logger=loggers, default_root_dir=self.run.path)

    def stage_data(self, train=None, evaluate: list[int] = ()) -> StageData:
        return StageData(
            self.model,
            self.data,
            self.module.evaluation.batch_size,
            self.seed,
            train=train,
            eval_tasks=[(j, self.stream.tasks[j]) for j in evaluate],
        )

    def fit(self) -> dict:
        checkpoint = self.resume_point()
        self.run.write_text("config.yaml", self.config["yaml"])
        if self.run.is_writer():
            self.model.tokenizer.save_pretrained(self.run.path / "tokenizer")
        if checkpoint is None:
            if self.pretrain.max_epochs:
                self.pretrain_stage()
            self.strategies.setup(self.model, self.stream)
            trainer = self.new_trainer("stage_0")
            self.evaluate(trainer, 0)
            completed = 0
        else:
            self.strategies.setup(self.model, self.stream)
            completed = self.restore(checkpoint)
        num_tasks = len(self.stream.tasks)
        if completed == num_tasks:
            print(f"{self.run.path}: all {num_tasks} stages are complete; --resume false starts over")
            return json.loads((self.run.path / "results.json").read_text())
        for experience in self.benchmark.train_stream:
            task_id = experience.current_experience
            if task_id < completed:
                continue
            # Each stage draws from a seed of its own, so its shuffling and dropout do not
            # depend on how many random numbers the stages before it consumed (nor on
            # whether they ran in this process or before a resume).
            L.seed_everything(self.seed + task_id + 1, verbose=False)
            self.model.set_trainable(self.model.configured_trainable())
            self.strategies.before_task(self.model, task_id)
            self.module.task_id = task_id
            in_progress = in_progress_dir(self.run.path, task_id + 1)
            last = in_progress / "last.ckpt" if (in_progress / "last.ckpt").is_file() else None
            if last is not None and self.run.is_writer():
                print(f"{self.run.path}: stage {task_id + 1} goes on from {last}")
            trainer = self.new_trainer(f"stage_{task_id + 1}", in_progress=in_progress)
            train = self.strategies.train_data(task_id, experience.dataset)
            trainer.fit(self.module, datamodule=self.stage_data(train), ckpt_path=last, weights_only=True)
            self.evaluate(trainer, task_id + 1)
        if self.run.is_writer():
            print("\n" + summary_table(self.stream.task_names, self.matrix, compute_metrics(self.matrix)))
        return self.results(trainer, num_tasks)

    def resume_point(self) -> Checkpoint | None:
        """The checkpoint to go on from; None to start from the beginning. A run directory
        that holds another config's results is refused; ``resume=False`` empties it."""
        if not self.resume:
            self.run.clear()
            return None
        path = latest_checkpoint(self.run.path)
        checkpoint = load_checkpoint(path) if path else None
        results = self.run.path / "results.json"
        if checkpoint is not None:
            saved = checkpoint.state["config"]
        elif results.is_file():
            saved = json.loads(results.read_text()).get("config", {})
        else:
            return None
        if (difference := config_difference(saved, self.config["dict"])) is not None:
            raise ValueError(
                f"{self.run.path} holds the results of another config ({difference}). "
                "Pass --resume false to start over there (its results, checkpoints and logs "
                "are deleted), or choose another --output_dir"
            )
        return checkpoint

    def restore(self, checkpoint: Checkpoint) -> int:
        """Load the model, the strategies and the matrix rows of ``checkpoint``; returns the
        number of stages it completed."""
        self.strategies.load_state_dict(checkpoint.strategies)  # rebuilds adapters, projectors
        missing, unexpected = self.model.load_state_dict(checkpoint.model, strict=False)
        missing = sorted(set(missing) - set(self.untrained_names()))
        if unexpected or missing:
            raise ValueError(
                f"the checkpoint of stage {checkpoint.stage} in {self.run.path} does not fit the model: "
                f"unexpected {unexpected[:3]}, missing {missing[:3]}"
            )
        state = checkpoint.state
        self.matrix, self.lenient_matrix, self.reports = (
            state["matrix"],
            state["lenient_matrix"],
            state["reports"],
        )
        # A new CSV logger rewrites its file: log the restored rows again so it keeps them.
        for stage in range(checkpoint.stage + 1):
            self.log_scores(stage, self.score_loggers[:1])
        if self.run.is_writer():
            print(f"{self.run.path}: resuming after stage {checkpoint.stage} of {len(self.stream.tasks)}")
        return checkpoint.stage

    def untrained_names(self) -> list[str]:
        """The state-dict names, under the model's current structure, of the untrained tensors."""
        named = [
            *self.model.named_parameters(remove_duplicate=False),
            *self.model.named_buffers(remove_duplicate=False),
        ]
        return [name for name, t in named if id(t) in self.untrained]

    def save_checkpoint(self, stage: int) -> None:
        if not self.run.is_writer():
            return
        untrained = set(self.untrained_names())
        tensors = {k: v for k, v in self.model.state_dict().items() if k not in untrained}
        state = {
            "matrix": self.matrix,
            "lenient_matrix": self.lenient_matrix,
            "reports": self.reports,
            "config": self.config["dict"],
        }
        save_checkpoint(self.run.path, stage, tensors, self.strategies.state_dict(), state)

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
        """Score the tasks of row ``stage``; write the row, its predictions and results.json."""
        columns = tasks_to_evaluate(stage, len(self.stream.tasks), self.module.evaluation.matrix)
        trainer.test(self.module, datamodule=self.stage_data(evaluate=columns), verbose=False)
        for task_id, score in self.module.last_scores.items():
            self.matrix[stage][task_id] = score
            self.lenient_matrix[stage][task_id] = self.module.last_lenient[task_id]
        self.reports[stage] = self.module.last_report
        for task_id, records in self.module.last_predictions.items():
            self.run.write_predictions(stage, self.stream.tasks[task_id].name, records)
        self.run.write_results(self.results(trainer, stage))
        self.log_scores(stage, self.score_loggers)
        self.save_checkpoint(stage)

    def log_scores(self, stage: int, loggers: list) -> None:
        names = self.stream.task_names
        values = {f"score/{names[j]}": v for j, v in enumerate(self.matrix[stage]) if v is not None}
        if stage:
            metrics = running_metrics(self.matrix, stage).items()
            values.update({f"metric/{name}": v for name, v in metrics if v is not None})
        for logger in loggers:
            logger.log_metrics(values, step=stage)
            logger.save()

    def results(self, trainer: L.Trainer, stages_completed: int) -> dict:
        results = {
            "tasks": self.stream.task_names,
            "strategies": self.strategies.name,
            "stages_completed": stages_completed,
            "matrix_mode": self.module.evaluation.matrix,
            "matrix": self.matrix,
            "metrics": compute_metrics(self.matrix, self.reference_scores),
            **metric_details(self.matrix, self.stream.task_names, self.reference_scores),
        }
        # Stored only where leniency changed a score, so a strict scorer adds nothing.
        if self.lenient_matrix != self.matrix:
            results["lenient_matrix"] = self.lenient_matrix
            results["lenient_metrics"] = compute_metrics(self.lenient_matrix)
        results.update(
            strategy_reports=self.reports,
            config=self.config["dict"],
            env=environment(trainer, self.data.batch_size),
        )
        return results
