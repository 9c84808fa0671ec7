"""Resuming after a crash, starting over, determinism, and what a crash leaves behind."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from contmm.cli import main
from contmm.strategy import Strategy
from contmm.training.module import ContinualModule
from tests.helpers import TINY_RUN, crash_in_evaluation, crash_in_training, fit_error, run_files, run_fit

# Three tasks, with the two strategies whose state a resume must carry: replay memory and
# the EWC Fisher and anchors.
RUN = [
    *TINY_RUN,
    "--stream.init_args.tasks",
    "[colour, shape, count]",
    "--strategies",
    (
        "[{class_path: strategies.replay.Replay, init_args: {memory_size: 8}},"
        " {class_path: strategies.ewc.EWC, init_args: {ewc_lambda: 100.0, fisher_batches: 2}}]"
    ),
]


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("in_repo")]


def fit(out, *extra):
    main(["fit", *RUN, "--output_dir", str(out), *extra])
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    main(["fit", *RUN, "--output_dir", str(out)])
    return out


def test_a_run_interrupted_in_stage_3_resumes_and_gives_the_uninterrupted_matrix(
    tmp_path, monkeypatch, uninterrupted
):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        crash_in_training(patch, task_id=2)
        with pytest.raises(RuntimeError, match="injected crash"):
            main(["fit", *RUN, "--output_dir", str(out)])
    # What the crash left: the first two stages, whole.
    partial = json.loads((out / "results.json").read_text())
    assert partial["stages_completed"] == 2 and partial["matrix"][3] == [None, None, None]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["stage_2"]
    before = run_files(out, "predictions/stage_[012]/*.jsonl")
    assert len(before) == 3 * 3 - 1  # row 1 of the lower matrix leaves count out

    resumed = fit(out)
    expected = json.loads((uninterrupted / "results.json").read_text())
    assert resumed["matrix"] == expected["matrix"]
    assert resumed["metrics"] == expected["metrics"]
    assert run_files(out, "predictions/**/*.jsonl") == run_files(uninterrupted, "predictions/**/*.jsonl")
    # The resumed run's CSV of scores holds every stage, the restored ones too.
    logged = (out / "logs/csv/scores/metrics.csv").read_text().splitlines()
    assert sorted(line.split(",")[-1] for line in logged[1:]) == ["0", "1", "2", "3"]


def test_the_same_config_and_seed_give_the_same_results(tmp_path, uninterrupted):
    again = fit(tmp_path / "again")
    expected = json.loads((uninterrupted / "results.json").read_text())
    assert again["matrix"] == expected["matrix"]
    assert run_files(tmp_path / "again", "predictions/**/*.jsonl") == run_files(
        uninterrupted, "predictions/**/*.jsonl"
    )


def test_a_finished_run_is_not_rerun(tmp_path, uninterrupted, capsys):
    out = tmp_path / "copy"
    shutil.copytree(uninterrupted, out)
    before = run_files(out, "**/*")
    assert fit(out)["stages_completed"] == 3
    assert "all 3 stages are complete" in capsys.readouterr().out
    assert run_files(out, "predictions/**/*") == {
        k: v for k, v in before.items() if str(k).startswith("predictions")
    }


def test_another_config_in_a_run_directory_is_refused_and_resume_false_starts_over(
    tmp_path, uninterrupted, capsys
):
    out = tmp_path / "copy"
    shutil.copytree(uninterrupted, out)
    kept = run_files(out, "**/*")
    message = fit_error(capsys, *RUN, "--output_dir", str(out), "--optimizer.lr", "0.01")
    assert "optimizer.lr: 0.001 there, 0.01 now" in message and "--resume false" in message
    assert run_files(out, "**/*") == kept  # nothing touched

    results = fit(out, "--optimizer.lr", "0.01", "--resume", "false")
    assert results["stages_completed"] == 3 and results["config"]["optimizer"]["lr"] == 0.01
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["stage_3"]


def test_checkpoint_keep_all_keeps_every_stage_and_a_resume_goes_on_after_the_newest(
    tmp_path, monkeypatch, capsys
):
    out = tmp_path / "all"
    run = ["fit", *TINY_RUN, "--output_dir", str(out), "--checkpoint.keep", "all"]
    with monkeypatch.context() as patch:
        crash_in_training(patch, task_id=1)
        with pytest.raises(RuntimeError, match="injected crash"):
            main(run)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["stage_0", "stage_1"]

    main(run)
    assert "resuming after stage 1 of 2" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["stage_0", "stage_1", "stage_2"]
    for stage in range(3):
        kept = out / f"checkpoints/stage_{stage}"
        assert {p.name for p in kept.iterdir()} == {"model.pt", "strategies.pt", "state.json"}
        assert json.loads((kept / "state.json").read_text())["stage"] == stage


class Exploit:
    """Unpickled, it creates the file ``marker``: code of the pickle's choosing runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, uninterrupted, capsys):
    out = tmp_path / "copy"
    shutil.copytree(uninterrupted, out)
    (out / "results.json").unlink()
    marker = tmp_path / "code_ran"
    payload = pickle.dumps({"state": Exploit(marker)})
    pickle.loads(payload)  # the payload works: a plain unpickling runs its code
    assert marker.exists()
    marker.unlink()
    (out / "checkpoints/stage_3/strategies.pt").write_bytes(payload)
    message = fit_error(capsys, *RUN, "--output_dir", str(out))
    assert "cannot load the checkpoint" in message and "stage_3" in message
    assert not marker.exists()


