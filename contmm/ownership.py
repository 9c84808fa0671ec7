"""What in a run directory is contmm's: the mark of a run directory, and the files that
``--resume false`` deletes to start over.

``contmm fit`` marks a directory it runs in with ``.contmm-run``. Starting over deletes only
the files whose names contmm writes (results, predictions, stage checkpoints, its own CSV
and TensorBoard logs); anything else there, a user's notes beside the logs, is kept, and so
is a folder that still holds such a file. A directory without the mark is contmm's only
when it is empty: ``--output_dir`` pointed at someone's folder deletes nothing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from contmm.lock import LOCK

MARKER = ".contmm-run"
# The folders under logs/csv and logs/tensorboard that contmm's own loggers write.
LOG_VERSIONS = ("pretrain", "scores", "stage_*")
# What `contmm fit` writes and starting over deletes, as globs under the run directory.
WRITTEN = (
    "results.json",
    "generations.png",
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
FOLDERS = ("predictions", "checkpoints", "logs")


def mark(directory: Path) -> None:
    """Mark ``directory`` as a contmm run directory (once: the first run's mark stays)."""
    marker = directory / MARKER
    if not marker.exists():
        directory.mkdir(parents=True, exist_ok=True)
        created = {"created_by": "contmm fit", "created": datetime.now(UTC).isoformat()}
        marker.write_text(json.dumps(created) + "\n")


def check_own(directory: Path) -> None:
    """Refuse to start over in ``directory`` unless it is marked as contmm's or is empty
    (but for this run's lock)."""
    if (directory / MARKER).exists() or not directory.exists():
        return
    others = sorted(p.name for p in directory.iterdir() if p.name != LOCK)
    if others:
        raise ValueError(
            f"--resume false: {directory} is not empty ({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''}) and has no {MARKER}, the mark of a contmm run "
            "directory, so contmm deletes nothing there. Choose a new or empty --output_dir; if it "
            f"is a run directory of a contmm that did not mark them, create {directory / MARKER}"
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
