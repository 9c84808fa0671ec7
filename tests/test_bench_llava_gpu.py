"""bench/llava_gpu.py --tiny: the 7B benchmark's code path, on the CPU with tiny shapes."""

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO


@pytest.mark.slow
def test_the_llava_gpu_benchmark_runs_tiny_on_the_cpu_and_decodes_batched_as_one_at_a_time(tmp_path):
    out = tmp_path / "figures.json"
    command = [sys.executable, "bench/llava_gpu.py", "--tiny", "--steps", "4", "--warmup", "1",
               "--rounds", "2", "--eval-samples", "6", "--eval-batch-size", "3", "--output", str(out)]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and figures["shape"] == "tiny"
    assert figures["train_contmm_samples_per_s"] > 0 and figures["train_plain_samples_per_s"] > 0
    assert figures["train_ratio"] > 0 and figures["eval_ratio"] > 0
    assert figures["train_contmm_mfu"] is None  # no GPU: no peak to divide by
    assert figures["eval_predictions_differing"] == 0  # batched left-padded decoding = one at a time
    assert "train ratio contmm / plain loop" in done.stdout and "target >= 10x" in done.stdout
