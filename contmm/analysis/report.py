"""Print a Markdown table of the metrics of run directories, one row per run, for a study page.

Metrics are computed from each run's score matrix (never read from results.json), to three
decimals, "n/a" where a cell they need was not evaluated; a line below the table says why.
With --reference, a single-task reference run (each task tuned alone from the same
starting model) gives S_j, its score on task j right after tuning it, and the table gains
an Intransigence column: mean_j (S_j - R[j+1][j]), > 0 when the continual model learns a
task less well than it could.

Runs of one config that differ only in ``seed`` (and where they were written) are one
experiment: they share a row, each metric as mean ± standard deviation over the seeds
(the sample standard deviation, n - 1), with the number of seeds in the ``seeds`` column.

Runs with held-out tasks (``eval.held_out``) add a Retention column: the mean over those
tasks of final score / score before tuning.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import NamedTuple

from contmm.rundir.reading import RunData, seed_groups
from contmm.scoring.metrics import compute_metrics, mean_retention, why_missing


class Column(NamedTuple):
    key: str  # in compute_metrics' result
    title: str
    signed: bool  # a difference, whose sign is the point (BWT < 0 is forgetting)


COLUMNS = (
    Column("acc", "ACC", False),
    Column("mft", "MFT", False),
    Column("maa", "MAA", False),
    Column("bwt", "BWT", True),
    Column("forgetting", "Forgetting", False),
    Column("fwt", "FWT", True),
)
INTRANSIGENCE = Column("intransigence", "Intransigence", True)
RETENTION = Column("retention", "Retention", False)


def report(runs: Sequence[RunData], reference: RunData | None = None) -> str:
    """The table, then one line per metric that is n/a with the reason."""
    notes = missing_notes(runs, reference)
    return report_table(runs, reference) + ("\n\n" + "\n".join(notes) if notes else "")


def report_table(runs: Sequence[RunData], reference: RunData | None = None) -> str:
    """One Markdown row per experiment (a run, or the runs of one config over several seeds):
    strategy, run directories, number of seeds, then the metrics."""
    columns = _columns(runs, reference)
    lines = [
        "| strategy | run | seeds | " + " | ".join(c.title for c in columns) + " |",
        "|---|---|---:|" + "---:|" * len(columns),
    ]
    for group in seed_groups(runs):
        metrics = [
            compute_metrics(run.matrix, reference_scores(reference, run) if reference else None)
            | {"retention": mean_retention(run.held_out)}
            for run in group
        ]
        spreads = [format_spread([m[c.key] for m in metrics], c.signed) for c in columns]
        cells = [group[0].strategy, ", ".join(run.name for run in group), str(len(group)), *spreads]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def missing_notes(runs: Sequence[RunData], reference: RunData | None = None) -> list[str]:
    """'- STRATEGY (run): METRIC n/a: reason' for every metric of every run that is n/a."""
    notes = []
    for run in runs:
        reasons = why_missing(run.matrix, run.tasks)
        if reference is not None and (reason := _intransigence_missing(run, reference)) is not None:
            reasons["intransigence"] = reason
        if mean_retention(run.held_out) is None:
            reasons["retention"] = (
                "no held-out tasks (eval.held_out)"
                if not run.held_out
                else "a held-out task scored 0 before tuning, or its last stage was not scored"
            )
        notes += [
            f"- {run.strategy} ({run.name}): {c.title} n/a: {reasons[c.key]}"
            for c in _columns(runs, reference)
            if c.key in reasons
        ]
    return notes


def reference_scores(reference: RunData, run: RunData) -> list[float | None]:
    """S_j: the reference run's score on task j right after tuning it (its diagonal R[j+1][j])."""
    return reference.single_task_scores(run.tasks, f"the run {run.path}")


def format_value(value: float | None, signed: bool) -> str:
    """Three decimals, "+" on positive differences, "n/a" for None."""
    if value is None:
        return "n/a"
    value = round(value, 3) + 0.0  # + 0.0 turns a rounded -0.0 into 0.0: no "-0.000"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def format_spread(values: Sequence[float | None], signed: bool) -> str:
    """One value as :func:`format_value`; several as "mean ± std" ("n/a" if any is)."""
    if len(values) == 1 or None in values:
        return format_value(values[0] if len(values) == 1 else None, signed)
    spread = format_value(statistics.stdev(values), signed=False)
    return f"{format_value(statistics.fmean(values), signed)} ± {spread}"


def _columns(runs: Sequence[RunData], reference: RunData | None) -> tuple[Column, ...]:
    """The metrics, intransigence given a reference, retention if any run has held-out tasks."""
    return (
        *COLUMNS,
        *([INTRANSIGENCE] if reference is not None else []),
        *([RETENTION] if any(run.held_out for run in runs) else []),
    )


def _intransigence_missing(run: RunData, reference: RunData) -> str | None:
    """Why intransigence is None: the first task whose S_j or R[j+1][j] was not evaluated."""
    for j, (task, score) in enumerate(zip(run.tasks, reference_scores(reference, run))):
        if score is None:
            return f"the reference's R[{j + 1}][{j}] ({task} after stage {j + 1}) was not evaluated"
        if run.matrix[j + 1][j] is None:
            return f"R[{j + 1}][{j}] ({task} after stage {j + 1}) was not evaluated"
    return None
