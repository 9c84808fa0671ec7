"""Stage checkpoints: what a run needs to go on from the stage after the last completed one.

``checkpoints/stage_<i>/`` holds, after row i of the matrix is written:

- ``model.pt``: the model's tensors, except those of components no stage ever trains
  (rebuilt identically from the config), so a frozen pretrained LLM is not copied;
- ``strategies.pt``: the strategies' state (replay memory, Fisher, adapters, ...);
- ``state.json``: the stage, the matrix rows so far, the strategies' reports, the
  optimizer steps trained so far (where the user's loggers go on) and the resolved config
  the run was started with.

While stage i+1 trains, Lightning's ``last.ckpt`` (after each epoch) sits in
``checkpoints/stage_<i+1>_in_progress/``, so an interrupted stage goes on from its last
finished epoch.

A checkpoint is written to a temporary directory and renamed into place, so a crash
leaves either the whole of it or none; only the newest is kept unless ``checkpoint.keep``
is ``all`` (an older one that ``contmm eval`` or ``export`` reads at that moment is removed
with the next stage's). Tensors load with
``torch.load(weights_only=True)``: a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from contmm.model import ComponentModel
from contmm.rundir.config_versions import with_new_defaults
from contmm.rundir.lock import no_readers
from contmm.training.distributed import status

CHECKPOINTS = "checkpoints"
# The settings a resume may change; any other difference from the run's config is refused.
MAY_DIFFER_ON_RESUME = ("resume", "output_dir", "trainer.strategy")
# What a resume reads from state.json: the matrix (ScoreMatrix.state_dict) and the rest.
STATE_KEYS = ("stage", "matrix", "lenient_matrix", "reports", "trained_steps", "config")


@dataclass(frozen=True)
class CheckpointConfig:
    """The stage checkpoints in ``checkpoints/stage_<i>/``.

    Args:
        keep: ``last`` keeps the newest stage's checkpoint only (all a resume needs);
            ``all`` keeps every stage's, so that each stage's model can be evaluated later.
            A resume goes on after the newest either way.
    """

    keep: Literal["last", "all"] = "last"


@dataclass
class Checkpoint:
    stage: int
    model: dict[str, torch.Tensor]
    strategies: dict
    state: dict


class TrainedWeights:
    """The model tensors a checkpoint holds: all but those of components no stage trains.

    Those are rebuilt identically from the config, so a frozen pretrained LLM is not copied
    per stage. They are known by identity, not by name: peft renames the layers it wraps.
    (A buffer moved to a GPU is a new tensor and is then saved: buffers are small. The list
    keeps every tensor alive, so no id is reused by a new tensor.)
    """

    def __init__(self, model: ComponentModel, trained: set[str]) -> None:
        self.model = model
        self.untrained_tensors = [
            t for name in model.components() if name not in trained for t in model.component_tensors(name)
        ]
        self.untrained = {id(t) for t in self.untrained_tensors}

    def untrained_names(self) -> set[str]:
        """The state-dict names, under the model's current structure, of the untrained tensors."""
        named = [
            *self.model.named_parameters(remove_duplicate=False),
            *self.model.named_buffers(remove_duplicate=False),
        ]
        return {name for name, t in named if id(t) in self.untrained}

    def state_dict(self) -> dict[str, torch.Tensor]:
        untrained = self.untrained_names()
        return {k: v for k, v in self.model.state_dict().items() if k not in untrained}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        """Load ``tensors`` (from ``source``, named in the error) into the model: every trained
        tensor must be there and nothing else."""
        own = self.model.state_dict()
        if wrong := [k for k, v in tensors.items() if k in own and own[k].shape != v.shape]:
            # torch's own error is a traceback-sized list of every mismatch.
            raise ValueError(
                f"{source} does not fit the model: its model.pt holds {wrong[0]} of shape "
                f"{tuple(tensors[wrong[0]].shape)}, the model built from the config has "
                f"{tuple(own[wrong[0]].shape)} ({len(wrong)} tensor(s) differ). It was not written "
                "for this model: restore the run's own checkpoint, or start over (--resume false)"
            )
        missing, unexpected = self.model.load_state_dict(tensors, strict=False)
        missing = sorted(set(missing) - self.untrained_names())
        if unexpected or missing:
            raise ValueError(
                f"{source} does not fit the model: unexpected {unexpected[:3]}, missing {missing[:3]}"
            )


