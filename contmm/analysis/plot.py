"""Plot run directories to one image (PNG unless the file's extension names another format).

One run: (a) its forgetting curves, the score of every task after every stage, with a star
on the stage that trained the task (and, dotted and grey, every held-out task's, which no
stage trains), and (b) its score matrix R as a heatmap. Several runs:
on top, the average score of the tasks seen so far after each stage, one line per run
(the curve whose mean is MAA), then panels (a) and (b) of every run, one row per run. A run
whose tasks read different media (image, video, audio) names each task's beside it. Runs
of one config over several seeds (:func:`~contmm.rundir.reading.seed_groups`) are one line on
top, their mean, in a band of ± one standard deviation.
Missing cells are gaps in the curves and "–" in the heatmaps, never zeros (blank where
the "lower" matrix mode leaves a cell unscored by design).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from contmm.rundir.reading import RunData, seed_groups
from contmm.scoring.metrics import stage_averages

# Scores of small runs are often exactly 0 or 1 for several tasks at once: distinct markers
# and dash patterns keep lines that lie on top of each other tellable apart.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")
DASHES = ("-", "--", "-.", ":")
# Cells that were not evaluated are light grey rather than the colour of a zero score.
HEATMAP_COLOURS = matplotlib.colormaps["viridis"].with_extremes(bad="0.92")
PANEL_SIZE = (7.0, 4.2)  # inches per panel: room for tilted tick labels and a legend beside the curves
MISSING = "–"
# About how many characters of tick label fit across each kind of axis at PANEL_SIZE.
CURVES_ROOM, HEATMAP_ROOM, COMPARISON_ROOM = 60, 50, 130


def plot_runs(runs: Sequence[RunData]) -> Figure:
    """The figure for ``runs`` (see the module docstring for what it shows)."""
    if not runs:
        raise ValueError("no runs to plot")
    comparison = len(runs) > 1
    rows = len(runs) + comparison
    figure = Figure(figsize=(2 * PANEL_SIZE[0], rows * PANEL_SIZE[1]), layout="constrained")
    grid = figure.add_gridspec(rows, 2, width_ratios=(1.15, 1))
    if comparison:
        draw_comparison(figure.add_subplot(grid[0, :]), runs)
    for row, run in enumerate(runs, start=int(comparison)):
        draw_curves(figure.add_subplot(grid[row, 0]), run)
        draw_heatmap(figure.add_subplot(grid[row, 1]), run)
    return figure


def save_plot(runs: Sequence[RunData], output: str | Path) -> None:
    """Write the figure of ``runs`` to ``output``."""
    plot_runs(runs).savefig(output, dpi=110)


def draw_curves(ax: Axes, run: RunData) -> None:
    """Panel (a): one line per task over stages 0..T; a star where the task was trained."""
    stages = range(len(run.matrix))
    for j, task in enumerate(run.tasks):
        (line,) = ax.plot(
            stages,
            [_value(row[j]) for row in run.matrix],
            marker=MARKERS[j % len(MARKERS)],
            linestyle=DASHES[j % len(DASHES)],
            label=run.task_label(task),
        )
        if (trained := run.matrix[j + 1][j]) is not None:
            # A scatter, not a line: ax.lines stays one line per task.
            ax.scatter(j + 1, trained, s=220, marker="*", color=line.get_color(), edgecolor="black", zorder=3)
    for k, (task, scores) in enumerate(run.held_out.items()):
        ax.plot(
            stages,
            [_value(score) for score in scores],
            marker=MARKERS[-1 - k % len(MARKERS)],
            linestyle=":",
            color=f"{0.2 + 0.15 * (k % 4):.2f}",
            label=f"{task} (held out)",
        )
    star = Line2D([], [], marker="*", markersize=13, color="0.5", markeredgecolor="black", linestyle="none")
    handles = [*ax.get_lines(), star]
    labels = [*(line.get_label() for line in ax.get_lines()), "trained at this stage"]
    # Beside the axes: inside it would hide lines, below it would collide with tilted tick labels.
    ax.legend(handles, labels, title="task", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    set_stage_ticks(ax, [run.task_label(task) for task in run.tasks], first=0, room=CURVES_ROOM)
    ax.set_xlim(-0.3, len(run.tasks) + 0.3)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("stage (model after training on)")
    ax.set_ylabel("score")
    ax.set_title(f"{run.strategy} ({run.name}): score of each task after each stage")
    ax.grid(alpha=0.3)


def draw_heatmap(ax: Axes, run: RunData) -> None:
    """Panel (b): R with its value in every cell; the cells of the stage that trained a task framed."""
    T = len(run.tasks)
    image = ax.imshow(
        [[_value(v) for v in row] for row in run.matrix], cmap=HEATMAP_COLOURS, vmin=0, vmax=1, aspect="auto"
    )
    for i, row in enumerate(run.matrix):
        for j, value in enumerate(row):
            if value is None:
                text = "" if run.skipped(i, j) else MISSING
            else:
                text = f"{value:.2f}"
            dark = value is not None and value < 0.6  # viridis is dark at low scores
            ax.text(j, i, text, ha="center", va="center", fontsize=10, color="white" if dark else "black")
    for j in range(T):
        ax.add_patch(Rectangle((j - 0.5, j + 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    labels = [run.task_label(task) for task in run.tasks]
    ax.set_xticks(range(T), labels, **_tilt_if_crowded(labels, HEATMAP_ROOM))
    ax.set_yticks(range(T + 1), stage_labels(run.tasks, first=0, separator=" "))
    ax.set_xlabel("task evaluated")
    ax.set_ylabel("stage (model after training on)")
    mode = "\nblank: not scored by design (lower mode)" if run.matrix_mode == "lower" else ""
    ax.set_title(f"{run.strategy} ({run.name}): score matrix R\nred frame: trained at this stage{mode}")
    ax.figure.colorbar(image, ax=ax, label="score")


def draw_comparison(ax: Axes, runs: Sequence[RunData]) -> None:
    """The average score of the tasks tuned so far after each stage 1..T, one line per run,
    or per group of seeds (their mean, and a band of ± one standard deviation)."""
    groups = seed_groups(runs)
    for k, (group, label) in enumerate(zip(groups, run_labels([group[0] for group in groups]))):
        curves = [[_value(v) for v in stage_averages(run.matrix)] for run in group]
        stages = range(1, len(curves[0]) + 1)
        mean = [statistics.fmean(values) for values in zip(*curves)]  # NaN where a run lacks it
        (line,) = ax.plot(
            stages,
            mean,
            marker=MARKERS[k % len(MARKERS)],
            linestyle=DASHES[k % len(DASHES)],
            linewidth=2,
            markersize=8,
            label=label if len(group) == 1 else f"{label} (mean of {len(group)} seeds ± std)",
        )
        if len(group) > 1:
            spread = [statistics.stdev(values) for values in zip(*curves)]
            low = [m - s for m, s in zip(mean, spread)]
            high = [m + s for m, s in zip(mean, spread)]
            ax.fill_between(stages, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    if all(run.tasks == runs[0].tasks for run in runs):
        set_stage_ticks(
            ax, [runs[0].task_label(task) for task in runs[0].tasks], first=1, room=COMPARISON_ROOM
        )
    else:  # no task names that fit every run: stage numbers only
        ax.set_xticks(range(1, max(len(run.tasks) for run in runs) + 1))
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("stage (model after training on)")
    ax.set_ylabel("mean score on the tasks trained so far")
    ax.set_title("Average score of the tasks seen so far after each stage (its mean over stages is MAA)")
    # Below the axes: inside it would hide lines, to its right it would squeeze the panels below.
    ax.legend(title="strategy", loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=min(len(runs), 4))
    ax.grid(alpha=0.3)


def run_labels(runs: Sequence[RunData]) -> list[str]:
    """Each run's strategy, with the run directory's name where two runs share a strategy."""
    strategies = [run.strategy for run in runs]
    return [
        f"{run.strategy} ({run.name})" if strategies.count(run.strategy) > 1 else run.strategy for run in runs
    ]


def set_stage_ticks(ax: Axes, tasks: Sequence[str], first: int, room: int) -> None:
    """Label stages ``first``..T "1\ncolour" ..., or tilted "1 colour" where those would collide."""
    stages = range(first, len(tasks) + 1)
    labels = stage_labels(tasks, first, separator="\n")
    tilt = _tilt_if_crowded(labels, room)
    ax.set_xticks(stages, stage_labels(tasks, first, separator=" ") if tilt else labels, **tilt)


def _tilt_if_crowded(labels: Sequence[str], room: int) -> dict:
    """Text settings that tilt tick labels when they would overlap: ``room`` is the axis width
    in characters, and ticks are evenly spaced, so the longest label needs a slot of its own."""
    longest = max(len(line) for label in labels for line in label.split("\n"))
    if len(labels) * (longest + 2) <= room:
        return {}
    return {"rotation": 30, "ha": "right", "rotation_mode": "anchor"}


def stage_labels(tasks: Sequence[str], first: int, separator: str) -> list[str]:
    """Tick labels "0<sep>before", "1<sep>colour", ... for stages ``first``..T."""
    names = ["before", *tasks]
    return [f"{stage}{separator}{names[stage]}" for stage in range(first, len(names))]


def _value(score: float | None) -> float:
    return math.nan if score is None else score  # NaN: matplotlib leaves a gap / a "bad" cell
