"""Does a strategy train the same weights under fsdp2 as under ddp? Runs the tiny default
stream (two tasks, pre-training included) under both with 2 processes and prints, per stage
checkpoint, the largest difference of the model's weights and of the strategy's state.

Run: ``python experiments/sharding_check.py experiments/ewc.yaml [--out runs/sharding_check]
[--accelerator cpu]``: on the CPU each process gets one torch thread; on a GPU node pass
``--accelerator gpu`` (needs 2 GPUs).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

TINY = [
    "--stream.init_args.tasks", "[colour, shape]", "--stream.init_args.train_size", "32",
    "--stream.init_args.test_size", "9", "--stream.init_args.pretrain_size", "48",
    "--pretrain.max_epochs", "1", "--trainer.max_epochs", "2", "--data.batch_size", "8",
    "--eval.batch_size", "4", "--trainer.devices", "2", "--checkpoint.keep", "all",
    "--trainer.enable_progress_bar", "false", "--resume", "false",
]  # fmt: skip


def largest_difference(a: Path, b: Path) -> str:
    """The largest difference of the tensors in files a and b, and relative to the tensor's
    largest value (EWC's normalised Fisher runs into the thousands)."""
    x = torch.utils._pytree.tree_leaves(torch.load(a))
    y = torch.utils._pytree.tree_leaves(torch.load(b))
    if len(x) != len(y):
        raise SystemExit(f"{a} and {b} hold different structures ({len(x)} against {len(y)} leaves)")
    pairs = [(u.float(), v.float()) for u, v in zip(x, y) if torch.is_tensor(u) and u.numel()]
    diffs = [((u - v).abs().max().item(), u.abs().max().item()) for u, v in pairs]
    largest = max((d for d, _ in diffs), default=0.0)
    relative = max((d / m for d, m in diffs if m > 0), default=0.0)
    return f"{largest:.2e} ({relative:.1e} relative)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a strategy config added to experiments/seq_vqa.yaml")
    parser.add_argument("--out", default="runs/sharding_check")
    parser.add_argument("--accelerator", default="cpu")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.accelerator == "cpu" else dict(os.environ)
    out = Path(args.out)
    for strategy in ("ddp", "fsdp2"):
        command = [sys.executable, "-m", "contmm.cli", "fit", "--config", "experiments/seq_vqa.yaml"]
        command += ["--config", args.config, *TINY, "--trainer.accelerator", args.accelerator]
        command += ["--trainer.strategy", strategy, "--output_dir", str(out / strategy)]
        print(f"{strategy}: {' '.join(command[1:])}", flush=True)
        subprocess.run(command, env=env, check=True, capture_output=True)
    for stage in sorted(p.name for p in (out / "ddp" / "checkpoints").glob("stage_*")):
        a, b = out / "ddp" / "checkpoints" / stage, out / "fsdp2" / "checkpoints" / stage
        print(
            f"{stage}: weights {largest_difference(a / 'model.pt', b / 'model.pt')}, "
            f"strategy state {largest_difference(a / 'strategies.pt', b / 'strategies.pt')}"
        )


if __name__ == "__main__":
    main()
