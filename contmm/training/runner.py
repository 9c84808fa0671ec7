"""The continual loop: optional MM pre-training, row 0, then one stage per task.

Under DDP the whole loop runs on every rank (Lightning re-launches the command for the
other ranks), so everything here is deterministic from the seed; only rank 0 writes.
"""

from __future__ import annotations

from copy import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L

from contmm.analysis.generation_grid import GRID_NAME, generation_grid_png
from contmm.checks import check_at_least, check_positive, check_seed
from contmm.model import ModelConfig, build_model
from contmm.rundir.checkpoint import (
    Checkpoint,
    CheckpointConfig,
    TrainedWeights,
    check_kept,
    config_difference,
    in_progress_checkpoint,
    in_progress_dir,
    newest_loadable_checkpoint,
    save_checkpoint,
)
from contmm.rundir.directory import RunDirectory, summary_table
from contmm.rundir.fingerprint import changed_input, record_images, run_inputs
from contmm.rundir.reading import load_run
from contmm.scoring.held_out import HeldOutScores, split_held_out
from contmm.scoring.images import generates_images
from contmm.scoring.matrix import ScoreMatrix, row_after
from contmm.scoring.metrics import compute_metrics, tasks_to_evaluate
from contmm.strategy import Strategies, Strategy
from contmm.stream import Task, TaskStream
from contmm.training.data import DataConfig, StageData
from contmm.training.distributed import status
from contmm.training.environment import environment
from contmm.training.memory import estimate
from contmm.training.module import ContinualModule, EvalConfig
from contmm.training.optimizer import OptimizerConfig
from contmm.training.peak_memory import StagePeaks
from contmm.training.preemption import requeue_on_preemption
from contmm.training.sharding import STRATEGY_NAME as SHARDED_STRATEGY
from contmm.training.trainers import StageTrainers, run_loggers


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


