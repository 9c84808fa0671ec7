"""The LightningModule of a continual run: the model's loss (LM, plus the Output Projector's
objectives on generation samples) + strategy penalties; batched evaluation, by text or, for
a generation task, by the image drawn.

One module lives for the whole run; the runner points it at a stage (``task_id``) and
builds a fresh ``Trainer`` per stage. The optimizer is rebuilt at every fit over the
parameters that are trainable *then*, so adapters or projectors a strategy adds are
optimised.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from PIL import Image

from contmm.checks import check_at_least
from contmm.model import ComponentModel
from contmm.scoring.evaluation import Evaluation, TaskScores
from contmm.scoring.images import (
    IMAGE_SCORERS,
    ClipScore,
    generates_images,
    image_noise,
    image_path,
    png_bytes,
)
from contmm.scoring.matrix import row_after
from contmm.scoring.text import score
from contmm.strategy import Strategies
from contmm.training.distributed import all_gather_objects
from contmm.training.optimizer import OptimizerConfig, build_optimizer
from contmm.training.sharding import FSDP2Strategy, ShardedCopy


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation after every stage: batched greedy generation, the cells scored, a reference.

    Args:
        batch_size: prompts generated together per device (left-padded, KV cache).
        max_new_tokens: the longest answer generated.
        matrix: ``full`` scores every task after every stage; ``lower`` scores row 0, the
            tasks tuned so far and the next one: exactly the cells every metric needs.
        reference: a single-task reference run directory (``experiments/single_task.yaml``)
            with the same tasks: its diagonal is S_j, and the metrics gain intransigence.
        image_seed: seeds each generated image's noise, with its sample id: a sample is drawn
            from the same noise after every stage, whatever its batch.
        clip_model: the CLIP model (a transformers directory or hub id) that scores the
            drawings of ``clip_score`` tasks; needed when the stream has one.
        held_out: tasks of the stream that no stage trains, scored after every stage (general
            skills, as MCITlib's benchmarks); their scores and retention (final / before
            tuning) go beside the matrix in results.json (``contmm/scoring/held_out.py``).
    """

    batch_size: int = 64
    max_new_tokens: int = 8
    matrix: Literal["full", "lower"] = "lower"
    reference: str | None = None
    image_seed: int = 0
    clip_model: str | None = None
    held_out: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_at_least("eval.batch_size", self.batch_size, 1)
        check_at_least("eval.max_new_tokens", self.max_new_tokens, 1)


