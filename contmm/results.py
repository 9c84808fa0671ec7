"""The run directory on disk: atomic writes of results, predictions and the summary table.

Every write goes to a temporary file in the same directory and is renamed over the
target, so a crash never leaves a half-written file. Only rank 0 writes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from contmm.lock import locked
from contmm.ownership import mark, start_over


def atomic_write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(content) if isinstance(content, bytes) else tmp.write_text(content)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class RunDirectory:
    """``runs/<name>/``: config.yaml, results.json, predictions/, logs/, tokenizer/."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.logs = self.path / "logs"

    @staticmethod
    def is_writer() -> bool:
        return rank_zero_only.rank == 0

    def write_text(self, name: str, text: str) -> None:
        if self.is_writer():
            atomic_write(self.path / name, text)

    def write_bytes(self, name: str, content: bytes) -> None:
        if self.is_writer():
            atomic_write(self.path / name, content)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """This run's hold on the directory (see ``contmm.lock``). Under DDP rank 0 alone
        takes it: the other ranks are the same run, launched by it."""
        with locked(self.path) if self.is_writer() else nullcontext():
            yield

    def mark(self) -> None:
        """Mark the directory as a contmm run's (``contmm.ownership``)."""
        if self.is_writer():
            mark(self.path)

    def clear(self) -> list[Path]:
        """Delete the files a run wrote here (results, predictions, checkpoints, its logs), to
        start over; returns the files of others kept there. Refused in a directory that is
        not a run's (``contmm.ownership``)."""
        return start_over(self.path) if self.is_writer() else []

    def read_results(self) -> dict | None:
        """``results.json``, or None where there is none; ValueError naming it if it is not a
        JSON object."""
        file = self.path / "results.json"
        if not file.is_file():
            return None
        what_to_do = "Put back a good copy, or pass --resume false to start over"
        try:
            results = json.loads(file.read_text())
        except ValueError as error:  # invalid JSON, or not UTF-8
            raise ValueError(f"{file} is not valid JSON ({error}). {what_to_do}") from None
        if isinstance(results, dict):
            return results
        raise ValueError(f"{file} does not hold a JSON object. {what_to_do}")

    def write_results(self, results: dict) -> None:
        self.write_text("results.json", json.dumps(results, indent=2) + "\n")

    def write_predictions(
        self, stage: int | None, task: str, records: list[dict], images: dict[str, bytes] | None = None
    ) -> None:
        """``predictions/stage_<stage>/<task>.jsonl``; without a stage (an eval) ``predictions/<task>.jsonl``.
        A generation task's images (PNG bytes by sample id) go where its records say
        (``<task>/<id>.png`` beside the jsonl), before the records that point to them."""
        folder = "predictions" if stage is None else f"predictions/stage_{stage}"
        by_id = {r["id"]: r for r in records}
        for sample_id, png in (images or {}).items():
            self.write_bytes(f"{folder}/{by_id[sample_id]['image']}", png)
        lines = "".join(json.dumps(r) + "\n" for r in sorted(records, key=lambda r: str(r["id"])))
        self.write_text(f"{folder}/{task}.jsonl", lines)


def summary_table(tasks: list[str], matrix: list[list[float | None]], metrics: dict) -> str:
    """The score matrix (one row per stage) and the metrics, as fixed-width text."""
    width = max(8, *(len(t) for t in tasks))
    header = "stage".ljust(14) + "".join(t.rjust(width + 2) for t in tasks)
    rows = [header]
    for i, row in enumerate(matrix):
        label = "0 (before)" if i == 0 else f"{i} ({tasks[i - 1]})"
        cells = "".join(("-" if v is None else f"{v:.3f}").rjust(width + 2) for v in row)
        rows.append(label[:14].ljust(14) + cells)
    rows.append("")
    rows.append("  ".join(f"{k}={'n/a' if v is None else f'{v:+.3f}'}" for k, v in metrics.items()))
    return "\n".join(rows)
