"""Which cells each stage scores (`eval.matrix`), and the scores logged across stages."""

import csv
import json

import pytest

from contmm.cli import main
from contmm.scoring.metrics import tasks_to_evaluate
from tests.helpers import TINY_RUN

pytestmark = pytest.mark.usefixtures("in_repo")


def test_the_lower_matrix_scores_row_0_the_tuned_tasks_the_next_one_and_the_last_row():
    assert [tasks_to_evaluate(stage, 4, "lower") for stage in range(5)] == [
        [0, 1, 2, 3],
        [0, 1],
        [0, 1, 2],
        [0, 1, 2, 3],
        [0, 1, 2, 3],
    ]
    assert all(tasks_to_evaluate(stage, 4, "full") == [0, 1, 2, 3] for stage in range(5))


@pytest.fixture(scope="module")
def lower_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lower")
    tasks = ["--stream.init_args.tasks", "[colour, shape, count]"]
    main(["fit", *TINY_RUN, *tasks, "--eval.matrix", "lower", "--output_dir", str(out)])
    return out


@pytest.mark.slow
def test_a_lower_run_leaves_the_unneeded_cells_out_and_still_computes_every_metric(lower_run, monkeypatch):
    results = json.loads((lower_run / "results.json").read_text())
    assert results["matrix_mode"] == "lower"
    assert results["matrix"][1][2] is None  # count after stage 1: two tasks ahead
    assert all(v is not None for i, row in enumerate(results["matrix"]) if i != 1 for v in row)
    assert not (lower_run / "predictions/stage_1/count.jsonl").exists()
    assert all(v is not None for v in results["metrics"].values())
    assert results["missing_metrics"] == {}
    assert set(results["per_task_metrics"]["bwt"]) == {"colour", "shape"}


@pytest.mark.slow
def test_each_tasks_score_and_the_running_metrics_are_logged_with_the_stage_as_step(lower_run):
    rows = list(csv.DictReader((lower_run / "logs/csv/scores/metrics.csv").open()))
    results = json.loads((lower_run / "results.json").read_text())
    by_stage = {int(r["step"]): r for r in rows}
    assert sorted(by_stage) == [0, 1, 2, 3]
    for stage, row in enumerate(results["matrix"]):
        for task, value in zip(results["tasks"], row):
            logged = by_stage[stage][f"score/{task}"]
            assert (logged == "") if value is None else float(logged) == pytest.approx(value)
    assert float(by_stage[3]["metric/acc"]) == pytest.approx(results["metrics"]["acc"])
    assert by_stage[0]["metric/acc"] == ""  # no metric before the first task
    assert list((lower_run / "logs/tensorboard/scores").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_a_reference_run_adds_intransigence_to_the_runs_metrics(tmp_path):
    reference = tmp_path / "single_task"
    reference.mkdir()
    S = [0.5, 0.75]  # its diagonal: each task tuned alone
    matrix = [[0.0, 0.0], [S[0], 0.0], [0.0, S[1]]]
    (reference / "results.json").write_text(json.dumps({"tasks": ["colour", "shape"], "matrix": matrix}))
    out = tmp_path / "run"
    main(["fit", *TINY_RUN, "--output_dir", str(out), "--eval.reference", str(reference)])
    results = json.loads((out / "results.json").read_text())
    R = results["matrix"]
    expected = {"colour": S[0] - R[1][0], "shape": S[1] - R[2][1]}
    assert results["per_task_metrics"]["intransigence"] == pytest.approx(expected)
    assert results["metrics"]["intransigence"] == pytest.approx(sum(expected.values()) / 2)


def test_a_reference_run_of_other_tasks_is_refused_before_training(tmp_path, capsys):
    reference = tmp_path / "single_task"
    reference.mkdir()
    (reference / "results.json").write_text(json.dumps({"tasks": ["count"], "matrix": [[0.0], [1.0]]}))
    out = tmp_path / "run"
    with pytest.raises(SystemExit):
        main(["fit", *TINY_RUN, "--output_dir", str(out), "--eval.reference", str(reference)])
    message = capsys.readouterr().err
    assert str(reference) in message and "['count']" in message
    assert not (out / "results.json").exists()