def save_checkpoint(
    run_path: Path,
    stage: int,
    model_tensors: dict[str, torch.Tensor],
    strategies: dict,
    state: dict,
    keep: Literal["last", "all"],
) -> None:
    """Write ``checkpoints/stage_<stage>`` atomically; remove the older ones unless ``keep`` is
    ``all``, and Lightning's in-progress files of the stage either way."""
    root = run_path / CHECKPOINTS
    tmp = root / f".stage_{stage}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({k: v.detach().cpu() for k, v in model_tensors.items()}, tmp / "model.pt")
    torch.save(strategies, tmp / "strategies.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "stage": stage}, indent=1) + "\n")
    final = root / f"stage_{stage}"
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for in_progress in root.glob("stage_*_in_progress"):
        shutil.rmtree(in_progress)
    if keep == "last":
        remove_older(root, final)


def remove_older(root: Path, newest: Path) -> None:
    """Remove the stage checkpoints before ``newest``, unless a ``contmm eval`` / ``export``
    reads one now: then they go with the next stage's checkpoint."""
    older = [p for p in root.glob("stage_*") if p != newest and not p.name.endswith("_in_progress")]
    with no_readers(root.parent) as free:
        if not free:
            if older:
                status(f"{root}: kept {older[0].name} while a contmm eval or export reads the run")
            return
        for path in older:
            shutil.rmtree(path)


def in_progress_dir(run_path: Path, stage: int) -> Path:
    """Where Lightning keeps ``last.ckpt`` of a stage that is being trained; removed when the
    stage's own checkpoint is written."""
    return run_path / CHECKPOINTS / f"stage_{stage}_in_progress"


def in_progress_checkpoint(run_path: Path, stage: int) -> Path | None:
    """Lightning's ``last.ckpt`` of ``stage`` to go on from, or None. One that is not a whole
    checkpoint (a kill while it was written: torch saves a zip archive, whose directory comes
    last) is set aside as ``last.ckpt.damaged`` with a warning, and the stage starts over."""
    last = in_progress_dir(run_path, stage) / "last.ckpt"
    if not last.is_file() or zipfile.is_zipfile(last):
        return last if last.is_file() else None
    rank_zero_warn(
        f"{last} is not a whole checkpoint: set aside as last.ckpt.damaged; stage {stage} starts over"
    )
    if rank_zero_only.rank == 0:
        last.replace(last.with_name("last.ckpt.damaged"))
    return None


def latest_checkpoint(run_path: Path) -> Path | None:
    """The newest complete ``checkpoints/stage_<i>`` directory, or None."""
    return next(iter(kept_checkpoints(run_path)), None)


def kept_checkpoints(run_path: Path) -> list[Path]:
    """The complete ``checkpoints/stage_<i>`` directories, newest first."""
    root = run_path / CHECKPOINTS
    if root.exists() and not root.is_dir():
        raise ValueError(
            f"{root} is not a directory, so the run's stage checkpoints are not there: put them "
            "back there, or move it away and pass --resume false to start over"
        )
    stages = [p for p in root.glob("stage_*") if (p / "state.json").is_file()]
    return sorted(stages, key=lambda p: int(p.name.removeprefix("stage_")), reverse=True)


def newest_loadable_checkpoint(run_path: Path) -> tuple[Path | None, Checkpoint | None]:
    """The newest checkpoint that loads, and its path. A damaged one is passed over for the one
    before it, with a warning (with ``checkpoint.keep: all`` it costs a stage, not the run);
    when none loads, the newest's error."""
    kept = kept_checkpoints(run_path)
    newest_error = None
    for n, path in enumerate(kept):
        try:
            return path, load_checkpoint(path)
        except ValueError as error:
            newest_error = newest_error or error
            if n + 1 < len(kept):
                rank_zero_warn(
                    f"{error}\nGoing on from {kept[n + 1]} instead: the stages after it are trained again"
                )
    if newest_error is not None:
        raise newest_error
    return None, None


def load_checkpoint(path: Path) -> Checkpoint:
    model = _load_part(path / "model.pt", _load_tensors)
    strategies = _load_part(path / "strategies.pt", _load_tensors)
    state = _load_part(path / "state.json", lambda f: json.loads(f.read_text()))
    missing = [k for k in STATE_KEYS if k not in state] if isinstance(state, dict) else list(STATE_KEYS)
    if missing:
        raise ValueError(
            f"{path / 'state.json'} is not a stage checkpoint's state: it lacks {missing}.\n"
            "Start over with --resume false, or choose another --output_dir"
        )
    return Checkpoint(state["stage"], model, strategies, state)


def _load_tensors(file: Path):
    # weights_only: a pickle that would build objects or run code is refused.
    return torch.load(file, map_location="cpu", weights_only=True)


def _load_part(file: Path, load):
    """``load(file)``, or one error naming the file and what is wrong with it."""
    try:
        return load(file)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as error:
        # A file cut short is "not a zip archive" / "failed finding central directory".
        raise ValueError(
            f"cannot load the checkpoint file {file}: {type(error).__name__}: {error}\n"
            "Start over with --resume false, or choose another --output_dir"
        ) from None


def check_kept(run_path: Path, newest: Path | None, stages_completed: object) -> None:
    """Refuse to resume a run whose checkpoints are gone: its ``results.json`` says
    ``stages_completed`` stages are complete, so the checkpoint of that stage, or of the one
    before (a crash between writing a row and its checkpoint), must be there. Without it a
    resume would run the completed stages again and overwrite their results."""
    kept = -1 if newest is None else int(newest.name.removeprefix("stage_"))
    if isinstance(stages_completed, int) and kept < stages_completed - 1:
        holds = "no checkpoint" if newest is None else f"only the checkpoint of stage {kept}"
        raise ValueError(
            f"{run_path / 'results.json'} says {stages_completed} stage(s) are complete, but "
            f"{run_path / CHECKPOINTS} holds {holds}: resuming would run them again and overwrite "
            "their results. Put the checkpoints back, or pass --resume false to start over"
        )


def config_difference(
    saved: dict, current: dict, prefix: str = "", defaults: dict | None = None
) -> str | None:
    """The first setting where two resolved configs differ, as 'key: saved there, current
    now', or None. ``resume``, ``output_dir`` (a moved run directory) and
    ``trainer.strategy`` may differ: ddp and fsdp2 train the same weights (tests/test_sharding.py).
    A parameter a class or a section gained since ``saved`` was written counts at its default
    there (``contmm.rundir.config_versions``; ``defaults``: the parser's)."""
    if not prefix:
        saved = with_new_defaults(saved, current, defaults)
    for key in sorted(set(saved) | set(current)):
        if f"{prefix}{key}" in MAY_DIFFER_ON_RESUME:
            continue
        a, b = saved.get(key, "<unset>"), current.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            if (inner := config_difference(a, b, f"{prefix}{key}.")) is not None:
                return inner
        elif a != b:
            return f"{prefix}{key}: {a!r} there, {b!r} now"
    return None