class ContinualModule(L.LightningModule):
    def __init__(
        self,
        model: ComponentModel,
        strategies: Strategies,
        optimizer: OptimizerConfig,
        evaluation: EvalConfig,
        num_tasks: int,
    ) -> None:
        super().__init__()
        self.model = model
        self.strategies = strategies
        self.optimizer_cfg = optimizer
        self.evaluation = evaluation
        self.task_id: int | None = None  # the task being tuned; None during pre-training
        self._clip: ClipScore | None = None
        self.scores = TaskScores(num_tasks)
        self.result: Evaluation | None = None  # of the latest evaluation
        self._sharded: ShardedCopy | None = None  # the fit's sharded copy under fsdp2

    # -- training -------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        outputs = self.model(**batch)
        loss = outputs.loss
        penalty = None if self.task_id is None else self.strategies.penalty(self.model, batch, outputs)
        # Each self.log costs ~0.5 ms a step: the parts of the loss are logged only when there
        # is a penalty, and the batch size is given so Lightning need not search the batch.
        size = batch["input_ids"].shape[0]
        if penalty is not None:
            self.log_dict({"train/lm_loss": loss, "train/penalty": penalty}, batch_size=size)
            loss = loss + penalty
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        if not torch.isfinite(loss):
            # Stop here: the next optimizer step would spread NaN into every weight.
            stage = (
                "pre-training"
                if self.task_id is None
                else f"stage {row_after(self.task_id)} (task {self.task_id})"
            )
            raise ValueError(
                f"{stage}: the loss is {loss.item()} at step {self.global_step} (batch {batch_idx}); "
                "lower optimizer.lr or check the data. Completed stages are kept: the run resumes from them"
            )
        return loss

    def on_train_start(self) -> None:
        # Pretrained transformers models load in eval mode and Lightning keeps each module's
        # mode: without this, dropout stays off and gradient checkpointing does nothing.
        # (Lightning's test loop switches to eval mode for evaluation and back.)
        self.model.train()

    def configure_model(self) -> None:
        # Lightning calls it at the start of every fit and test; only a fit under fsdp2
        # trains a sharded copy (contmm.training.sharding), evaluation decodes with the whole model.
        if (
            isinstance(self.trainer.strategy, FSDP2Strategy)
            and self.trainer.state.fn == TrainerFn.FITTING
            and self._sharded is None
        ):
            self._sharded = ShardedCopy(self.model, self.device_mesh["data_parallel"])
            self.model = self._sharded.module

    def on_train_end(self) -> None:
        if self._sharded is not None:
            self.model, self._sharded = self._sharded.restore(), None
        # Still on the training device and inside the process group, as after_task needs.
        if self.task_id is not None:
            self.strategies.after_task(self.model, self.task_id, self.trainer.train_dataloader)

    def configure_optimizers(self):
        optimizer, scheduler = build_optimizer(
            self.model, self.optimizer_cfg, self.trainer.estimated_stepping_batches
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- evaluation -----------------------------------------------------------------------

    def evaluate(self, trainer: L.Trainer, datamodule: L.LightningDataModule) -> Evaluation:
        """Score the datamodule's evaluation tasks by batched generation, on every rank."""
        trainer.test(self, datamodule=datamodule, verbose=False)
        return self.result

    def on_test_epoch_start(self) -> None:
        self.scores.reset()
        self._predictions: dict[int, list[dict]] = defaultdict(list)
        self._images: dict[int, dict[str, bytes]] = defaultdict(dict)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        task_id, task = self.trainer.datamodule.eval_tasks[dataloader_idx]
        draws = generates_images(task.scorer)
        with self.strategies.eval_context(self.model, task_id, batch):
            if draws:
                noise = [image_noise(self.evaluation.image_seed, i) for i in batch["ids"]]
                new_tokens, pictures = self.model.draw(batch, self.evaluation.max_new_tokens, noise)
            else:
                new_tokens = self.model.generate(batch, self.evaluation.max_new_tokens)
        predictions = [
            p.strip() for p in self.model.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        ]
        if draws:
            scores = self._score_images(task.scorer, batch["answers"], pictures)
            # Where each image is, beside the jsonl (None: the model drew nothing for it).
            drawn = {batch["ids"][row]: png_bytes(picture) for row, picture in pictures.items()}
            self._images[task_id].update(drawn)
        else:
            scores = [score(task.scorer, p, a) for p, a in zip(predictions, batch["answers"])]
        strict = torch.tensor([s["strict"] for s in scores])
        self.scores.update(task_id, strict, torch.tensor([s["lenient"] for s in scores]))
        for sample_id, question, answer, prediction, sample in zip(
            batch["ids"], batch["questions"], batch["answers"], predictions, scores
        ):
            record = {
                "id": sample_id,
                "question": question,
                "answer": answer,
                "prediction": prediction,
                "score": sample["strict"],
            }
            if sample["lenient"] != sample["strict"]:  # e.g. the answer inside a longer sentence
                record["lenient_score"] = sample["lenient"]
            if draws:
                record["image"] = image_path(task.name, sample_id) if sample_id in drawn else None
            self._predictions[task_id].append(record)

    def _score_images(self, scorer: str, answers: list[str], pictures: dict[int, Image.Image]) -> list[dict]:
        """Each row's drawing scored against its answer (0 where the model drew none)."""
        image_scorer = self.clip_scorer() if scorer == "clip_score" else IMAGE_SCORERS[scorer]
        values = [image_scorer(pictures[row], a) if row in pictures else 0.0 for row, a in enumerate(answers)]
        return [{"strict": v, "lenient": v} for v in values]

    def clip_scorer(self) -> ClipScore:
        """The CLIP scorer, loaded at its first use and kept (outside the module's weights:
        it is never trained or checkpointed)."""
        if self._clip is None:
            self._clip = ClipScore(self.evaluation.clip_model)
        return self._clip.to(self.device)

    def on_test_epoch_end(self) -> None:
        means, lenient, counts = self.scores.per_task()  # reduced over ranks by torchmetrics
        evaluated = [task_id for task_id, _ in self.trainer.datamodule.eval_tasks]
        scored = [j for j in evaluated if counts[j] > 0]
        shards = all_gather_objects(dict(self._predictions))
        image_shards = all_gather_objects(dict(self._images))
        self.result = Evaluation(
            scores={j: float(means[j]) for j in scored},
            lenient_scores={j: float(lenient[j]) for j in scored},
            predictions={j: [r for shard in shards for r in shard.get(j, [])] for j in evaluated},
            report=self.strategies.evaluation_report(self.model),  # collective: every rank is here
            images={
                j: {k: v for shard in image_shards for k, v in shard.get(j, {}).items()} for j in evaluated
            },
        )