class NaNPenalty(Strategy):
    """A penalty that turns the loss into NaN from the second task on."""

    def penalty(self, model, batch, outputs):
        return torch.tensor(float("nan")) if self.task_id else None

    def before_task(self, model, task_id):
        self.task_id = task_id


def test_a_nan_loss_stops_the_run_naming_the_stage_and_step_and_keeps_the_completed_stages(tmp_path, capsys):
    out = tmp_path / "nan"
    strategies = "[{class_path: tests.test_resume.NaNPenalty}]"
    message = fit_error(capsys, *TINY_RUN, "--output_dir", str(out), "--strategies", strategies)
    assert "stage 2 (task 1): the loss is nan at step 0" in message
    results = json.loads((out / "results.json").read_text())
    assert results["stages_completed"] == 1 and results["matrix"][1][0] is not None


def test_a_two_process_ddp_run_killed_between_stages_resumes_and_scores_each_sample_once(tmp_path):
    """Replay + EWC under 2-process CPU DDP: killed before task 1, then run again."""
    out = tmp_path / "ddp"
    strategies = (
        "[{class_path: strategies.replay.Replay, init_args: {memory_size: 8}},"
        " {class_path: strategies.ewc.EWC, init_args: {fisher_batches: 2}},"
        " {class_path: tests.probes.CrashBeforeTask}]"
    )
    args = [*TINY_RUN, "--output_dir", str(out), "--trainer.devices", "2", "--trainer.strategy", "ddp"]

    def run(**env):
        return run_fit(*args, "--strategies", strategies, **env)

    killed = run(CONTMM_CRASH_AT_TASK="1")
    assert killed.returncode != 0 and "injected crash before task 1" in killed.stderr
    assert not (out / ".contmm-lock").exists()  # rank 0 took it and released it
    assert json.loads((out / "results.json").read_text())["stages_completed"] == 1

    resumed = run()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("resuming after stage 1 of 2") == 1  # rank 0 alone says it
    results = json.loads((out / "results.json").read_text())
    assert results["stages_completed"] == 2 and results["env"]["world_size"] == 2
    assert all(v is not None for row in results["matrix"] for v in row)
    for stage in range(3):
        for task in ("colour", "shape"):
            ids = [
                json.loads(line)["id"] for line in (out / f"predictions/stage_{stage}/{task}.jsonl").open()
            ]
            assert sorted(ids) == sorted(f"{task}-test-{i}" for i in range(9))


