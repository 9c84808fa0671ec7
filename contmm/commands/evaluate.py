"""`contmm eval`: score a model on a stream without training.

The model is the config's as built (zero-shot), or with ``--run`` the weights and strategy
state (adapters, projectors, routing keys) of one stage checkpoint of a fit run. Every task of
the stream is scored, as a row of the matrix would be. The output directory is held as a fit
holds its run directory; the run read is held shared while its checkpoint loads, so that a
fit there does not delete it meanwhile (``contmm.rundir.lock``).
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from contmm.rundir.checkpoint import CHECKPOINTS, config_difference, latest_checkpoint, load_checkpoint
from contmm.rundir.lock import reading
from contmm.training.environment import environment
from contmm.training.runner import ContinualRun

# The config sections a run's checkpoint must agree with: they decide what its weights fit.
MODEL_SECTIONS = ("model", "strategies", "pretrain")


def stage_checkpoint(source: Path, stage: int | None) -> Path:
    """``source``'s checkpoint of ``stage`` (default: its newest), or an error naming what is kept."""
    path = latest_checkpoint(source) if stage is None else source / CHECKPOINTS / f"stage_{stage}"
    if path is None or not (path / "state.json").is_file():
        kept = sorted(p.name for p in (source / CHECKPOINTS).glob("stage_*") if (p / "state.json").is_file())
        raise ValueError(
            f"{source} holds no checkpoint of stage {stage if stage is not None else '(any)'}; kept: "
            f"{kept or 'none'} (fit with --checkpoint.keep all to keep every stage)"
        )
    return path


def same_vocabulary(run: ContinualRun, source: Path) -> None:
    """A word-level tokenizer is built from the stream's words: another stream's would give the
    run's token ids other meanings, so the run's weights need the run's vocabulary."""
    saved = source / "tokenizer"
    if saved.is_dir() and AutoTokenizer.from_pretrained(saved).get_vocab() != run.model.tokenizer.get_vocab():
        raise ValueError(
            f"this stream's words build another vocabulary than {saved}: the weights of {source} "
            "read token ids of the vocabulary of its own stream (evaluate on that stream)"
        )


def load_stage(run: ContinualRun, source: Path, stage: int | None) -> int:
    """Set up ``run``'s strategies and load into it ``source``'s checkpoint of ``stage``
    (default: its newest), as a resume loads one (``ContinualRun.load_stage``), holding
    ``source`` as a reader meanwhile (``contmm.rundir.lock``); returns the stage."""
    run.strategies.setup(run.model, run.stream)
    with reading(source):  # a fit there does not delete the checkpoint meanwhile
        checkpoint = load_checkpoint(stage_checkpoint(source, stage))
    saved = {k: checkpoint.state["config"].get(k) for k in MODEL_SECTIONS}
    if (
        difference := config_difference(saved, {k: run.config["dict"][k] for k in MODEL_SECTIONS})
    ) is not None:
        raise ValueError(f"the config's model does not fit the weights of {source} ({difference})")
    same_vocabulary(run, source)
    run.load_stage(checkpoint, source)
    return checkpoint.stage


def evaluate(run: ContinualRun, source: str | None = None, stage: int | None = None) -> dict:
    """Score every task of ``run``'s stream with its model, or with ``source``'s stage
    checkpoint; write ``results.json`` and ``predictions/<task>.jsonl`` to its output_dir."""
    with run.run.locked("contmm eval"):
        return evaluate_locked(run, source, stage)


def evaluate_locked(run: ContinualRun, source: str | None, stage: int | None) -> dict:
    existing = run.run.read_results()
    if existing is not None and "scores" not in existing:
        raise ValueError(f"{run.run.path} holds a fit run's results: choose another --output_dir for eval")
    if source is not None:
        stage = load_stage(run, Path(source), stage)
    else:
        run.strategies.setup(run.model, run.stream)
    trainer = run.trainers("eval")
    evaluation = run.module.evaluate(trainer, run.stage_data(evaluate=range(len(run.stream.tasks))))
    names = run.stream.task_names
    for task_id, records in evaluation.predictions.items():
        run.run.write_predictions(None, names[task_id], records, evaluation.images.get(task_id))
    results = {
        "tasks": names,
        "scores": {names[j]: score for j, score in evaluation.scores.items()},
        "lenient_scores": {names[j]: score for j, score in evaluation.lenient_scores.items()},
        "strategy_report": evaluation.report,
        "weights": {"run": source, "stage": stage} if source else "as built (zero-shot)",
        "config": run.config["dict"],
        "env": environment(trainer, run.data.batch_size),
    }
    run.run.write_results(results)
    return results
