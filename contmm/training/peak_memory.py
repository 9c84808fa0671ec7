"""Each stage's peak memory, kept in results.json: how a strategy's memory grows over a long
stream (replay's buffer, EWC's Fisher per task, an adapter per task) and whether a naive run
leaks.

A stage is its training and the evaluation of its row (row 0: pre-training and row 0). On
Linux the process's peak resident set size (``VmHWM``) is reset when a stage starts (by
writing 5 to ``/proc/self/clear_refs``) and read when its row is scored, so each stage
reports its own peak, not the largest since the process started (which ``getrusage`` gives,
and which could not show a stage that needs less than one before it). Where that reset is
not possible, ``rss_mib`` is null. On a GPU, torch's peak of allocated memory is reset and
read the same way (``cuda_mib``). Under DDP the largest over the ranks is kept. DataLoader
workers are processes of their own and are not counted.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from contmm.training.distributed import all_gather_objects

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
MIB = 1024 * 1024


def reset_peaks() -> bool:
    """Start measuring a stage; whether the resident-set peak could be reset."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        CLEAR_REFS.write_text("5")
    except OSError:  # not Linux, or a kernel that refuses it
        return False
    return True


def resident_peak_mib() -> float | None:
    """The process's peak resident set since the last reset, in MiB."""
    try:
        found = re.search(r"^VmHWM:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return None if found is None else int(found.group(1)) / 1024


class StagePeaks:
    """The peak memory of every row's stage, by row; restored from the checkpoints on resume."""

    def __init__(self, rows: int) -> None:
        self.rss: list[float | None] = [None] * rows
        self.cuda: list[float | None] = [None] * rows
        self.resettable = False

    def start(self) -> None:
        self.resettable = reset_peaks()

    def record(self, row: int) -> None:
        """Keep the peaks of the stage of ``row`` (every rank calls this: the largest is kept)."""
        rss = resident_peak_mib() if self.resettable else None
        cuda = torch.cuda.max_memory_allocated() / MIB if torch.cuda.is_available() else None
        ranks = all_gather_objects((rss, cuda))
        self.rss[row] = _largest(r for r, _ in ranks)
        self.cuda[row] = _largest(c for _, c in ranks)

    def results(self) -> dict:
        return {"peak_memory_mib": {"rss": self.rss, "cuda": self.cuda}}

    def state_dict(self) -> dict:
        return self.results()

    def load_state_dict(self, state: dict) -> None:
        """Rows of a checkpoint written before peaks were kept stay null."""
        saved = state.get("peak_memory_mib", {})
        for kind in ("rss", "cuda"):
            for row, value in enumerate(saved.get(kind, [])[: len(self.rss)]):
                getattr(self, kind)[row] = value


def _largest(values) -> float | None:
    known = [v for v in values if v is not None]
    return round(max(known), 1) if known else None