@pytest.mark.parametrize(
    ("config", "extra"),
    [
        ("lora_per_task", []),
        ("lora", []),
        ("lwf", []),
        ("olora", []),
        ("routed_lora", []),
        ("moelora", []),
        # Nothing but the adapters is ever trained: the checkpoints hold the adapters alone.
        ("lora_per_task", ["--pretrain.max_epochs", "0"]),
        ("projector_expansion", []),
        ("single_task", []),
        ("joint", []),
    ],
)
def test_strategies_that_add_structure_resume_to_the_uninterrupted_matrix(
    tmp_path, monkeypatch, config, extra
):
    """Adapters, projectors and keys, and the starting weights are rebuilt from the checkpoint."""
    run = [*TINY_RUN, "--config", f"experiments/{config}.yaml", *extra]
    main(["fit", *run, "--output_dir", str(tmp_path / "whole")])
    saved = torch.load(tmp_path / "whole/checkpoints/stage_2/model.pt", weights_only=True)
    if extra:
        assert saved and all(".lora_" in name for name in saved)
    with monkeypatch.context() as patch:
        crash_in_training(patch, task_id=1)
        with pytest.raises(RuntimeError, match="injected crash"):
            main(["fit", *run, "--output_dir", str(tmp_path / "resumed")])
    main(["fit", *run, "--output_dir", str(tmp_path / "resumed")])
    whole, resumed = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("whole", "resumed"))
    assert resumed["matrix"] == whole["matrix"]
    assert resumed["strategy_reports"] == whole["strategy_reports"]
    assert run_files(tmp_path / "resumed", "predictions/**/*") == run_files(
        tmp_path / "whole", "predictions/**/*"
    )


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        (["--config", "BROKEN_YAML"], "broken.yaml is not valid YAML"),
        (["--trainer.max_epoch", "2"], "trainer.max_epoch"),
        (["--strategies", "[{class_path: strategies.nope.Nope}]"], "strategies.nope.Nope"),
        (["--data.batch_size", "eight"], "eight"),
        (["--stream.init_args.tasks", "[colour, size]"], "unknown synthetic task(s) ['size']"),
        (["--eval.matrix", "upper"], "upper"),
    ],
)
def test_bad_input_is_named_and_leaves_a_run_directorys_completed_stages_untouched(
    tmp_path, uninterrupted, capsys, bad, named
):
    out = tmp_path / "copy"
    shutil.copytree(uninterrupted, out)
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer:\n  max_epochs: [1, 2\n")
    kept = run_files(out, "**/*")
    message = fit_error(
        capsys, *RUN, "--output_dir", str(out), *[str(broken) if a == "BROKEN_YAML" else a for a in bad]
    )
    assert named in message and message.count("contmm: error:") == 1
    assert run_files(out, "**/*") == kept


def test_a_stage_interrupted_midway_goes_on_from_lightnings_last_epoch_checkpoint(tmp_path, monkeypatch):
    """With checkpointing on, a crash in epoch 3 of stage 2 costs only that epoch."""
    run = [*RUN, "--trainer.max_epochs", "3", "--trainer.enable_checkpointing", "true"]
    main(["fit", *run, "--output_dir", str(tmp_path / "whole")])
    training_step = ContinualModule.training_step
    steps = []

    def counting(self, batch, batch_idx):
        if self.task_id == 1:
            steps.append(self.current_epoch)
        return training_step(self, batch, batch_idx)

    out = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        crash_in_training(patch, task_id=1, epoch=2)
        with pytest.raises(RuntimeError, match="injected crash"):
            main(["fit", *run, "--output_dir", str(out)])
    assert (out / "checkpoints/stage_2_in_progress/last.ckpt").is_file()
    with monkeypatch.context() as patch:
        patch.setattr(ContinualModule, "training_step", counting)
        main(["fit", *run, "--output_dir", str(out)])
    assert set(steps) == {2}  # stage 2 went on at its third epoch, not from the first
    whole, resumed = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("whole", "resumed"))
    assert resumed["matrix"] == whole["matrix"]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["stage_3"]  # in-progress files gone


