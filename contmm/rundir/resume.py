"""Where a run goes on from: the newest stage checkpoint of its run directory, if the run
there is this config's and was trained on the same inputs; none when it starts over. As in
Avalanche's ``maybe_load_checkpoint``, this is decided before the loop, which only starts
from the stage it is given."""

from __future__ import annotations

from contmm.rundir.checkpoint import Checkpoint, check_kept, config_difference, newest_loadable_checkpoint
from contmm.rundir.directory import RunDirectory
from contmm.rundir.fingerprint import changed_input
from contmm.stream import TaskStream
from contmm.training.distributed import status


def resume_point(
    run: RunDirectory, resume: bool, config: dict, defaults: dict | None = None
) -> Checkpoint | None:
    """The checkpoint to go on from; None to start from the beginning. A run directory that
    holds another config's results, or results whose checkpoints are gone, is refused;
    ``resume=False`` deletes what contmm wrote there (``contmm.rundir.ownership``). A key the
    run's saved config lacks counts at its value in ``defaults`` (the parser's)."""
    if not resume:
        if kept := run.clear():
            shown = ", ".join(str(p.relative_to(run.path)) for p in kept[:5])
            status(f"{run.path}: starting over; kept {len(kept)} file(s) contmm did not write: {shown}")
        run.mark()
        return None
    path, checkpoint = newest_loadable_checkpoint(run.path)
    results = run.read_results()
    if results is not None:
        check_kept(run.path, path, results.get("stages_completed"))
    if checkpoint is not None:
        saved = checkpoint.state["config"]
    elif results is not None:
        saved = results.get("config", {})
    else:
        saved = None
        run.check_may_run()
    if saved is not None and (difference := config_difference(saved, config, defaults=defaults)) is not None:
        raise ValueError(
            f"{run.path} holds the results of another config ({difference}). Pass --resume false to "
            "start over there (the files contmm wrote there are deleted), or choose another --output_dir"
        )
    run.mark()
    return checkpoint


def check_same_inputs(
    checkpoint: Checkpoint | None, inputs: dict, stream: TaskStream, run: RunDirectory
) -> None:
    """Refuse to go on from ``checkpoint`` with other data, images or another tokenizer."""
    saved = checkpoint.state.get("inputs") if checkpoint is not None else None
    if changed := changed_input(saved, inputs, stream, run.path):
        raise ValueError(
            f"{changed} differs from what the run in {run.path} was trained on (a data file or an "
            "image edited since?): restore it, or pass --resume false to start over"
        )
