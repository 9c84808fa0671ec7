"""The continual loop: optional MM pre-training, row 0, then one stage per task.

Under DDP the whole loop runs on every rank (Lightning re-launches the command for the
other ranks), so everything here is deterministic from the seed; only rank 0 writes.
"""

from __future__ import annotations

from copy import copy
from pathlib import Path
from typing import Any

import lightning as L

from contmm.analysis.generation_grid import write_generation_grid
from contmm.checks import check_seed
from contmm.model import ModelConfig, build_model
from contmm.model.modalities import (
    check_modalities,
    freeze_absent_modalities,
    stream_modalities,
)
from contmm.rundir.checkpoint import (
    Checkpoint,
    CheckpointConfig,
    TrainedWeights,
    in_progress_checkpoint,
    in_progress_dir,
    save_checkpoint,
)
from contmm.rundir.directory import RunDirectory
from contmm.rundir.fingerprint import record_images, run_inputs
from contmm.rundir.resume import check_same_inputs, resume_point
from contmm.scoring.held_out import split_held_out
from contmm.scoring.images import check_drawing
from contmm.scoring.matrix import row_after
from contmm.scoring.metrics import tasks_to_evaluate
from contmm.strategy import Strategies, Strategy
from contmm.stream import TaskStream
from contmm.training.data import DataConfig, StageData
from contmm.training.distributed import status
from contmm.training.environment import environment
from contmm.training.memory import print_estimates
from contmm.training.module import ContinualModule, EvalConfig
from contmm.training.optimizer import OptimizerConfig
from contmm.training.preemption import requeue_on_preemption
from contmm.training.pretraining import PretrainConfig, pretrain
from contmm.training.record import RunRecord
from contmm.training.sharding import check_can_shard
from contmm.training.trainers import StageTrainers


