"""What in a run directory is contmm's: the mark of a run directory, and the files that
``--resume false`` deletes to start over.

``contmm fit`` marks a directory it runs in with ``.contmm-run``. Starting over deletes only
the files whose names contmm writes (results, predictions, stage checkpoints, its own CSV
and TensorBoard logs); anything else there, a user's notes beside the logs, is kept, and so
is a folder that still holds such a file. A directory without the mark is contmm's only
when it is empty: ``--output_dir`` pointed at someone's folder deletes nothing, and a run
does not start there (it would write over same-named files). A directory holding a stage
checkpoint is a run of a contmm from before the mark: it is marked and resumed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from contmm.rundir.lock import LOCK, READERS

MARKER = ".contmm-run"
# The folders under logs/csv and logs/tensorboard that contmm's own loggers write.
LOG_VERSIONS = ("pretrain", "scores", "stage_*")
# What `contmm fit` writes and starting over deletes, as globs under the run directory.
WRITTEN = (
    "results.json",
    "generations.png",
    "inputs/images.json",  # every image's stamp (contmm/rundir/fingerprint.py)
    "predictions/stage_*/*.jsonl",
    "predictions/stage_*/*/*.png",  # a generation task's images
    *(
        f"checkpoints/{d}/{f}"
        for d in ("stage_*", ".stage_*.tmp")
        for f in ("model.pt", "strategies.pt", "state.json")
    ),
    "checkpoints/stage_*_in_progress/last.ckpt",
    *(f"logs/csv/{v}/{f}" for v in LOG_VERSIONS for f in ("metrics.csv", "hparams.yaml")),
    *(f"logs/tensorboard/{v}/{f}" for v in LOG_VERSIONS for f in ("events.out.tfevents.*", "hparams.yaml")),
)
FOLDERS = ("predictions", "checkpoints", "logs", "inputs")


def mark(directory: Path) -> None:
    """Mark ``directory`` as a contmm run directory (once: the first run's mark stays)."""
    marker = directory / MARKER
    if not marker.exists():
        directory.mkdir(parents=True, exist_ok=True)
        created = {"created_by": "contmm fit", "created": datetime.now(UTC).isoformat()}
        marker.write_text(json.dumps(created) + "\n")


def foreign_files(directory: Path) -> list[str]:
    """The names in ``directory`` that are not contmm's (nothing if it is marked, or missing)."""
    if (directory / MARKER).exists() or not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name not in (LOCK, READERS))


def listed(names: list[str]) -> str:
    return f"{', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"


def check_own(directory: Path) -> None:
    """Refuse to start over in ``directory`` unless it is marked as contmm's or is empty
    (but for this run's locks)."""
    if others := foreign_files(directory):
        raise ValueError(
            f"--resume false: {directory} is not empty ({listed(others)}) and has no {MARKER}, the mark of "
            "a contmm run directory, so contmm deletes nothing there. Choose a new or empty --output_dir; if "
            f"it is a run directory of a contmm that did not mark them, create {directory / MARKER}"
        )


def check_may_run(directory: Path) -> None:
    """Refuse to run in ``directory`` unless it is marked, empty, or holds a stage checkpoint (a
    run of a contmm from before the mark): a run writes over files of the names it writes."""
    others = foreign_files(directory)
    if others and not any(directory.glob("checkpoints/stage_*/state.json")):
        raise ValueError(
            f"{directory} is not empty ({listed(others)}) and has no {MARKER}, the mark of a contmm run "
            "directory: a run there would write over files of the names it writes. Choose a new or empty "
            f"--output_dir; if it is a contmm run directory that was not marked, create {directory / MARKER}"
        )


def start_over(directory: Path) -> list[Path]:
    """Delete contmm's files in ``directory`` (marked or empty, see ``check_own``) and the
    folders they leave empty; returns the files of others that were kept there."""
    check_own(directory)
    for name in FOLDERS:
        if (directory / name).exists() and not (directory / name).is_dir():
            raise ValueError(
                f"{directory / name} is not a directory (contmm writes its {name} there): move it away"
            )
    written = {p for pattern in WRITTEN for p in directory.glob(pattern) if p.is_file()}
    for path in written:
        path.unlink()
    # Deepest first, so that a folder emptied of its subfolders goes too.
    folders = {parent for path in written for parent in path.parents if directory in parent.parents}
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    return sorted(p for name in FOLDERS for p in (directory / name).rglob("*") if p.is_file())