def check_drawing(tasks: list[Task], model, evaluation: EvalConfig) -> None:
    """Refuse, before any training, tasks whose images the run cannot draw or score."""
    drawn = [task.name for task in tasks if generates_images(task.scorer)]
    if drawn and not getattr(model, "generates", False):
        raise ValueError(
            f"task(s) {drawn} ask for images but the model generates none: "
            "give it model.output_projector and model.generator"
        )
    clip = [task.name for task in tasks if task.scorer == "clip_score"]
    if clip and evaluation.clip_model is None:
        raise ValueError(
            f"task(s) {clip} are scored by clip_score: set eval.clip_model (a CLIP directory or hub id)"
        )


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
        config: the resolved config as ``yaml`` text and as a ``dict``, kept with the results.
    """

    def __init__(
        self,
        stream: TaskStream,
        model: ModelConfig,
        strategies: list[Strategy] = [],  # noqa: B006 - never mutated
        seed: int = 0,
        output_dir: str = "runs/seq_vqa",
        resume: bool = True,
        pretrain: PretrainConfig = PretrainConfig(),
        optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008 - a frozen dataclass
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
        self.pretrain, self.data, self.checkpoint = pretrain, data, checkpoint
        self.config = config
        self.run = RunDirectory(output_dir)
        # Before the model is built: a strategy whose package is missing stops the run here.
        self.trainers = StageTrainers(trainer or {}, self.run)
        # Before the model too: a strategy listed twice that cannot be is refused here.
        self.strategies = Strategies(strategies)
        if self.trainers.settings.get("strategy") == SHARDED_STRATEGY:
            self.strategies.check_sharded(SHARDED_STRATEGY)
            if model.quantization:
                raise ValueError(
                    f"model.quantization {model.quantization!r} and trainer.strategy {SHARDED_STRATEGY!r}: "
                    "quantised weights cannot be sharded; use ddp"
                )
        self.model = build_model(model, stream.texts())
        # Every task whose data the run reads: split_held_out below takes held-out ones out of
        # ``stream.tasks``, not out of this (shallow) copy.
        self.read_stream = copy(stream)
        self.inputs = run_inputs(self.read_stream, self.model.tokenizer)
        # After the tokenizer and the inputs' fingerprint, which cover the held-out tasks too.
        self.held_out_tasks = split_held_out(stream, eval.held_out)
        trained = {
            *self.model.configured_trainable(),
            *(self.pretrain.trainable if self.pretrain.max_epochs else ()),
        }
        self.weights = TrainedWeights(self.model, trained)
        self.module = ContinualModule(
            self.model, self.strategies, optimizer, eval, len(stream.tasks) + len(self.held_out_tasks)
        )
        evaluated = [*stream.tasks, *self.held_out_tasks]
        check_drawing(evaluated, self.model, eval)
        if any(task.scorer == "clip_score" for task in evaluated):
            self.module.clip_scorer()  # loaded now: a wrong eval.clip_model stops the run before training
        # Built before any Trainer starts the process group: importing Avalanche on a
        # non-zero rank inside a distributed session fails (it refuses to make loggers there).
        self.benchmark = stream.benchmark()
        # Read now, so that a wrong reference stops the run before any training.
        reference = self.module.evaluation.reference
        self.reference_scores = (
            load_run(reference).single_task_scores(stream.task_names, "this run's stream")
            if reference
            else None
        )
        self.scores = ScoreMatrix(stream.task_names)
        self.peaks = StagePeaks(len(stream.tasks) + 1)
        self.held_out = HeldOutScores(
            [task.name for task in self.held_out_tasks], len(stream.tasks), len(stream.tasks) + 1
        )
        # One logger pair across all stages, stage = step, so TensorBoard draws the scores
        # of every task over the stream (forgetting curves) without contmm.
        self.score_loggers = run_loggers(self.run, "scores")

    def fit(self) -> dict:
        """Run the stream (see ``fit_stages``) holding the run directory's lock, as one run of
        the user's loggers; in a SLURM job, requeued on SLURM's warning before its time limit."""
        with self.run.locked("contmm fit"), requeue_on_preemption(), self.trainers.logged_run():
            return self.fit_stages()

    def fit_stages(self) -> dict:
        """DESIGN's data flow: pre-training, row 0, then per task the strategies' hooks around
        a fresh Trainer, the task's row of R and a checkpoint; a run directory with completed
        stages goes on after the newest one."""
        checkpoint = self.resume_point()
        self.check_inputs(checkpoint)
        record_images(self.run, self.read_stream, checkpoint)
        self.peaks.start()  # row 0's stage: pre-training and row 0
        self.run.write_text("config.yaml", self.config["yaml"])
        if self.run.is_writer():
            self.model.tokenizer.save_pretrained(self.run.path / "tokenizer")
        self.print_memory_estimate(pretraining=checkpoint is None and self.pretrain.max_epochs > 0)
        if checkpoint is None and self.pretrain.max_epochs:
            self.pretrain_stage()
        self.strategies.setup(self.model, self.stream)
        if checkpoint is None:
            self.evaluate(0, self.trainers("stage_0"))
            self.save_checkpoint(0)
            completed = 0
        else:
            completed = self.restore(checkpoint)
        if completed == len(self.stream.tasks):
            status(f"{self.run.path}: all {completed} stages are complete; --resume false starts over")
            return self.run.read_results()
        for experience in self.benchmark.train_stream[completed:]:
            stage = row_after(experience.current_experience)
            trainer = self.tune(experience, stage)
            self.evaluate(stage, trainer)
            self.save_checkpoint(stage)
        status(
            "\n"
            + summary_table(self.stream.task_names, self.scores.strict, compute_metrics(self.scores.strict))
        )
        return self.results(trainer, stage)

    def tune(self, experience, stage: int) -> L.Trainer:
        """One continual stage on ``experience``: the strategies' hooks around a fresh
        Trainer's fit (``penalty`` in every step, ``after_task`` at the fit's end)."""
        task_id = experience.current_experience
        # Each stage draws from a seed of its own, so its shuffling and dropout do not
        # depend on how many random numbers the stages before it consumed (nor on
        # whether they ran in this process or before a resume).
        L.seed_everything(self.seed + stage, verbose=False)
        self.peaks.start()
        self.model.set_trainable(self.model.configured_trainable())
        self.strategies.before_task(self.model, task_id)
        self.module.task_id = task_id
        last = in_progress_checkpoint(self.run.path, stage)
        if last is not None:
            status(f"{self.run.path}: stage {stage} goes on from {last}")
        trainer = self.trainers(f"stage_{stage}", in_progress=in_progress_dir(self.run.path, stage))
        train = self.strategies.train_data(task_id, experience.dataset)
        trainer.fit(self.module, datamodule=self.stage_data(train), ckpt_path=last, weights_only=True)
        return trainer

    def resume_point(self) -> Checkpoint | None:
        """The checkpoint to go on from; None to start from the beginning. A run directory
        that holds another config's results, or results whose checkpoints are gone, is
        refused; ``resume=False`` deletes what contmm wrote there (``contmm.rundir.ownership``)."""
        if not self.resume:
            if kept := self.run.clear():
                shown = ", ".join(str(p.relative_to(self.run.path)) for p in kept[:5])
                status(
                    f"{self.run.path}: starting over; kept {len(kept)} file(s) contmm did not write: {shown}"
                )
            self.run.mark()
            return None
        path, checkpoint = newest_loadable_checkpoint(self.run.path)
        results = self.run.read_results()
        if results is not None:
            check_kept(self.run.path, path, results.get("stages_completed"))
        if checkpoint is not None:
            saved = checkpoint.state["config"]
        elif results is not None:
            saved = results.get("config", {})
        else:
            saved = None
            self.run.check_may_run()
        if saved is not None and (difference := config_difference(saved, self.config["dict"])) is not None:
            raise ValueError(
                f"{self.run.path} holds the results of another config ({difference}). "
                "Pass --resume false to start over there (the files contmm wrote there are "
                "deleted), or choose another --output_dir"
            )
        self.run.mark()
        return checkpoint

    def restore(self, checkpoint: Checkpoint) -> int:
        """Load the model, the strategies and the matrix rows of ``checkpoint``; returns the
        number of stages it completed."""
        self.load_stage(checkpoint, self.run.path)
        self.scores.load_state_dict(checkpoint.state)
        self.held_out.load_state_dict(checkpoint.state)
        self.peaks.load_state_dict(checkpoint.state)
        self.trainers.steps_before = checkpoint.state["trained_steps"]
        # A new CSV logger rewrites its file, and the user's loggers start a new run unless
        # their init_args name the old one: log the restored rows again so they hold them.
        for stage in range(checkpoint.stage + 1):
            self.log_scores(stage, [self.score_loggers[0], *self.trainers.user_loggers])
        status(f"{self.run.path}: resuming after stage {checkpoint.stage} of {len(self.stream.tasks)}")
        return checkpoint.stage

    def load_stage(self, checkpoint: Checkpoint, source: Path | str) -> None:
        """Put the model of ``checkpoint`` (of the run in ``source``) into this run: the
        strategies' state first, which rebuilds the adapters and projectors its weights fill.
        A resume, ``contmm eval --run`` and ``contmm export`` all load a stage this way."""
        self.strategies.load_state_dict(checkpoint.strategies)
        self.weights.load_state_dict(
            checkpoint.model, f"the checkpoint of stage {checkpoint.stage} in {source}"
        )

    def check_inputs(self, checkpoint: Checkpoint | None) -> None:
        """Refuse to go on from ``checkpoint`` with other data, images or another tokenizer."""
        saved = checkpoint.state.get("inputs") if checkpoint is not None else None
        if changed := changed_input(saved, self.inputs, self.read_stream, self.run.path):
            raise ValueError(
                f"{changed} differs from what the run in {self.run.path} was trained on (a data file "
                "or an image edited since?): restore it, or pass --resume false to start over"
            )

    def save_checkpoint(self, stage: int) -> None:
        if self.run.is_writer():
            state = {
                **self.scores.state_dict(),
                **self.held_out.state_dict(),
                **self.peaks.state_dict(),
                "trained_steps": self.trainers.trained_steps,
                "inputs": self.inputs,
                "config": self.config["dict"],
            }
            save_checkpoint(
                self.run.path,
                stage,
                self.weights.state_dict(),
                self.strategies.state_dict(),
                state,
                keep=self.checkpoint.keep,
            )

    def print_memory_estimate(self, pretraining: bool) -> None:
        stages = [("pre-training", self.pretrain.trainable)] if pretraining else []
        for what, trainable in [*stages, ("each stage", self.model.configured_trainable())]:
            status(estimate(self.model, trainable, self.trainers.settings).describe(what))

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
        trainer = self.trainers("pretrain", max_epochs=self.pretrain.max_epochs, max_steps=-1)
        trainer.fit(self.module, datamodule=self.stage_data(self.stream.pretrain_task.train))
        self.module.optimizer_cfg = tuning

    def stage_data(self, train=None, evaluate: list[int] = ()) -> StageData:
        tasks = [*self.stream.tasks, *self.held_out_tasks]  # held-out ids follow the stream's
        eval_tasks = [(j, tasks[j]) for j in evaluate]
        return StageData(
            self.model, self.data, self.module.evaluation.batch_size, self.seed, train, eval_tasks
        )

    def evaluate(self, stage: int, trainer: L.Trainer) -> None:
        """Score the tasks of row ``stage``; write the row, its predictions and results.json."""
        columns = tasks_to_evaluate(stage, len(self.stream.tasks), self.module.evaluation.matrix)
        data = self.stage_data(evaluate=columns + self.held_out.ids())
        evaluation = self.module.evaluate(trainer, data)
        self.scores.record(stage, evaluation)
        self.held_out.record(stage, evaluation)
        self.peaks.record(stage)
        for task_id, task in data.eval_tasks:
            self.run.write_predictions(
                stage, task.name, evaluation.predictions[task_id], evaluation.images.get(task_id)
            )
        self.run.write_results(self.results(trainer, stage))
        if any(generates_images(task.scorer) for task in self.stream.tasks) and self.run.is_writer():
            self.run.write_bytes(GRID_NAME, generation_grid_png(load_run(self.run.path)))
        # The user's loggers themselves, not their stage wrappers: step = stage, as in contmm's.
        self.log_scores(stage, [*self.score_loggers, *self.trainers.user_loggers])

    def log_scores(self, stage: int, loggers: list) -> None:
        for logger in loggers:
            logger.log_metrics(self.scores.scores(stage) | self.held_out.logged(stage), step=stage)
            logger.save()

    def results(self, trainer: L.Trainer, stages_completed: int) -> dict:
        return {
            "tasks": self.stream.task_names,
            "strategies": self.strategies.name,
            "stages_completed": stages_completed,
            "matrix_mode": self.module.evaluation.matrix,
            **self.scores.results(self.reference_scores),
            **(self.held_out.results() if self.held_out_tasks else {}),
            **self.peaks.results(),
            "config": self.config["dict"],
            "env": environment(trainer, self.data.batch_size),
        }
