"""Kill a run with SIGKILL at a spread of moments, run the same command again (no file
removed): the resumed run's results and predictions are the uninterrupted run's, for every strategy whose state a
resume must carry (in-stage checkpoints on)."""

import json
import os
import subprocess
import sys

import pytest

from contmm.cli import main
from tests.helpers import REPO, TINY_RUN, run_files

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("in_repo")]

KILL = "{class_path: tests.probes.KillAt}"
STRATEGIES = {
    "naive": f"[{KILL}]",
    "replay_ewc": (
        "[{class_path: strategies.replay.Replay, init_args: {memory_size: 8}},"
        f" {{class_path: strategies.ewc.EWC, init_args: {{ewc_lambda: 100.0, fisher_batches: 2}}}}, {KILL}]"
    ),
    "projector_expansion": f"[{{class_path: strategies.projector_expansion.ProjectorExpansion}}, {KILL}]",
}
# Projector expansion trains a projector per task on a frozen encoder and LLM.
FROZEN = ["--model.encoder.freeze", "true", "--model.backbone.freeze", "true"]
CASES = [
    *(("naive", moment) for moment in ("pretrain", "row0", "mid_epoch", "checkpoint_write")),
    *(
        ("replay_ewc", moment)
        for moment in ("pretrain", "row0", "mid_epoch", "after_last_epoch", "evaluation", "checkpoint_write")
    ),
    *(("projector_expansion", moment) for moment in ("mid_epoch", "after_last_epoch", "evaluation")),
]


def run_args(strategy: str, out) -> list[str]:
    extra = FROZEN if strategy == "projector_expansion" else []
    return [
        *TINY_RUN, "--stream.init_args.tasks", "[colour, shape, count]", "--trainer.max_epochs", "2",
        "--trainer.enable_checkpointing", "true", "--strategies", STRATEGIES[strategy], *extra,
        "--output_dir", str(out),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    runs = {}
    for strategy in STRATEGIES:
        runs[strategy] = tmp_path_factory.mktemp(strategy)
        main(["fit", *run_args(strategy, runs[strategy])])
    return runs


@pytest.mark.parametrize(("strategy", "moment"), CASES)
def test_a_run_killed_at_any_moment_resumes_to_the_uninterrupted_results(
    tmp_path, capsys, uninterrupted, strategy, moment
):
    out = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-m", "contmm.cli", "fit", *run_args(strategy, out)],
        cwd=REPO,
        env={**os.environ, "CONTMM_KILL_AT": moment},
        start_new_session=True,  # its own process group, which it kills
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    # The kill leaves the lock file behind, but not the kernel's lock: the same command, with
    # no file removed, goes on (as a scheduler's requeue would run it).
    assert (out / ".contmm-lock").exists()
    main(["fit", *run_args(strategy, out)])
    assert "ended without releasing" in capsys.readouterr().out
    whole = uninterrupted[strategy]
    resumed, expected = (json.loads((d / "results.json").read_text()) for d in (out, whole))
    assert resumed["matrix"] == expected["matrix"]
    assert resumed["strategy_reports"] == expected["strategy_reports"]
    assert run_files(out, "predictions/**/*.jsonl") == run_files(whole, "predictions/**/*.jsonl")
    assert run_files(out, "checkpoints/stage_3/*.pt") == run_files(whole, "checkpoints/stage_3/*.pt")


# A batch job's environment as SLURM sets it (one task), for Lightning's SLURMEnvironment too.
SLURM = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "seq_vqa",
    "SLURM_NTASKS": "1",
    "SLURM_NODELIST": "localhost",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}


@pytest.mark.parametrize(("strategy", "moment"), [("replay_ewc", "mid_epoch"), ("naive", "evaluation")])
def test_a_slurm_job_warned_before_its_time_limit_requeues_itself_and_the_requeued_job_resumes(
    tmp_path, uninterrupted, strategy, moment
):
    requeued = tmp_path / "requeued"
    scontrol = tmp_path / "bin" / "scontrol"  # a stand-in that records what it is asked
    scontrol.parent.mkdir()
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {requeued}\n')
    scontrol.chmod(0o755)
    env = {**os.environ, **SLURM, "PATH": f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}"}
    out = tmp_path / "run"
    command = [sys.executable, "-m", "contmm.cli", "fit", *run_args(strategy, out)]
    warning = {"CONTMM_KILL_AT": moment, "CONTMM_KILL_SIGNAL": "SIGUSR1"}  # --signal=USR1@90
    warned = subprocess.run(
        command, cwd=REPO, env=env | warning, capture_output=True, text=True, timeout=300, check=False
    )
    assert warned.returncode == 0, warned.stderr[-2000:]
    assert "job 4242 requeued" in warned.stderr
    assert requeued.read_text() == "requeue 4242\n"
    assert json.loads((out / "results.json").read_text())["stages_completed"] == 1
    # The requeued job: the same command in the same environment, warned no more.
    again = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert requeued.read_text() == "requeue 4242\n"  # once
    assert not list(out.rglob("hpc_ckpt_*"))  # Lightning's mid-epoch save stayed out of it
    whole = uninterrupted[strategy]
    resumed, expected = (json.loads((d / "results.json").read_text()) for d in (out, whole))
    assert resumed["matrix"] == expected["matrix"]
    assert run_files(out, "predictions/**/*.jsonl") == run_files(whole, "predictions/**/*.jsonl")
    assert run_files(out, "checkpoints/stage_3/*.pt") == run_files(whole, "checkpoints/stage_3/*.pt")
