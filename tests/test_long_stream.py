"""A 20-stage stream (the default's four tasks in five rounds) runs to its end, and each
stage's peak memory in results.json shows what a strategy keeps: naive nothing, EWC a Fisher
and an anchor per task, LoRA-per-task an adapter per task."""

import json

import pytest
import torch

from tests.helpers import run_fit

pytestmark = pytest.mark.slow

LONG = [
    "--config", "experiments/seq_vqa.yaml", "--config", "experiments/long_stream.yaml",
    "--stream.init_args.train_size", "32", "--stream.init_args.test_size", "5",
    "--stream.init_args.pretrain_size", "32", "--pretrain.max_epochs", "1", "--trainer.max_epochs", "1",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
]  # fmt: skip
STRATEGIES = {
    "naive": [],
    "ewc": ["--config", "experiments/ewc.yaml", "--strategies.init_args.fisher_batches", "2"],
    # Rank 128 of the LLM's 128: 0.5 M weights per task, an adapter large enough to see.
    "lora_per_task": ["--config", "experiments/lora_per_task.yaml", "--strategies.init_args.r", "128"],
}
MIB = 1024 * 1024


def tensor_bytes(state) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(tensor_bytes(v) for v in state)
    return 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each strategy's long run, in a process of its own (its peaks are the run's alone)."""
    done = {}
    for strategy, extra in STRATEGIES.items():
        out = tmp_path_factory.mktemp(strategy)
        # The long stream's config last but for the sizes: a strategy's config names its own output_dir.
        fit = run_fit(*LONG[:2], *extra, *LONG[2:], "--output_dir", str(out))
        assert fit.returncode == 0, fit.stderr[-3000:]
        done[strategy] = out
    return done


def peaks(out) -> list[float]:
    return json.loads((out / "results.json").read_text())["peak_memory_mib"]["rss"]


def test_a_20_task_stream_runs_to_its_end_with_every_row_scored(runs):
    for out in runs.values():
        results = json.loads((out / "results.json").read_text())
        assert results["stages_completed"] == 20 and len(results["tasks"]) == 20
        assert results["tasks"][4] == "colour_2" and all(v is not None for v in results["matrix"][20])


def test_naive_keeps_nothing_per_task_so_its_peak_does_not_grow(runs):
    rss = peaks(runs["naive"])
    assert all(v is not None for v in rss)
    assert abs(rss[20] - rss[2]) <= 0.1 * rss[2]


@pytest.mark.parametrize("strategy", ["ewc", "lora_per_task"])
def test_a_strategy_that_keeps_state_per_task_grows_by_that_state(runs, strategy):
    out = runs[strategy]
    kept = tensor_bytes(torch.load(out / "checkpoints/stage_20/strategies.pt", weights_only=True))
    per_task = kept / 20 / MIB  # EWC: a Fisher and an anchor; LoRA-per-task: an adapter
    grown, naive_grown = peaks(out)[20] - peaks(out)[2], peaks(runs["naive"])[20] - peaks(runs["naive"])[2]
    # The 18 tasks' state is resident; what else grows (EWC's penalty works on every task's
    # pair at once) stays within twice that.
    assert 18 * per_task <= grown <= 3 * 18 * per_task + max(naive_grown, 0)
