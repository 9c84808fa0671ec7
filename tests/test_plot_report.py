"""`contmm plot` and `contmm report` on hand-made run directories: what the figure shows, the
numbers of the Markdown table, the CSV fallback, and one clear error line."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.loggers import CSVLogger

from contmm.analysis.plot import plot_runs
from contmm.cli import main
from contmm.rundir.reading import load_run

TASKS = ["colour", "shape", "count"]
# R[0][2] was not evaluated: FWT is n/a, the heatmap shows "–" and the count curve has a gap.
NAIVE = [
    [0.1, 0.2, None],
    [0.8, 0.3, 0.1],
    [0.6, 0.9, 0.2],
    [0.5, 0.7, 0.95],
]
REPLAY = [
    [0.0, 0.1, 0.2],
    [0.9, 0.3, 0.2],
    [0.8, 1.0, 0.4],
    [0.7, 0.9, 1.0],
]
# A single-task reference: only its diagonal R[j+1][j] counts, S = (0.95, 0.8, 1.0).
REFERENCE = [
    [0.0, 0.0, 0.0],
    [0.95, 0.0, 0.0],
    [0.0, 0.8, 0.0],
    [0.0, 0.0, 1.0],
]
# Worked out by hand from the matrices above (T = 3, t_j = j + 1):
EXPECTED = {
    "Naive": {
        "ACC": "0.717",  # (0.5 + 0.7 + 0.95) / 3
        "MFT": "0.883",  # (0.8 + 0.9 + 0.95) / 3
        "MAA": "0.756",  # (0.8 + (0.6 + 0.9) / 2 + 2.15 / 3) / 3
        "BWT": "-0.250",  # ((0.5 - 0.8) + (0.7 - 0.9)) / 2
        "Forgetting": "0.250",  # ((0.8 - 0.5) + (0.9 - 0.7)) / 2
        "FWT": "n/a",  # needs R[0][2]
        "Intransigence": "+0.033",  # ((0.95 - 0.8) + (0.8 - 0.9) + (1.0 - 0.95)) / 3
    },
    "Replay": {
        "ACC": "0.867",  # (0.7 + 0.9 + 1.0) / 3
        "MFT": "0.967",  # (0.9 + 1.0 + 1.0) / 3
        "MAA": "0.889",  # (0.9 + (0.8 + 1.0) / 2 + 2.6 / 3) / 3
        "BWT": "-0.150",  # ((0.7 - 0.9) + (0.9 - 1.0)) / 2
        "Forgetting": "0.150",  # ((0.9 - 0.7) + (1.0 - 0.9)) / 2
        "FWT": "+0.200",  # ((0.3 - 0.1) + (0.4 - 0.2)) / 2
        "Intransigence": "-0.050",  # ((0.95 - 0.9) + (0.8 - 1.0) + (1.0 - 1.0)) / 3
    },
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(path: Path, matrix, strategy: str, tasks=TASKS, **extra) -> Path:
    path.mkdir(parents=True)
    results = {"tasks": tasks, "strategies": strategy, "matrix": matrix, "stages_completed": len(tasks)}
    results["config"] = {"output_dir": str(path)}
    (path / "results.json").write_text(json.dumps(results | extra))
    return path


def write_csv_run(path: Path, matrix, strategies: list[str], listed_tasks: list[str] | None = TASKS) -> Path:
    """The scores as the runner's CSVLogger writes them (columns sorted by name, empty cells),
    each stage in two log calls so that two rows share a step; the config lists the tasks."""
    logger = CSVLogger(path / "logs", name="csv", version="scores")
    for stage, row in enumerate(matrix):
        scores = [(f"score/{task}", v) for task, v in zip(TASKS, row) if v is not None]
        logger.log_metrics({"metric/acc": 0.5, **dict(scores[:1])}, step=stage)
        logger.log_metrics(dict(scores[1:]), step=stage)
    logger.save()
    config = {
        "seed": 0,
        "strategies": [{"class_path": f"strategies.{name.lower()}.{name}"} for name in strategies],
    }
    if listed_tasks:
        config["stream"] = {
            "class_path": "streams.synthetic.SyntheticShapes",
            "init_args": {"tasks": listed_tasks},
        }
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


def axes_titled(figure, words: str) -> list:
    return [ax for ax in figure.axes if words in ax.get_title()]


def heatmap_texts(matrix) -> list[str]:
    return ["–" if v is None else f"{v:.2f}" for row in matrix for v in row]


def table_rows(printed: str) -> dict[str, dict[str, str]]:
    """The Markdown table as {strategy: {column: cell}}."""
    lines = [line for line in printed.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]
    return {row["strategy"]: row for row in rows}


def test_one_run_plots_forgetting_curves_and_a_heatmap(tmp_path):
    run = write_run(tmp_path / "naive", NAIVE, "Naive")
    out = tmp_path / "naive.png"
    main(["plot", str(run), "-o", str(out)])
    assert out.read_bytes().startswith(PNG_SIGNATURE)

    figure = plot_runs([load_run(run)])
    assert not axes_titled(figure, "Average score")  # the comparison needs several runs
    (curves,) = axes_titled(figure, "score of each task after each stage")
    assert "Naive" in curves.get_title() and curves.get_xlabel() and curves.get_ylabel() == "score"
    lines = curves.get_lines()
    assert [line.get_label() for line in lines] == TASKS
    count = lines[2].get_ydata()
    assert math.isnan(count[0]) and list(count[1:]) == [0.1, 0.2, 0.95]  # a gap, not a zero
    assert [t.get_text() for t in curves.get_xticklabels()] == [
        "0\nbefore",
        "1\ncolour",
        "2\nshape",
        "3\ncount",
    ]
    legend = [t.get_text() for t in curves.get_legend().get_texts()]
    assert legend == [*TASKS, "trained at this stage"]

    (heatmap,) = axes_titled(figure, "score matrix R")
    assert [t.get_text() for t in heatmap.texts] == heatmap_texts(NAIVE)
    assert heatmap.get_xlabel() == "task evaluated" and heatmap.get_ylabel()
    assert [t.get_text() for t in heatmap.get_xticklabels()] == TASKS
    assert any(ax.get_ylabel() == "score" for ax in figure.axes if ax not in (curves, heatmap))  # colorbar


def test_a_run_over_several_media_names_each_task_s_medium(tmp_path):
    media = {"colour": ["image"], "shape": ["audio"], "count": ["video"]}
    mixed = load_run(write_run(tmp_path / "mixed", NAIVE, "Naive", task_media=media))
    (curves,) = axes_titled(plot_runs([mixed]), "score of each task after each stage")
    assert [line.get_label() for line in curves.get_lines()] == [
        "colour (image)",
        "shape (audio)",
        "count (video)",
    ]
    assert curves.get_xticklabels()[2].get_text().endswith("shape (audio)")
    # A run of images alone says nothing more.
    plain = load_run(write_run(tmp_path / "plain", NAIVE, "Naive", task_media={t: ["image"] for t in TASKS}))
    assert [plain.task_label(task) for task in TASKS] == TASKS


def test_several_runs_add_one_average_line_per_run(tmp_path):
    naive = write_run(tmp_path / "naive", NAIVE, "Naive")
    replay = write_run(tmp_path / "replay", REPLAY, "Replay")
    out = tmp_path / "both.png"
    main(["plot", str(naive), str(replay), "-o", str(out)])
    assert out.read_bytes().startswith(PNG_SIGNATURE)

    figure = plot_runs([load_run(naive), load_run(replay)])
    (comparison,) = axes_titled(figure, "Average score")
    assert comparison.get_xlabel() and comparison.get_ylabel()
    assert [line.get_label() for line in comparison.get_lines()] == ["Naive", "Replay"]
    assert list(comparison.get_lines()[1].get_ydata()) == pytest.approx([0.9, 0.9, 2.6 / 3])
    assert len(axes_titled(figure, "score of each task")) == len(axes_titled(figure, "score matrix R")) == 2

    # Two runs of one strategy are told apart by their directory names.
    again = write_run(tmp_path / "naive_seed1", REPLAY, "Naive")
    (comparison,) = axes_titled(plot_runs([load_run(naive), load_run(again)]), "Average score")
    assert [line.get_label() for line in comparison.get_lines()] == ["Naive (naive)", "Naive (naive_seed1)"]


def test_a_lower_matrix_leaves_the_cells_it_skips_blank(tmp_path):
    # The lower mode scores row 0, the last row, and else the tasks tuned so far and the next one.
    lower = [
        [0.1, 0.2, 0.3, 0.4],
        [0.8, 0.5, None, None],
        [0.6, 0.9, 0.2, None],
        [0.5, None, 0.7, 0.3],  # R[3][1] is missing, not skipped
        [0.4, 0.6, 0.7, 0.9],
    ]
    run = write_run(tmp_path / "lower", lower, "Naive", tasks=[*TASKS, "position"], matrix_mode="lower")
    (heatmap,) = axes_titled(plot_runs([load_run(run)]), "score matrix R")
    texts = [t.get_text() for t in heatmap.texts]
    assert texts[4:16] == ["0.80", "0.50", "", "", "0.60", "0.90", "0.20", "", "0.50", "–", "0.70", "0.30"]
    assert "lower" in heatmap.get_title()


def test_report_prints_the_metrics_of_each_run(tmp_path, capsys):
    naive = write_run(tmp_path / "naive", NAIVE, "Naive")
    replay = write_run(tmp_path / "replay", REPLAY, "Replay", metrics={"acc": 123.0})  # stale: ignored
    reference = write_run(tmp_path / "single", REFERENCE, "Naive")

    main(["report", str(naive), str(replay)])
    printed = capsys.readouterr().out
    rows = table_rows(printed)
    assert printed.splitlines()[0] == "| strategy | run | seeds | ACC | MFT | MAA | BWT | Forgetting | FWT |"
    assert rows["Naive"]["run"] == "naive" and rows["Replay"]["run"] == "replay"
    for strategy, expected in EXPECTED.items():
        assert {k: rows[strategy][k] for k in expected if k != "Intransigence"} == {
            k: v for k, v in expected.items() if k != "Intransigence"
        }
    notes = [line for line in printed.splitlines() if line.startswith("- ")]
    assert notes == ["- Naive (naive): FWT n/a: R[0][2] (count after stage 0) was not evaluated"]

    main(["report", str(naive), str(replay), "--reference", str(reference)])
    rows = table_rows(capsys.readouterr().out)
    for strategy, expected in EXPECTED.items():
        assert {k: rows[strategy][k] for k in expected} == expected


def test_a_reference_with_other_tasks_is_refused(tmp_path, capsys):
    naive = write_run(tmp_path / "naive", NAIVE, "Naive")
    other = write_run(tmp_path / "other", REFERENCE, "Naive", tasks=["colour", "count", "shape"])
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(naive), "--reference", str(other)])
    assert exit_info.value.code != 0
    error = capsys.readouterr().err
    assert f"reference run {other}" in error and str(naive) in error


def test_the_csv_scores_give_the_same_plot_and_report(tmp_path, capsys):
    from_json = write_run(tmp_path / "json", NAIVE, "Replay+EWC")
    from_csv = write_csv_run(tmp_path / "csv", NAIVE, ["Replay", "EWC"])

    header = (from_csv / "logs/csv/scores/metrics.csv").read_text().splitlines()[0]
    assert header == "metric/acc,score/colour,score/count,score/shape,step"  # not the stream's order
    run = load_run(from_csv)
    assert (run.strategy, run.tasks, run.matrix, run.matrix_mode) == ("Replay+EWC", TASKS, NAIVE, "full")
    figures = [plot_runs([load_run(path)]) for path in (from_json, from_csv)]
    texts = [[t.get_text() for t in axes_titled(f, "score matrix R")[0].texts] for f in figures]
    assert texts[0] == texts[1] == heatmap_texts(NAIVE)

    main(["report", str(from_json)])
    json_row = table_rows(capsys.readouterr().out)["Replay+EWC"]
    main(["report", str(from_csv)])
    csv_row = table_rows(capsys.readouterr().out)["Replay+EWC"]
    assert json_row | {"run": "csv"} == csv_row
    assert csv_row["ACC"] == EXPECTED["Naive"]["ACC"]

    out = tmp_path / "csv.png"
    main(["plot", str(from_csv), "-o", str(out)])
    assert out.read_bytes().startswith(PNG_SIGNATURE)


def test_a_csv_run_without_a_task_list_keeps_the_header_order(tmp_path):
    run = load_run(write_csv_run(tmp_path / "unlisted", REPLAY, ["Replay"], listed_tasks=None))
    assert run.strategy == "Replay" and run.tasks == ["colour", "count", "shape"]
    assert [row[1] for row in run.matrix] == [row[2] for row in REPLAY]


def test_a_csv_run_without_config_is_named_after_its_directory(tmp_path):
    run = write_csv_run(tmp_path / "my_run", REPLAY, [])
    (run / "config.yaml").unlink()
    assert load_run(run).strategy == "my_run"


def test_a_lower_csv_run_is_recognised(tmp_path):
    lower = [[0.1, 0.2, 0.3], [0.8, 0.5, None], [0.6, 0.9, 0.2], [0.5, 0.6, 0.7]]
    assert load_run(write_csv_run(tmp_path / "lower", lower, ["Naive"])).matrix_mode == "lower"


@pytest.mark.parametrize("command", [["report"], ["plot", "-o", "out.png"]])
def test_a_missing_run_directory_is_one_error_line(tmp_path, capsys, command):
    missing = tmp_path / "no_such_run"
    with pytest.raises(SystemExit) as exit_info:
        main([*command, str(missing)])
    assert exit_info.value.code != 0
    message = capsys.readouterr().err
    errors = [line for line in message.splitlines() if line.startswith("contmm: error:")]
    assert len(errors) == 1 and str(missing) in errors[0]
    assert "Traceback" not in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"tasks": TASKS}), "no 'matrix' key"),
        (json.dumps({"tasks": TASKS, "matrix": NAIVE[:3]}), "4 rows (one per stage) of 3 scores"),
        (json.dumps({"tasks": TASKS, "matrix": [[0.1, "x", 0.2]] + NAIVE[1:]}), "numbers or null"),
    ],
)
def test_a_broken_results_json_is_named(tmp_path, content, problem):
    (tmp_path / "run").mkdir()
    (tmp_path / "run/results.json").write_text(content)
    with pytest.raises(ValueError, match=re.escape(problem)) as error:
        load_run(tmp_path / "run")
    assert str(tmp_path / "run" / "results.json") in str(error.value)


def test_a_directory_without_scores_is_not_a_run(tmp_path):
    with pytest.raises(ValueError, match="neither results.json nor"):
        load_run(tmp_path)


def test_plot_without_output_names_the_option(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(tmp_path)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "plot.output" in message and "contmm plot --help" in message


PERFECT_END = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]


def write_seeded(path: Path, matrix, seed: int, memory: int = 8) -> Path:
    """A run whose results hold its config: Replay(memory), seed ``seed``."""
    write_run(path, matrix, "Replay")
    results = json.loads((path / "results.json").read_text())
    results["config"] = {
        "seed": seed,
        "output_dir": str(path),
        "strategies": [{"class_path": "strategies.replay.Replay", "init_args": {"memory_size": memory}}],
        "trainer": {"max_epochs": 1, "enable_progress_bar": seed == 0},  # display only: same setting
    }
    (path / "results.json").write_text(json.dumps(results))
    return path


def test_runs_that_differ_only_in_seed_share_a_row_of_mean_and_spread(tmp_path, capsys):
    seeds = [write_seeded(tmp_path / f"s{i}", m, i) for i, m in enumerate((NAIVE, REPLAY, PERFECT_END))]
    other = write_seeded(tmp_path / "bigger", REPLAY, 0, memory=16)  # another setting: its own row
    main(["report", *map(str, seeds), str(other)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| Replay")]
    assert len(lines) == 2
    cells = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert cells[:3] == ["Replay", "s0, s1, s2", "3"]
    # ACC per seed: 2.15/3, 2.6/3, 1 -> mean 0.861; sample std sqrt(0.040185 / 2) = 0.142.
    assert cells[3] == "0.861 ± 0.142"
    # FWT is n/a for the first seed (R[0][2] missing), so for the experiment.
    assert cells[8] == "n/a"
    assert [cell.strip() for cell in lines[1].strip("|").split("|")][1:4] == ["bigger", "1", "0.867"]


def test_the_comparison_plot_draws_one_line_and_a_band_per_seed_group(tmp_path):
    seeds = [write_seeded(tmp_path / f"s{i}", m, i) for i, m in enumerate((REPLAY, PERFECT_END))]
    other = write_seeded(tmp_path / "bigger", NAIVE, 0, memory=16)
    (top,) = axes_titled(plot_runs([load_run(p) for p in (*seeds, other)]), "seen so far")
    assert [line.get_label() for line in top.get_lines()] == [
        "Replay (s0) (mean of 2 seeds ± std)",
        "Replay (bigger)",
    ]
    # Seen-so-far averages: REPLAY 0.9, 0.9, 0.8667; PERFECT_END 1, 1, 1 -> means 0.95, 0.95,
    # 0.9333, sample std 0.0707, 0.0707, 0.0943: the band spans 0.8390 (stage 3) to 1.0276.
    assert list(top.get_lines()[0].get_ydata()) == pytest.approx([0.95, 0.95, 0.93333], abs=1e-4)
    (band,) = top.collections
    heights = band.get_paths()[0].vertices[:, 1]
    assert (heights.min(), heights.max()) == pytest.approx((0.83905, 1.02761), abs=1e-4)


# A held-out task's score after each stage (0..3): retention = final / before tuning.
HELD_OUT_NAIVE = {"pope": [0.8, 0.6, 0.5, 0.4]}  # 0.4 / 0.8 = 0.500
HELD_OUT_REPLAY = {"pope": [0.8, 0.8, 0.7, 0.6]}  # 0.6 / 0.8 = 0.750


def test_held_out_tasks_get_a_retention_column_and_dotted_curves(tmp_path, capsys):
    naive = write_run(tmp_path / "naive", NAIVE, "Naive", held_out={"scores": HELD_OUT_NAIVE})
    replay = write_run(tmp_path / "replay", REPLAY, "Replay", held_out={"scores": HELD_OUT_REPLAY})
    plain = write_run(tmp_path / "plain", REPLAY, "Joint")

    main(["report", str(naive), str(replay), str(plain)])
    printed = capsys.readouterr().out
    rows = table_rows(printed)
    assert [rows[s]["Retention"] for s in ("Naive", "Replay", "Joint")] == ["0.500", "0.750", "n/a"]
    assert "- Joint (plain): Retention n/a: no held-out tasks (eval.held_out)" in printed
    main(["report", str(plain)])
    assert "Retention" not in capsys.readouterr().out  # no run holds a task out: no column

    (curves,) = axes_titled(plot_runs([load_run(naive)]), "score of each task")
    held = [line for line in curves.get_lines() if line.get_label() == "pope (held out)"]
    assert len(held) == 1 and list(held[0].get_ydata()) == HELD_OUT_NAIVE["pope"]
    assert held[0].get_linestyle() == ":"
    legend = [text.get_text() for text in curves.get_legend().get_texts()]
    assert legend == [*TASKS, "pope (held out)", "trained at this stage"]


def test_held_out_scores_are_read_from_the_csv_log_too(tmp_path):
    # As the runner logs them: each stage's held-out scores beside its task scores.
    path = tmp_path / "csv"
    logger = CSVLogger(path / "logs", name="csv", version="scores")
    for stage, row in enumerate(NAIVE):
        scores = {f"score/{task}": v for task, v in zip(TASKS, row) if v is not None}
        logger.log_metrics(scores | {"held_out/pope": HELD_OUT_NAIVE["pope"][stage]}, step=stage)
    logger.save()
    (path / "config.yaml").write_text(yaml.safe_dump({"stream": {"init_args": {"tasks": TASKS}}}))
    run = load_run(path)
    assert run.matrix == NAIVE and run.held_out == HELD_OUT_NAIVE
