"""`contmm eval`: score a model on a stream without training.

The model is the config's as built (zero-shot), or with ``--run`` the weights and strategy
state (adapters, projectors, routing keys) of one stage checkpoint of a fit run. Every task of
the stream is scored, as a row of the matrix would be. The output directory is held as a fit
holds its run directory; the run read is held shared while its checkpoint loads, so that a
fit there does not delete it meanwhile (``contmm.rundir.lock``).
"""

from __future__ import annotations

from pathlib import Path

from contmm.rundir.stage_source import read_stage
from contmm.training.environment import environment
from contmm.training.runner import ContinualRun


def evaluate(run: ContinualRun, source: str | None = None, stage: int | None = None) -> dict:
    """Score every task of ``run``'s stream with its model, or with ``source``'s stage
    checkpoint; write ``results.json`` and ``predictions/<task>.jsonl`` to its output_dir."""
    with run.directory.locked("contmm eval"):
        return evaluate_locked(run, source, stage)


def evaluate_locked(run: ContinualRun, source: str | None, stage: int | None) -> dict:
    existing = run.directory.read_results()
    if existing is not None and "scores" not in existing:
        raise ValueError(
            f"{run.directory.path} holds a fit run's results: choose another --output_dir for eval"
        )
    checkpoint = (
        read_stage(Path(source), stage, run.config["dict"], run.model.tokenizer, run.config.get("defaults"))
        if source
        else None
    )
    run.prepare(checkpoint, source)
    trainer = run.trainers("eval")
    evaluation = run.module.evaluate(trainer, run.stage_data(evaluate=range(len(run.stream.tasks))))
    names = run.stream.task_names
    for task_id, records in evaluation.predictions.items():
        run.directory.write_predictions(None, names[task_id], records, evaluation.images.get(task_id))
    results = {
        "tasks": names,
        "scores": {names[j]: score for j, score in evaluation.scores.items()},
        "lenient_scores": {names[j]: score for j, score in evaluation.lenient_scores.items()},
        "strategy_report": evaluation.report,
        "weights": {"run": source, "stage": checkpoint.stage} if checkpoint else "as built (zero-shot)",
        "config": run.config["dict"],
        "env": environment(trainer, run.data.batch_size),
    }
    run.directory.write_results(results)
    return results
