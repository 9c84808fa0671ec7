"""Held-out tasks (``eval.held_out``): never trained, scored after every stage, their retention
reported beside the matrix, and kept across a resume."""

import json

import pytest

from contmm.cli import main
from tests.helpers import REPO, TINY_RUN, crash_in_training, fit_error

pytestmark = pytest.mark.usefixtures("in_repo")

HELD_OUT = [*TINY_RUN, "--stream.init_args.tasks", "[colour, count, shape]", "--eval.held_out", "[count]"]


def fit(out, *extra):
    main(["fit", *HELD_OUT, "--output_dir", str(out), *extra])
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("held_out") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        results = fit(out)
    return out, results


@pytest.mark.slow
def test_a_held_out_task_is_scored_after_every_stage_but_never_trained(uninterrupted):
    out, results = uninterrupted
    assert results["tasks"] == ["colour", "shape"]  # not a column of R
    assert len(results["matrix"]) == 3
    scores = results["held_out"]["scores"]["count"]
    assert len(scores) == 3 and all(s is not None for s in scores)
    for stage, score in enumerate(scores):
        records = [json.loads(line) for line in (out / f"predictions/stage_{stage}/count.jsonl").open()]
        assert len(records) == 9
        assert score == pytest.approx(sum(r["score"] for r in records) / len(records))
    before, final = scores[0], scores[-1]
    expected = None if before == 0 else final / before
    assert results["held_out"]["retention"] == {"count": expected}
    assert results["held_out"]["mean_retention"] == expected
    # Two stages trained (colour, shape): the stream's checkpoints and logs know only those.
    assert results["stages_completed"] == 2


@pytest.mark.slow
def test_a_crashed_run_resumes_with_the_held_out_scores_it_had(tmp_path, monkeypatch, uninterrupted):
    _, expected = uninterrupted
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        crash_in_training(patch, task_id=1)
        with pytest.raises(RuntimeError, match="injected crash"):
            fit(out)
    resumed = fit(out)
    assert resumed["held_out"] == expected["held_out"]
    assert resumed["matrix"] == expected["matrix"]


def test_an_unknown_held_out_task_is_named_before_anything_runs(tmp_path, capsys):
    message = fit_error(capsys, *HELD_OUT, "--eval.held_out", "[counting]", "--output_dir", str(tmp_path))
    assert "eval.held_out names task(s) ['counting']" in message


def test_holding_out_every_task_is_refused(tmp_path, capsys):
    message = fit_error(
        capsys, *HELD_OUT, "--eval.held_out", "[colour, count, shape]", "--output_dir", str(tmp_path)
    )
    assert "holds out every task" in message
