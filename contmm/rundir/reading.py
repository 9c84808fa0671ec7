"""Read a finished (or partial) run directory back: task names, strategy and score matrix.

``results.json`` is the source when present; otherwise the per-stage scores the CSV logger
wrote (``logs/csv/scores/metrics.csv``) with the task order and strategy names from
``config.yaml``. Metrics are never read from disk: callers compute them from the matrix, so
run directories written before a metric existed (or changed) still report it.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from contmm.scoring.metrics import tasks_to_evaluate

MATRIX_MODES = ("full", "lower")
SCORES_CSV = Path("logs/csv/scores/metrics.csv")
SCORE_PREFIX = "score/"
HELD_OUT_PREFIX = "held_out/"


@dataclass(frozen=True)
class RunData:
    """What plots and reports need from one run directory."""

    path: Path
    name: str  # the directory name
    strategy: str  # e.g. "Replay+EWC"
    tasks: list[str]
    matrix: list[list[float | None]]  # T+1 rows (row 0 = before the stream) of T scores
    matrix_mode: str  # "full": every cell scored; "lower": the cells the metrics need
    # The run's config less its seed, output directory and display settings (NOT_SETTINGS):
    # runs that share it are one experiment repeated with other seeds (None: no config).
    setting: str | None = None
    seed: int | None = None
    # Held-out tasks (eval.held_out): never trained, scored after every stage, not in R.
    held_out: dict[str, list[float | None]] = field(default_factory=dict)
    # Each task's media (``image``, ``video``, ``audio``), where results.json says (newer runs).
    task_media: dict[str, list[str]] = field(default_factory=dict)

    def task_label(self, task: str) -> str:
        """The task's name, with its media where the run's tasks read more than one kind."""
        kinds = {tuple(media) for media in self.task_media.values()}
        media = self.task_media.get(task)
        return f"{task} ({'+'.join(media)})" if len(kinds) > 1 and media else task

    def single_task_scores(self, tasks: Sequence[str], user: str) -> list[float | None]:
        """This run's diagonal R[j+1][j], as the single-task reference S_j of ``user``, whose
        ``tasks`` must be this run's, in the same order."""
        if self.tasks != list(tasks):
            raise ValueError(
                f"the reference run {self.path} has tasks {self.tasks}, "
                f"{user} has {list(tasks)}: they must be the same, in the same order"
            )
        return [self.matrix[j + 1][j] for j in range(len(self.tasks))]

    def skipped(self, stage: int, task: int) -> bool:
        """Whether cell R[stage][task] is unscored by design (the lower mode), not missing."""
        return task not in tasks_to_evaluate(stage, len(self.tasks), self.matrix_mode)


def load_run(path: str | Path) -> RunData:
    """Load ``path``; ValueError naming the path and the problem if it is not a readable run."""
    path = Path(path)
    if not path.is_dir():
        problem = "is not a directory" if path.exists() else "does not exist"
        raise ValueError(f"run directory {path} {problem}")
    if (path / "results.json").is_file():
        return _from_results(path)
    if (path / SCORES_CSV).is_file():
        return _from_csv(path)
    raise ValueError(f"{path} holds neither results.json nor {SCORES_CSV}: not a run directory")


def _from_results(path: Path) -> RunData:
    file = path / "results.json"
    try:
        results = json.loads(file.read_text())
        tasks, matrix = results["tasks"], results["matrix"]
        strategy = results.get("strategies") or path.name
        mode = results.get("matrix_mode", "full")  # older runs predate the key and are full
    except json.JSONDecodeError as error:
        raise ValueError(f"{file} is not valid JSON: {error}") from None
    except KeyError as error:
        raise ValueError(f"{file} has no {error} key") from None
    except (TypeError, AttributeError):
        raise ValueError(f"{file} does not hold a JSON object") from None
    if mode not in MATRIX_MODES:
        raise ValueError(f"{file}: matrix_mode is {mode!r}, expected one of {MATRIX_MODES}")
    _check_shape(file, tasks, matrix)
    config = results.get("config")
    setting = _setting(config if isinstance(config, dict) else _read_config(path))
    held_out = _held_out(file, results.get("held_out", {}).get("scores", {}), len(matrix))
    media = results.get("task_media", {})
    return RunData(path, path.name, str(strategy), tasks, matrix, mode, *setting, held_out, media)


def _from_csv(path: Path) -> RunData:
    file = path / SCORES_CSV
    config = _read_config(path)
    with file.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        columns = [c.removeprefix(SCORE_PREFIX) for c in header if c.startswith(SCORE_PREFIX)]
        if "step" not in header or not columns:
            raise ValueError(f"{file} needs a step column and score/<task> columns, has {header}")
        tasks = _stream_order(config, columns)
        matrix: list[list[float | None]] = [[None] * len(tasks) for _ in range(len(tasks) + 1)]
        held_out_tasks = [c.removeprefix(HELD_OUT_PREFIX) for c in header if c.startswith(HELD_OUT_PREFIX)]
        held_out: dict[str, list[float | None]] = {t: [None] * (len(tasks) + 1) for t in held_out_tasks}
        # The logger writes one row per log call, so a stage's scores may be spread over
        # several rows with the same step: each row fills the cells it has.
        for line, row in enumerate(reader, start=2):
            stage = _number(row["step"], file, line)
            if stage is None or stage != int(stage) or not 0 <= stage <= len(tasks):
                raise ValueError(f"{file} line {line}: step {row['step']!r} is not a stage 0..{len(tasks)}")
            for j, task in enumerate(tasks):
                if (value := _number(row[SCORE_PREFIX + task], file, line)) is not None:
                    matrix[int(stage)][j] = value
            for task, scores in held_out.items():
                if (value := _number(row[HELD_OUT_PREFIX + task], file, line)) is not None:
                    scores[int(stage)] = value
    _check_shape(file, tasks, matrix)
    strategy = _strategy_name(config, path)
    mode = _infer_mode(matrix)
    return RunData(path, path.name, strategy, tasks, matrix, mode, *_setting(config), held_out)


