"""`contmm eval`: a model, or a fit run's stage, scored on a stream without training."""

import json

import pytest

from contmm.cli import main
from contmm.model.pretrained import FAMILIES
from tests.checkpoints import BUILDERS, fit_config, save_checkpoint
from tests.helpers import TINY_RUN

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("in_repo")]

# Without pre-training, row 0 of a fit run is the model as built: what a zero-shot eval scores.
RUN = [*TINY_RUN, "--pretrain.max_epochs", "0", "--checkpoint.keep", "all"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    main(["fit", *RUN, "--output_dir", str(out)])
    return out


def evaluate(out, *args) -> dict:
    main(["eval", *RUN, "--output_dir", str(out), *args])
    return json.loads((out / "results.json").read_text())


def eval_error(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", *RUN, *args])
    assert exit_info.value.code == 1
    message = capsys.readouterr().err
    assert "Traceback" not in message
    return message


def predictions(folder) -> dict:
    return {p.name: p.read_text() for p in sorted(folder.glob("*.jsonl"))}


@pytest.mark.parametrize("stage", [None, 1])
def test_eval_of_a_runs_stage_reproduces_that_row_of_its_matrix(finished, tmp_path, stage):
    chosen = [] if stage is None else ["--stage", str(stage)]
    results = evaluate(tmp_path / "eval", "--run", str(finished), *chosen)
    fit = json.loads((finished / "results.json").read_text())
    row = fit["matrix"][2 if stage is None else stage]
    assert list(results["scores"].values()) == row and list(results["scores"]) == fit["tasks"]
    assert results["weights"] == {"run": str(finished), "stage": 2 if stage is None else stage}
    stage_dir = finished / f"predictions/stage_{2 if stage is None else stage}"
    assert predictions(tmp_path / "eval/predictions") == predictions(stage_dir)


def test_eval_without_a_run_scores_the_model_as_built(finished, tmp_path):
    results = evaluate(tmp_path / "eval")
    assert (
        list(results["scores"].values()) == json.loads((finished / "results.json").read_text())["matrix"][0]
    )
    assert results["weights"] == "as built (zero-shot)"


def test_a_stage_that_was_not_kept_is_named_with_the_kept_ones(finished, tmp_path, capsys):
    message = eval_error(capsys, "--run", str(finished), "--stage", "7", "--output_dir", str(tmp_path))
    assert "holds no checkpoint of stage 7; kept: ['stage_0', 'stage_1', 'stage_2']" in message


def test_eval_will_not_write_over_a_fit_runs_results(finished, capsys):
    before = (finished / "results.json").read_text()
    assert "holds a fit run's results" in eval_error(capsys, "--output_dir", str(finished))
    assert (finished / "results.json").read_text() == before


def test_a_model_that_does_not_fit_the_runs_weights_is_named(finished, tmp_path, capsys):
    changed = ["--model.input_projector.kind", "linear"]
    message = eval_error(capsys, "--run", str(finished), *changed, "--output_dir", str(tmp_path))
    assert "model.input_projector.kind: 'mlp' there, 'linear' now" in message


def test_eval_scores_a_one_task_stream(tmp_path):
    results = evaluate(tmp_path / "eval", "--stream.init_args.tasks", "[count]")
    assert list(results["scores"]) == ["count"]
    assert len((tmp_path / "eval/predictions/count.jsonl").read_text().splitlines()) == 9


@pytest.mark.parametrize("kind", [kind for kind in BUILDERS if "image" in FAMILIES[kind].modalities])
def test_eval_of_a_whole_checkpoint_run_reproduces_its_last_row(tmp_path, kind):
    config = fit_config(save_checkpoint(kind, tmp_path / kind), tmp_path, optimizer={"lr": 5e-4})
    main(["fit", "--config", config, "--output_dir", str(tmp_path / "fit")])
    main(["eval", "--config", config, "--run", str(tmp_path / "fit"), "--output_dir", str(tmp_path / "eval")])
    fit = json.loads((tmp_path / "fit/results.json").read_text())
    results = json.loads((tmp_path / "eval/results.json").read_text())
    assert list(results["scores"].values()) == fit["matrix"][-1]
    assert predictions(tmp_path / "eval/predictions") == predictions(tmp_path / "fit/predictions/stage_2")
