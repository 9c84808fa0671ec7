"""What a run may do to its directory: start over deleting only what contmm wrote, refuse
results whose checkpoints are gone, one run at a time (the lock), and one message for a
corrupt file."""

import json
import os
import shutil
import socket

import pytest
import torch

from contmm.cli import main
from contmm.rundir.lock import locked, reading
from contmm.training.module import ContinualModule
from tests.helpers import REPO, TINY_RUN, crash_in_training, fit_error, truncate

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("in_repo")]


def snapshot(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        main(["fit", *TINY_RUN, "--output_dir", str(out)])
    return out


@pytest.fixture
def copy(tmp_path, finished):
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    return out


def test_resume_false_deletes_what_contmm_wrote_and_keeps_a_users_files(copy):
    mine = {
        "logs/notes.txt": "what I changed",
        "logs/csv/stage_1/notes.txt": "stage 1 looked odd",
        "predictions/mine.jsonl": '{"id": 1}\n',
    }
    for name, text in mine.items():
        (copy / name).write_text(text)
    (copy / "predictions/stage_2/colour.jsonl").write_text("stale\n")
    main(["fit", *TINY_RUN, "--output_dir", str(copy), "--resume", "false"])
    assert {name: (copy / name).read_text() for name in mine} == mine
    assert (copy / "predictions/stage_2/colour.jsonl").read_text() != "stale\n"  # rewritten
    assert json.loads((copy / "results.json").read_text())["stages_completed"] == 2


def test_resume_false_refuses_a_directory_contmm_did_not_make(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "logs").mkdir(parents=True)
    (out / "logs/notes.txt").write_text("mine")
    (out / "results.json").write_text("{}")
    kept = snapshot(out)
    message = fit_error(capsys, *TINY_RUN, "--output_dir", str(out), "--resume", "false")
    assert f"{out} is not empty" in message and ".contmm-run" in message
    assert snapshot(out) == kept


def test_a_finished_run_whose_checkpoints_were_removed_is_not_run_again(copy, capsys):
    shutil.rmtree(copy / "checkpoints")
    kept = snapshot(copy)
    message = fit_error(capsys, *TINY_RUN, "--output_dir", str(copy))
    assert f"{copy / 'checkpoints'} holds no checkpoint" in message and "--resume false" in message
    assert snapshot(copy) == kept


def test_a_partial_run_whose_checkpoints_is_not_a_directory_is_not_restarted(tmp_path, monkeypatch, capsys):
    out = tmp_path / "partial"
    with monkeypatch.context() as patch:
        crash_in_training(patch, task_id=1)
        with pytest.raises(RuntimeError, match="injected crash"):
            main(["fit", *TINY_RUN, "--output_dir", str(out)])
    shutil.rmtree(out / "checkpoints")
    (out / "checkpoints").write_text("not a directory")
    kept = snapshot(out)
    message = fit_error(capsys, *TINY_RUN, "--output_dir", str(out))
    assert f"{out / 'checkpoints'} is not a directory" in message and "--resume false" in message
    assert snapshot(out) == kept


def test_a_run_directory_in_use_by_a_live_run_is_refused_naming_it(copy, capsys):
    with locked(copy, "contmm fit"):  # a live run, as far as the kernel knows
        kept = snapshot(copy)
        message = fit_error(capsys, *TINY_RUN, "--output_dir", str(copy), "--resume", "false")
        assert f"{copy} is in use: contmm fit (process {os.getpid()} on {socket.gethostname()}" in message
        assert snapshot(copy) == kept


def test_an_eval_into_a_directory_a_fit_holds_is_refused(copy, capsys):
    with locked(copy, "contmm fit"), pytest.raises(SystemExit):
        main(["eval", *TINY_RUN, "--output_dir", str(copy)])
    assert f"{copy} is in use: contmm fit" in capsys.readouterr().err


def test_starting_over_is_refused_while_an_eval_or_export_reads_the_run(copy, capsys):
    with reading(copy):  # a contmm eval --run or export loading a checkpoint
        kept = snapshot(copy)
        message = fit_error(capsys, *TINY_RUN, "--output_dir", str(copy), "--resume", "false")
        assert "a contmm eval or export is reading the checkpoints" in message
        assert snapshot(copy) == kept


def test_an_output_dir_that_is_a_file_is_named_as_such(tmp_path, capsys):
    (tmp_path / "runs").write_text("not a directory")
    message = fit_error(capsys, *TINY_RUN, "--output_dir", str(tmp_path / "runs"))
    assert f"{tmp_path / 'runs'} is a file, not a directory" in message
    message = fit_error(capsys, *TINY_RUN, "--output_dir", str(tmp_path / "runs" / "seq"))
    assert (
        f"{tmp_path / 'runs'} is a file, not a directory (in the path of {tmp_path / 'runs' / 'seq'})"
        in message
    )


def test_a_run_into_an_unmarked_non_empty_directory_is_refused_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "results.md").write_text("a user's notes")
    message = fit_error(capsys, *TINY_RUN, "--output_dir", str(out))
    assert f"{out} is not empty (results.md) and has no .contmm-run" in message
    assert sorted(p.name for p in out.iterdir()) == ["results.md"]


def test_a_run_holds_the_lock_while_it_runs_and_leaves_none_after_a_crash_or_its_end(tmp_path, monkeypatch):
    out = tmp_path / "run"
    held = []
    training_step = ContinualModule.training_step

    def recording(self, batch, batch_idx):
        held.append((out / ".contmm-lock").is_file())
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(ContinualModule, "training_step", recording)
    with monkeypatch.context() as patch:
        crash_in_training(patch, task_id=1)
        with pytest.raises(RuntimeError, match="injected crash"):
            main(["fit", *TINY_RUN, "--output_dir", str(out)])
    assert held and all(held) and not (out / ".contmm-lock").exists()
    held.clear()
    main(["fit", *TINY_RUN, "--output_dir", str(out)])
    assert held and all(held) and not (out / ".contmm-lock").exists()


def widen_a_tensor(checkpoint):
    tensors = torch.load(checkpoint / "model.pt", weights_only=True)
    name = next(iter(tensors))
    tensors[name] = torch.zeros(tensors[name].shape[0] + 1, *tensors[name].shape[1:])
    torch.save(tensors, checkpoint / "model.pt")


@pytest.mark.parametrize(
    ("corrupt", "named"),
    [
        (lambda out: (out / "checkpoints/stage_2/state.json").write_text("{}"), "stage_2/state.json"),
        (lambda out: widen_a_tensor(out / "checkpoints/stage_2"), "model.pt"),
        (lambda out: (out / "results.json").write_text("garbage"), "results.json is not valid JSON"),
        (lambda out: truncate(out / "checkpoints/stage_2/model.pt"), "stage_2/model.pt"),
        (lambda out: truncate(out / "checkpoints/stage_2/strategies.pt"), "stage_2/strategies.pt"),
    ],
    ids=["empty-state", "wrong-shape", "garbage-results", "truncated-model", "truncated-strategies"],
)
def test_a_corrupt_file_gives_one_message_naming_it(copy, capsys, corrupt, named):
    corrupt(copy)
    message = fit_error(capsys, *TINY_RUN, "--output_dir", str(copy))
    assert named in message and message.count("contmm: error:") == 1
    assert "--resume false" in message
