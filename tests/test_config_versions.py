"""A run started by an older contmm, whose saved config lacks parameters that classes gained
since, resumes with the same command; a value other than the new parameter's default is
still a change."""

import json

import pytest

from contmm.cli import main
from contmm.rundir.checkpoint import config_difference
from tests.helpers import TINY_RUN, fit_error

STREAM = {"class_path": "streams.synthetic.SyntheticShapes", "init_args": {"tasks": ["colour"], "seed": 0}}


def current(**init_args) -> dict:
    return {"stream": {**STREAM, "init_args": {**STREAM["init_args"], **init_args}}}


def test_a_parameter_added_since_counts_at_its_default_in_a_saved_config():
    older = {"stream": STREAM}
    assert config_difference(older, current(rounds=1)) is None
    assert config_difference(older, current(rounds=5)) == "stream.init_args.rounds: 1 there, 5 now"


def test_a_strategy_of_a_list_gains_parameters_too():
    older = {"strategies": [{"class_path": "strategies.ewc.EWC", "init_args": {"ewc_lambda": 1000.0}}]}
    now = {
        "strategies": [
            {"class_path": "strategies.ewc.EWC", "init_args": {"ewc_lambda": 1000.0, "mode": "separate"}}
        ]
    }
    assert config_difference(older, now) is None
    now["strategies"][0]["init_args"]["mode"] = "online"
    assert config_difference(older, now) is not None


def test_an_unknown_key_and_another_class_are_still_differences():
    assert config_difference({"stream": STREAM}, current(colours=3)) is not None
    other = {"stream": {**STREAM, "class_path": "streams.llava.LLaVAStream"}}
    assert config_difference({"stream": STREAM}, other) is not None


def test_a_section_key_added_since_counts_at_the_parsers_default():
    defaults = {"eval": {"image_seed": 0, "batch_size": 64}, "trainer": {"detect_anomaly": False}}
    older = {"eval": {"batch_size": 8}, "trainer": {}}
    assert (
        config_difference(
            older, {"eval": {"batch_size": 8, "image_seed": 0}, "trainer": {}}, defaults=defaults
        )
        is None
    )
    now = {"eval": {"batch_size": 8, "image_seed": 3}, "trainer": {"detect_anomaly": False}}
    assert config_difference(older, now, defaults=defaults) == "eval.image_seed: 0 there, 3 now"
    # Without the parser's defaults a missing key is a difference, as before.
    assert config_difference(older, now) == "eval.image_seed: '<unset>' there, 3 now"


@pytest.mark.slow
@pytest.mark.usefixtures("in_repo")
def test_a_run_saved_without_a_newer_parameter_resumes_with_the_same_command(tmp_path, capsys):
    out = tmp_path / "run"
    main(["fit", *TINY_RUN, "--output_dir", str(out)])
    for file in [out / "results.json", *out.glob("checkpoints/stage_*/state.json")]:
        saved = json.loads(file.read_text())
        # As an older contmm and Lightning wrote it: a stream parameter, a key of a config
        # section and a Trainer argument added since are missing.
        del saved["config"]["stream"]["init_args"]["rounds"]
        del saved["config"]["eval"]["image_seed"]
        del saved["config"]["trainer"]["detect_anomaly"]
        file.write_text(json.dumps(saved))
    capsys.readouterr()
    main(["fit", *TINY_RUN, "--output_dir", str(out)])
    assert "all 2 stages are complete" in capsys.readouterr().out
    message = fit_error(capsys, *TINY_RUN, "--output_dir", str(out), "--stream.init_args.rounds", "2")
    assert "stream.init_args.rounds: 1 there, 2 now" in message
    message = fit_error(capsys, *TINY_RUN, "--output_dir", str(out), "--eval.image_seed", "3")
    assert "eval.image_seed: 0 there, 3 now" in message
