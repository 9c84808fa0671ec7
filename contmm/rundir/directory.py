"""The run directory on disk: atomic writes of results, predictions and the summary table.

Every write goes to a temporary file in the same directory and is renamed over the
target, so a crash never leaves a half-written file. Only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from contmm.rundir.lock import READERS, locked, no_readers
from contmm.rundir.ownership import check_may_run, check_own, mark, start_over


def atomic_write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per writer: two threads of a process, or the same pid on two hosts sharing a
    # cache directory, never write into one temporary file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
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

    def save_tokenizer(self, tokenizer) -> None:
        """The run's tokenizer, whose vocabulary ``contmm eval --run`` checks its own against."""
        if self.is_writer():
            tokenizer.save_pretrained(self.path / "tokenizer")

    @contextmanager
    def locked(self, command: str) -> Iterator[None]:
        """This run's hold on the directory, as ``command`` (see ``contmm.rundir.lock``). Under DDP
        rank 0 alone takes it: the other ranks are the same run, launched by it."""
        self.check_is_directory()
        with locked(self.path, command) if self.is_writer() else nullcontext():
            yield

    def check_is_directory(self) -> None:
        """A run directory that is a file, or under one, named as such (not "File exists")."""
        for path in (self.path, *self.path.parents):
            if path.exists() and not path.is_dir():
                where = "" if path == self.path else f" (in the path of {self.path})"
                raise ValueError(f"{path} is a file, not a directory{where}: choose another --output_dir")

    def mark(self) -> None:
        """Mark the directory as a contmm run's (``contmm.rundir.ownership``)."""
        if self.is_writer():
            mark(self.path)

    def check_may_run(self) -> None:
        """Refuse a directory that is not a run's and not empty (``contmm.rundir.ownership``)."""
        check_may_run(self.path)

    def clear(self) -> list[Path]:
        """Delete the files a run wrote here (results, predictions, checkpoints, its logs), to
        start over; returns the files of others kept there. Refused in a directory that is
        not a run's (``contmm.rundir.ownership``), and while ``contmm eval`` / ``export`` read it."""
        if not self.is_writer():
            return []
        check_own(self.path)  # before the readers' lock file is made in someone else's folder
        with no_readers(self.path) as free:
            if not free:
                raise ValueError(
                    f"--resume false: a contmm eval or export is reading the checkpoints in {self.path} "
                    f"({READERS}): start over when it has ended"
                )
            return start_over(self.path)

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