class ContinualRun:
    """Tune a multimodal LLM on a stream of tasks, one stage per task, and score every task
    after every stage.

    Args:
        stream: the task stream.
        model: the multimodal LLM.
        strategies: continual strategies, run in order (class_path / init_args entries).
        seed: seed of initialisation and shuffling (the stream takes its own).
        output_dir: the run directory.
        resume: go on after the last completed stage in output_dir; false deletes what
            contmm wrote there and starts over.
        pretrain: MM pre-training before the stream.
        optimizer: the optimizer of every stage.
        data: training data loading.
        eval: evaluation after every stage.
        checkpoint: the stage checkpoints kept in output_dir.
        trainer: Lightning Trainer arguments of every stage; ``logger`` adds loggers of
            the user's (W&B, MLflow, ...) that log the whole run.
        config: the resolved config as ``yaml`` text and as a ``dict``, kept with the results,
            and the parser's ``defaults`` (what a saved config's missing keys count as).
    """

    def __init__(
        self,
        stream: TaskStream,
        model: ModelConfig,
        strategies: list[Strategy] = [],  # noqa: B006 - never mutated
        seed: int = 0,
        output_dir: str = "runs/seq_vqa",
        resume: bool = True,
        pretrain: PretrainConfig = PretrainConfig(),  # noqa: B008 - a frozen dataclass
        optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008
        data: DataConfig = DataConfig(),  # noqa: B008
        eval: EvalConfig = EvalConfig(),  # noqa: B008
        checkpoint: CheckpointConfig = CheckpointConfig(),  # noqa: B008
        *,
        trainer: dict[str, Any] | None = None,
        config: dict[str, Any],
    ) -> None:
        check_seed(seed, len(stream.tasks))
        L.seed_everything(seed, verbose=False)
        self.stream, self.seed, self.resume = stream, seed, resume
        self.pretrain, self.data, self.checkpoint, self.config = pretrain, data, checkpoint, config
        self.directory = RunDirectory(output_dir)
        # Before the model is built: a strategy whose package is missing, or listed twice
        # when it cannot be, or that cannot run sharded, stops the run here.
        self.trainers = StageTrainers(trainer or {}, self.directory)
        self.strategies = Strategies(strategies)
        check_can_shard(self.trainers.settings.get("strategy"), self.strategies, model.quantization)
        if any(s.media is not None for s in self.strategies.strategies):  # a scan of every sample's text
            self.strategies.check_media(stream_modalities(stream))
        self.model = build_model(model, stream.texts())
        # Every task whose data the run reads: split_held_out below takes held-out ones out of
        # ``stream.tasks``, not out of this (shallow) copy.
        self.read_stream = copy(stream)
        self.inputs = run_inputs(self.read_stream, self.model.tokenizer)
        # After the tokenizer and the inputs' fingerprint, which cover the held-out tasks too.
        self.held_out_tasks = split_held_out(stream, eval.held_out)
        self.weights = TrainedWeights(self.model, {*self.model.configured_trainable(), *pretrain.trained()})
        evaluated = [*stream.tasks, *self.held_out_tasks]  # held-out ids follow the stream's
        self.module = ContinualModule(self.model, self.strategies, optimizer, eval, len(evaluated))
        check_drawing(evaluated, self.model, eval.clip_model)
        media = check_modalities(
            [*evaluated, *([stream.pretrain_task] if stream.pretrain_task else [])], self.model
        )
        # Each task's media, kept with the results: plots mark them.
        self.task_media = {task.name: found for task, found in zip(evaluated, media)}
        if any(task.scorer == "clip_score" for task in evaluated):
            self.module.clip_scorer()  # loaded now: a wrong eval.clip_model stops the run before training
        self.record = RunRecord(
            stream.task_names, [task.name for task in self.held_out_tasks], eval.reference, self.directory
        )

    def fit(self) -> dict:
        """Run the stream (see ``fit_stages``) holding the run directory's lock, as one run of
        the user's loggers; in a SLURM job, requeued on SLURM's warning before its time limit."""
        with self.directory.locked("contmm fit"), requeue_on_preemption(), self.trainers.logged_run():
            return self.fit_stages()

    def fit_stages(self) -> dict:
        """DESIGN's data flow: pre-training, row 0, then per task the strategies' hooks around
        a fresh Trainer, the task's row of R and a checkpoint; a run directory with completed
        stages goes on after the newest one."""
        checkpoint = resume_point(
            self.directory, self.resume, self.config["dict"], self.config.get("defaults")
        )
        check_same_inputs(checkpoint, self.inputs, self.read_stream, self.directory)
        record_images(self.directory, self.read_stream, checkpoint)
        self.directory.write_text("config.yaml", self.config["yaml"])
        self.directory.save_tokenizer(self.model.tokenizer)
        completed = self.start(checkpoint)
        if completed == len(self.stream.tasks):
            status(f"{self.directory.path}: all {completed} stages are complete; --resume false starts over")
            return self.directory.read_results()
        for task_id in range(completed, len(self.stream.tasks)):
            stage = row_after(task_id)
            trainer = self.tune(task_id, stage)
            self.evaluate(stage, trainer)
            self.save_checkpoint(stage)
        status("\n" + self.record.summary_table())
        return self.results(trainer, stage)

    def start(self, checkpoint: Checkpoint | None) -> int:
        """Row 0's stage, or the restored ``checkpoint``: the stages completed."""
        self.record.peaks.start()  # row 0's stage: pre-training and row 0
        pretraining = checkpoint is None and self.pretrain.max_epochs > 0
        print_estimates(self.model, self.trainers.settings, self.pretrain.trainable if pretraining else None)
        if pretraining:
            pretrain(self.pretrain, self.stream, self.module, self.trainers, self.stage_data)
        self.prepare(checkpoint, self.directory.path)
        if checkpoint is not None:
            return self.restore(checkpoint)
        self.evaluate(0, self.trainers("stage_0"))
        self.save_checkpoint(0)
        return 0

    def tune(self, task_id: int, stage: int) -> L.Trainer:
        """One continual stage on task ``task_id``: the strategies' hooks around a fresh
        Trainer's fit (``penalty`` in every step, ``after_task`` at the fit's end)."""
        # Each stage draws from a seed of its own, so its shuffling and dropout do not
        # depend on how many random numbers the stages before it consumed (nor on
        # whether they ran in this process or before a resume).
        L.seed_everything(self.seed + stage, verbose=False)
        self.record.peaks.start()
        self.model.set_trainable(self.model.configured_trainable())
        self.strategies.before_task(self.model, task_id)
        self.module.task_id = task_id
        last = in_progress_checkpoint(self.directory.path, stage)
        if last is not None:
            status(f"{self.directory.path}: stage {stage} goes on from {last}")
        trainer = self.trainers(f"stage_{stage}", in_progress=in_progress_dir(self.directory.path, stage))
        train = self.strategies.train_data(task_id, self.stream.tasks[task_id].train)
        if frozen := freeze_absent_modalities(self.model, train):
            status(f"stage {stage}: {', '.join(frozen)} not trained (no sample of this stage reads them)")
        trainer.fit(self.module, datamodule=self.stage_data(train), ckpt_path=last, weights_only=True)
        return trainer

    def prepare(self, checkpoint: Checkpoint | None, source: Path | str | None = None) -> None:
        """The strategies set up on the model (the one place they are), and with a
        ``checkpoint`` (of the run in ``source``) its stage loaded: the strategies' state
        first, which rebuilds the adapters and projectors the weights fill. A fit (resumed or
        not), ``contmm eval`` and ``contmm export`` all start from here."""
        self.strategies.setup(self.model, self.stream)
        if checkpoint is not None:
            self.strategies.load_state_dict(checkpoint.strategies, self.model)
            self.weights.load_state_dict(
                checkpoint.model, f"the checkpoint of stage {checkpoint.stage} in {source}"
            )

    def restore(self, checkpoint: Checkpoint) -> int:
        """The record of ``checkpoint``'s stages, and the steps trained so far; returns the
        stages it completed."""
        self.record.load_state_dict(checkpoint.state)
        self.trainers.steps_before = checkpoint.state["trained_steps"]
        # A new CSV logger rewrites its file, and the user's loggers start a new run unless
        # their init_args name the old one: log the restored rows again so they hold them.
        for stage in range(checkpoint.stage + 1):
            self.record.log(stage, [self.record.loggers[0], *self.trainers.user_loggers])
        status(f"{self.directory.path}: resuming after stage {checkpoint.stage} of {len(self.stream.tasks)}")
        return checkpoint.stage

    def save_checkpoint(self, stage: int) -> None:
        if self.directory.is_writer():
            state = {
                **self.record.state_dict(),
                "trained_steps": self.trainers.trained_steps,
                "inputs": self.inputs,
                "config": self.config["dict"],
            }
            weights, strategies = self.weights.state_dict(), self.strategies.state_dict(self.model)
            save_checkpoint(self.directory.path, stage, weights, strategies, state, keep=self.checkpoint.keep)

    def stage_data(self, train=None, evaluate: list[int] = ()) -> StageData:
        tasks = [*self.stream.tasks, *self.held_out_tasks]  # held-out ids follow the stream's
        eval_tasks = [(j, tasks[j]) for j in evaluate]
        return StageData(
            self.model, self.data, self.module.evaluation.batch_size, self.seed, train, eval_tasks
        )

    def evaluate(self, stage: int, trainer: L.Trainer) -> None:
        """Score the tasks of row ``stage``; write the row, its predictions and results.json."""
        columns = tasks_to_evaluate(stage, len(self.stream.tasks), self.module.evaluation.matrix)
        data = self.stage_data(evaluate=columns + self.record.held_out.ids())
        evaluation = self.module.evaluate(trainer, data)
        self.record.record(stage, evaluation)
        for task_id, task in data.eval_tasks:
            self.directory.write_predictions(
                stage, task.name, evaluation.predictions[task_id], evaluation.images.get(task_id)
            )
        self.directory.write_results(self.results(trainer, stage))
        write_generation_grid(self.directory, self.stream.tasks)
        # The user's loggers themselves, not their stage wrappers: step = stage, as in contmm's.
        self.record.log(stage, [*self.record.loggers, *self.trainers.user_loggers])

    def results(self, trainer: L.Trainer, stages_completed: int) -> dict:
        return {
            "tasks": self.stream.task_names,
            "strategies": self.strategies.name,
            "stages_completed": stages_completed,
            "matrix_mode": self.module.evaluation.matrix,
            "task_media": self.task_media,
            **self.record.results(),
            "config": self.config["dict"],
            "env": environment(trainer, self.data.batch_size),
        }
