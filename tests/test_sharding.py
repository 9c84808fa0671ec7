"""FSDP2 (``trainer.strategy: fsdp2``) on the CPU, 2 processes over gloo, against DDP.

With 2 processes DDP's gradient average and FSDP2's reduce-scatter add the same two numbers,
so the weights each trains must agree to float rounding: any weight that is not trained,
not gathered back, or trained twice shows up as a difference."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.checkpoints import save_checkpoint
from tests.helpers import REPO, TINY_RUN, run_fit
from tests.llava_files import coin_files

pytestmark = pytest.mark.slow

# Pre-training trains the encoder too (the default experiment), over 3 steps per process.
TWO_PROCESSES = [*TINY_RUN, "--stream.init_args.pretrain_size", "48", "--checkpoint.keep", "all"]
TWO_PROCESSES += ["--trainer.devices", "2", "--trainer.max_epochs", "2"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # two processes on this machine's two cores


def fit(out, strategy, *args, **env):
    return run_fit(
        *TWO_PROCESSES, *args, "--output_dir", str(out), "--trainer.strategy", strategy, **ONE_THREAD, **env
    )


def assert_same_stage(a, b, stage: int, atol: float) -> None:
    """Stage ``stage``'s checkpointed weights and strategy state agree between runs a and b."""
    for name in ("model.pt", "strategies.pt"):
        x = torch.utils._pytree.tree_leaves(torch.load(a / f"checkpoints/stage_{stage}/{name}"))
        y = torch.utils._pytree.tree_leaves(torch.load(b / f"checkpoints/stage_{stage}/{name}"))
        assert len(x) == len(y)
        for u, v in zip(x, y):
            if torch.is_tensor(u):
                # EWC's normalised Fisher is ~1 on average, up to thousands: relative too.
                torch.testing.assert_close(u, v, atol=atol, rtol=1e-5)
            else:
                assert u == v


def predictions(out) -> dict:
    return {p.relative_to(out): p.read_text() for p in sorted(out.glob("predictions/**/*.jsonl"))}


@pytest.mark.parametrize("config", ["olora", "projector_expansion"])
def test_fsdp2_trains_what_ddp_trains_with_the_parameters_a_strategy_adds(tmp_path, config):
    """Pre-training (encoder, projector, LLM), then a LoRA adapter (O-LoRA, its orthogonality
    penalty on the gathered LoRA matrices) or a projector added per stage: FSDP2's
    checkpoints and predictions are DDP's."""
    runs = {}
    for strategy in ("ddp", "fsdp2"):
        runs[strategy] = tmp_path / strategy
        done = fit(runs[strategy], strategy, "--config", f"experiments/{config}.yaml")
        assert done.returncode == 0, done.stderr[-3000:]
    for stage in range(3):
        assert_same_stage(runs["ddp"], runs["fsdp2"], stage, atol=1e-6)
    assert predictions(runs["ddp"]) == predictions(runs["fsdp2"])


def test_a_stage_killed_under_fsdp2_resumes_under_fsdp2_or_ddp_to_ddps_replay_ewc_run(tmp_path):
    """Replay + EWC, SIGKILLed in the second epoch of the last stage under FSDP2: resumed
    from Lightning's in-progress checkpoint (written whole by FSDP2) under FSDP2 and under
    DDP, both end with the uninterrupted DDP run's weights, Fisher and predictions; the
    FSDP2 one trains with EWC's penalty on shards."""
    strategies = (
        "[{class_path: strategies.replay.Replay, init_args: {memory_size: 8}},"
        " {class_path: strategies.ewc.EWC, init_args: {fisher_batches: 2}},"
        " {class_path: tests.probes.KillAt}]"
    )
    args = ["--strategies", strategies, "--trainer.enable_checkpointing", "true"]
    whole, killed = tmp_path / "ddp", tmp_path / "killed"
    done = fit(whole, "ddp", *args)
    assert done.returncode == 0, done.stderr[-3000:]

    command = [sys.executable, "-m", "contmm.cli", "fit", *TWO_PROCESSES, *args]
    command += ["--output_dir", str(killed), "--trainer.strategy", "fsdp2"]
    env = {**os.environ, **ONE_THREAD, "CONTMM_KILL_AT": "mid_epoch"}
    # Its own process group, which KillAt kills (both ranks).
    dead = subprocess.run(
        command, cwd=REPO, env=env, start_new_session=True, capture_output=True, check=False
    )
    assert dead.returncode == -9, dead.stderr[-2000:]
    assert (killed / "checkpoints/stage_2_in_progress/last.ckpt").is_file()
    assert (killed / ".contmm-lock").is_file()  # left by the kill; the kernel's lock went with it

    for strategy in ("fsdp2", "ddp"):
        resumed = tmp_path / f"resumed_under_{strategy}"
        shutil.copytree(killed, resumed)
        done = fit(resumed, strategy, *args)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "stage 2 goes on from" in done.stdout
        assert_same_stage(whole, resumed, 2, atol=1e-6)
        assert predictions(whole) == predictions(resumed)


def test_the_llava15_coin_config_trains_ddps_adapters_under_fsdp2(tmp_path):
    """A whole LLaVA checkpoint in bfloat16 with float32 LoRA adapters, activation
    checkpointing and bf16-mixed precision (experiments/llava15_coin.yaml, on a tiny
    checkpoint and CoIN-shaped files): FSDP2 gives DDP's adapters and predictions."""
    checkpoint = save_checkpoint("llava", tmp_path / "llava-tiny")
    tasks = json.dumps(coin_files(tmp_path))
    runs = {}
    for strategy in ("ddp", "fsdp2"):
        runs[strategy] = tmp_path / strategy
        done = run_fit(
            "--config", "experiments/llava15_coin.yaml", "--model.pretrained", str(checkpoint),
            "--stream.init_args.tasks", tasks, "--stream.init_args.image_root", str(tmp_path / "cl_dataset"),
            "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", strategy,
            "--data.num_workers", "0", "--data.batch_size", "4", "--eval.batch_size", "4",
            "--checkpoint.keep", "all", "--trainer.enable_progress_bar", "false",
            "--output_dir", str(runs[strategy]), **ONE_THREAD,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    for stage in (1, 2):
        assert_same_stage(runs["ddp"], runs["fsdp2"], stage, atol=1e-6)
    assert predictions(runs["ddp"]) == predictions(runs["fsdp2"])