def test_ctrl_c_in_the_middle_of_a_stage_keeps_the_completed_stages_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"

    def run(**env):
        return run_fit(
            *TINY_RUN,
            "--output_dir",
            str(out),
            "--strategies",
            "[{class_path: tests.probes.InterruptInTask}]",
            **env,
        )

    interrupted = run(CONTMM_INTERRUPT_AT_TASK="1")
    assert interrupted.returncode != 0
    results = json.loads((out / "results.json").read_text())
    assert results["stages_completed"] == 1 and results["matrix"][2] == [None, None]
    kept = run_files(out, "predictions/**/*")
    assert sorted(str(p) for p in kept) == [
        f"predictions/stage_{s}/{t}.jsonl" for s in (0, 1) for t in ("colour", "shape")
    ]
    assert not list(out.rglob("*.tmp"))  # no half-written file
    assert not (out / ".contmm-lock").exists()  # released on Ctrl-C

    resumed = run()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["stages_completed"] == 2
    assert {k: v for k, v in run_files(out, "predictions/**/*").items() if k in kept} == kept


def whole_and_crashed(tmp_path, monkeypatch, run: list[str], crash) -> Path:
    """``run`` uninterrupted into ``tmp_path/whole``, and stopped by ``crash(patch)`` in
    ``tmp_path/resumed``, which is returned."""
    main(["fit", *run, "--output_dir", str(tmp_path / "whole")])
    out = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        crash(patch)
        with pytest.raises(RuntimeError, match="injected crash"):
            main(["fit", *run, "--output_dir", str(out)])
    return out


def test_a_kill_after_a_stages_last_epoch_resumes_with_its_end_of_task_step_run_once(tmp_path, monkeypatch):
    """In-stage checkpoints on: killed while row 2 is evaluated, after stage 2's last epoch.
    Replay's memory and EWC's Fisher must still take task 1, exactly once."""
    run = [*RUN, "--trainer.max_epochs", "2", "--trainer.enable_checkpointing", "true"]
    out = whole_and_crashed(tmp_path, monkeypatch, run, lambda patch: crash_in_evaluation(patch, task_id=1))
    main(["fit", *run, "--output_dir", str(out)])
    whole, resumed = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("whole", "resumed"))
    assert resumed["matrix"] == whole["matrix"]
    strategies = torch.load(out / "checkpoints/stage_3/strategies.pt", weights_only=True)
    assert strategies["0:Replay"]["tasks_seen"] == 3 and len(strategies["1:EWC"]["fishers"]) == 3
    assert run_files(out, "predictions/**/*") == run_files(tmp_path / "whole", "predictions/**/*")


def test_a_damaged_in_stage_checkpoint_is_set_aside_and_the_stage_starts_over(tmp_path, monkeypatch):
    run = [*RUN, "--trainer.max_epochs", "3", "--trainer.enable_checkpointing", "true"]
    out = whole_and_crashed(
        tmp_path, monkeypatch, run, lambda patch: crash_in_training(patch, task_id=1, epoch=2)
    )
    last = out / "checkpoints/stage_2_in_progress/last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # cut short, as by a kill while it was written
    with pytest.warns(UserWarning, match="is not a whole checkpoint: set aside as last.ckpt.damaged"):
        main(["fit", *run, "--output_dir", str(out)])
    whole, resumed = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("whole", "resumed"))
    assert resumed["matrix"] == whole["matrix"]  # stage 2 trained again from its start


def test_with_every_checkpoint_kept_a_damaged_newest_one_costs_one_stage_not_the_run(tmp_path, monkeypatch):
    run = [*RUN, "--checkpoint.keep", "all"]
    out = whole_and_crashed(tmp_path, monkeypatch, run, lambda patch: crash_in_training(patch, task_id=2))
    (out / "checkpoints/stage_2/model.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(
        UserWarning, match=r"Going on from .*stage_1 instead: the stages after it are trained again"
    ):
        main(["fit", *run, "--output_dir", str(out)])
    whole, resumed = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("whole", "resumed"))
    assert resumed["matrix"] == whole["matrix"]
