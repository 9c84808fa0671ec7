"""Forgetting in generation, seen: one fixed prompt per generation task, its image after
every stage.

Rows are the run's generation tasks, columns the stages 0..T; each row follows the task's
first test sample (by id), drawn from the same noise at every stage (``eval.image_seed``),
so what changes from one column to the next is the model. A cell is blank where the stage
did not score the task (``eval.matrix: lower``) and says "no image" where the model wrote no
signal token.
"""

from __future__ import annotations

import io
import json
import textwrap

from matplotlib.figure import Figure
from PIL import Image

from contmm.rundir.directory import RunDirectory
from contmm.rundir.reading import RunData, load_run
from contmm.scoring.images import generates_images

GRID_NAME = "generations.png"


def _records(run: RunData, stage: int, task: str) -> dict[str, dict]:
    """The prediction records of one cell by sample id (none where the cell was not scored)."""
    path = run.path / "predictions" / f"stage_{stage}" / f"{task}.jsonl"
    if not path.is_file():
        return {}
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {r["id"]: r for r in records}


def generation_grid(run: RunData) -> Figure | None:
    """The grid of ``run``, or None if it has no generation task (one whose predictions
    point to images)."""
    cells = {
        (stage, task): _records(run, stage, task) for task in run.tasks for stage in range(len(run.matrix))
    }
    followed = {}  # task -> the record of the sample its row follows
    for (_, task), records in cells.items():
        first = min(records.values(), key=lambda r: str(r["id"]), default=None)
        if task not in followed and first is not None and "image" in first:
            followed[task] = first
    if not followed:
        return None
    stages = len(run.matrix)
    figure = Figure(figsize=(1.5 * stages + 1, 1.7 * len(followed)), layout="constrained")
    axes = figure.subplots(len(followed), stages, squeeze=False)
    for row, (task, sample) in enumerate(followed.items()):
        prompt = textwrap.fill(f"“{sample['question']}”", 24)
        axes[row][0].set_ylabel(f"{task}\n{prompt}", fontsize=7)
        for stage in range(stages):
            ax = axes[row][stage]
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("before" if stage == 0 else f"after {run.tasks[stage - 1]}", fontsize=7)
            record = cells[stage, task].get(sample["id"])
            if record is None:
                continue
            if record["image"] is None:
                ax.text(0.5, 0.5, "no image", ha="center", va="center", fontsize=7, transform=ax.transAxes)
                continue
            with Image.open(run.path / "predictions" / f"stage_{stage}" / record["image"]) as image:
                ax.imshow(image.convert("RGB"), interpolation="nearest")
            ax.set_xlabel(f"score {record['score']:.0f}", fontsize=7)
    figure.suptitle(f"{run.name}: one prompt per generation task after every stage", fontsize=8)
    return figure


def generation_grid_png(run: RunData) -> bytes | None:
    """The grid of ``run`` as PNG bytes, or None if it has no generation task."""
    figure = generation_grid(run)
    if figure is None:
        return None
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def write_generation_grid(run: RunDirectory, tasks: list) -> None:
    """``generations.png`` of the run so far, where the stream has a generation task (rank 0)."""
    if any(generates_images(task.scorer) for task in tasks) and run.is_writer():
        run.write_bytes(GRID_NAME, generation_grid_png(load_run(run.path)))