def _held_out(where: Path, scores: object, stages: int) -> dict[str, list[float | None]]:
    """results.json's held-out scores: {task: one score or null per stage}."""
    if not isinstance(scores, dict) or any(
        not isinstance(v, list)
        or len(v) != stages
        or any(x is not None and not isinstance(x, (int, float)) for x in v)
        for v in scores.values()
    ):
        raise ValueError(f"{where}: held_out.scores must map each held-out task to {stages} scores or nulls")
    return scores


# Settings that say where a run is written or what it shows while it runs, not what it is.
NOT_SETTINGS = (
    "seed",
    "output_dir",
    "resume",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
)


def _setting(config: dict) -> tuple[str | None, int | None]:
    """The config without :data:`NOT_SETTINGS`, as canonical JSON, and the seed."""
    if not config:
        return None, None
    rest = {key: value for key, value in config.items() if key not in NOT_SETTINGS}
    for section, key in (name.split(".") for name in NOT_SETTINGS if "." in name):
        if isinstance(rest.get(section), dict):
            rest[section] = {k: v for k, v in rest[section].items() if k != key}
    seed = config.get("seed")
    return json.dumps(rest, sort_keys=True, default=str), seed if isinstance(seed, int) else None


def seed_groups(runs: Sequence[RunData]) -> list[list[RunData]]:
    """The runs grouped by setting, in the order each setting first appears: a group is one
    experiment over several seeds. A run without a config, or one whose seed another run of
    its setting already has, stands alone."""
    groups: list[list[RunData]] = []
    by_setting: dict[str, list[RunData]] = {}
    for run in runs:
        group = by_setting.get(run.setting) if run.setting is not None else None
        if group is not None and run.seed is not None and all(r.seed not in (None, run.seed) for r in group):
            group.append(run)
            continue
        groups.append([run])
        if run.setting is not None and run.seed is not None and run.setting not in by_setting:
            by_setting[run.setting] = groups[-1]
    return groups


def _stream_order(config: dict, columns: list[str]) -> list[str]:
    """The tasks in stream order: Lightning's CSVLogger sorts its columns by name, so the
    header's order is the stream's only where the config does not list the tasks."""
    stream = config.get("stream")
    init_args = stream.get("init_args") if isinstance(stream, dict) else None
    listed = init_args.get("tasks") if isinstance(init_args, dict) else None
    return list(listed) if isinstance(listed, list) and sorted(listed) == sorted(columns) else columns


def _infer_mode(matrix: list[list[float | None]]) -> str:
    """The lower mode if every cell it skips is empty in the stages that ran, else full."""
    T = len(matrix[0])
    skipped = [(i, j) for i in range(T + 1) for j in range(T) if j not in tasks_to_evaluate(i, T, "lower")]
    ran = {i for i, _ in skipped if matrix[i][i] is not None}
    return "lower" if ran and all(matrix[i][j] is None for i, j in skipped) else "full"


def _number(text: str | None, file: Path, line: int) -> float | None:
    if text is None or text.strip() == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{file} line {line}: {text!r} is not a number") from None
    return None if math.isnan(value) else value


def _read_config(path: Path) -> dict:
    """``config.yaml`` as a dict; empty if the run directory has none."""
    file = path / "config.yaml"
    if not file.is_file():
        return {}
    try:
        config = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{file} is not valid YAML: {error}") from None
    if isinstance(config, dict):
        return config
    raise ValueError(f"{file} does not hold a mapping of settings")


def _strategy_name(config: dict, path: Path) -> str:
    """The class names of ``strategies:`` joined by "+", as the runner names them; else the
    directory's name."""
    if (entries := config.get("strategies")) is None:
        return path.name
    try:
        return "+".join(entry["class_path"].rsplit(".", 1)[-1] for entry in entries) or "none"
    except (AttributeError, KeyError, TypeError):
        raise ValueError(f"{path / 'config.yaml'}: strategies must be a list of class_path entries") from None


def _check_shape(where: Path, tasks: object, matrix: object) -> None:
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise ValueError(f"{where}: tasks must be a non-empty list of names, got {tasks!r}")
    T = len(tasks)
    rows = matrix if isinstance(matrix, list) else []
    if len(rows) != T + 1 or any(not isinstance(row, list) or len(row) != T for row in rows):
        lengths = [len(row) if isinstance(row, list) else row for row in rows] if rows else matrix
        raise ValueError(
            f"{where}: the matrix must have {T + 1} rows (one per stage) of {T} scores, got row lengths {lengths}"
        )
    cells = [v for row in rows for v in row]
    if any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))) for v in cells):
        raise ValueError(f"{where}: matrix cells must be numbers or null")
