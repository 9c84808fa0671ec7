"""`contmm fit`: a whole stream end to end, the run directory, and clear errors."""

import importlib.util
import json

import pytest

from contmm.cli import main
from contmm.training import runner
from tests.helpers import TINY_RUN, fit_error, run_fit

pytestmark = pytest.mark.usefixtures("in_repo")


@pytest.mark.slow
def test_fit_runs_a_stream_and_writes_the_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    main(["fit", *TINY_RUN, "--output_dir", str(out), "--seed", "1"])

    results = json.loads((out / "results.json").read_text())
    assert results["tasks"] == ["colour", "shape"]
    assert results["stages_completed"] == 2
    matrix = results["matrix"]
    assert len(matrix) == 3 and all(len(row) == 2 for row in matrix)
    assert all(0.0 <= v <= 1.0 for row in matrix for v in row)
    assert set(results["metrics"]) == {"acc", "mft", "maa", "bwt", "forgetting", "fwt"}
    assert results["config"]["seed"] == 1 and results["config"]["trainer"]["max_epochs"] == 1
    assert results["env"]["world_size"] == 1 and results["env"]["global_batch_size"] == 8
    assert results["strategies"] == "Naive"

    for stage in range(3):
        for task in ("colour", "shape"):
            records = [json.loads(line) for line in (out / f"predictions/stage_{stage}/{task}.jsonl").open()]
            assert len(records) == 9
            # Each task's score in the matrix is the mean of its saved per-sample scores.
            assert matrix[stage][["colour", "shape"].index(task)] == pytest.approx(
                sum(r["score"] for r in records) / 9
            )
    for stage in ("pretrain", "stage_1", "stage_2"):  # the stages that train log their loss
        assert "train/loss" in (out / "logs/csv" / stage / "metrics.csv").read_text()
    assert list((out / "logs/tensorboard/stage_1").glob("events.out.tfevents.*"))
    assert (out / "tokenizer/tokenizer.json").exists()
    assert "seed: 1" in (out / "config.yaml").read_text()
    # The summary table names the tasks and the metrics.
    printed = capsys.readouterr().out
    assert "1 (colour)" in printed and "bwt=" in printed
    # Before any training: what the model and its optimizer will take.
    assert printed.index("memory estimate, pre-training: 450 K parameters") < printed.index("1 (colour)")
    assert "memory estimate, each stage: 450 K parameters (1.7 MiB), 334 K trainable" in printed


def test_a_typo_in_a_config_key_is_named(capsys, tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("trainer:\n  max_epoch: 3\n")
    message = fit_error(capsys, "--config", "experiments/seq_vqa.yaml", "--config", str(config))
    assert "trainer.max_epoch" in message


def test_an_abbreviated_option_is_not_taken_for_the_full_one(capsys):
    message = fit_error(capsys, "--config", "experiments/seq_vqa.yaml", "--trainer.max_epoch", "3")
    assert "--trainer.max_epoch" in message


def test_an_unknown_class_path_is_named(capsys):
    message = fit_error(
        capsys, "--config", "experiments/seq_vqa.yaml", "--strategies", "[{class_path: strategies.nope.Nope}]"
    )
    assert "strategies.nope.Nope" in message


def test_a_value_of_the_wrong_type_is_named(capsys):
    message = fit_error(capsys, "--config", "experiments/seq_vqa.yaml", "--seed", "abc")
    assert "seed" in message and "abc" in message


def test_an_error_inside_the_run_is_one_message_not_a_traceback(capsys, tmp_path):
    message = fit_error(
        capsys, *TINY_RUN, "--output_dir", str(tmp_path), "--stream.init_args.tasks", "[colour, size]"
    )
    # The stream's own message, not the list of types jsonargparse tried to build.
    assert message.startswith("contmm: error: unknown synthetic task(s) ['size']")
    assert "Subtypes" not in message
    assert not (tmp_path / "results.json").exists()


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="DeepSpeed is installed here")
@pytest.mark.parametrize("strategy", ["deepspeed", "deepspeed_stage_2", "deepspeed_stage_2_offload"])
def test_a_deepspeed_strategy_without_deepspeed_stops_before_the_model_is_built(
    capsys, tmp_path, monkeypatch, strategy
):
    def build(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(runner, "build_model", build)
    message = fit_error(capsys, *TINY_RUN, "--output_dir", str(tmp_path), "--trainer.strategy", strategy)
    first_line = message.splitlines()[0]
    assert first_line.startswith(f"contmm: error: trainer.strategy {strategy!r} needs DeepSpeed")
    assert '`pip install -e ".[deepspeed]"`' in first_line and "CUDA GPU" in first_line
    assert not (tmp_path / "results.json").exists()


def never_build(monkeypatch) -> None:
    def build(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(runner, "build_model", build)


def test_deepspeed_on_the_cpu_stops_before_the_model_is_built(capsys, tmp_path, monkeypatch):
    never_build(monkeypatch)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())  # as if DeepSpeed were there
    message = fit_error(
        capsys, *TINY_RUN, "--output_dir", str(tmp_path), "--trainer.strategy", "deepspeed_stage_2"
    )
    assert message.splitlines()[0] == (
        "contmm: error: trainer.strategy 'deepspeed_stage_2' shards the model over CUDA GPUs (Lightning "
        "runs DeepSpeed on GPUs only), but trainer.accelerator is 'cpu': use strategy fsdp2 or ddp here"
    )


@pytest.mark.parametrize("strategy", ["deepspeed_stage_3", "deepspeed_stage_3_offload"])
def test_deepspeed_stage_3_is_refused_with_fsdp2_named(capsys, tmp_path, monkeypatch, strategy):
    never_build(monkeypatch)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())  # as if DeepSpeed were there
    message = fit_error(capsys, *TINY_RUN, "--output_dir", str(tmp_path), "--trainer.strategy", strategy)
    first_line = message.splitlines()[0]
    assert first_line.startswith(f"contmm: error: trainer.strategy {strategy!r} partitions the weights")
    assert "use trainer.strategy fsdp2" in first_line


@pytest.mark.parametrize("strategy", ["fsdp", "fsdp_cpu_offload"])
def test_lightnings_fsdp1_is_refused_with_fsdp2_named(capsys, tmp_path, monkeypatch, strategy):
    never_build(monkeypatch)
    message = fit_error(capsys, *TINY_RUN, "--output_dir", str(tmp_path), "--trainer.strategy", strategy)
    first_line = message.splitlines()[0]
    assert first_line.startswith(f"contmm: error: trainer.strategy {strategy!r} is Lightning's FSDP1")
    assert "use trainer.strategy fsdp2" in first_line


def test_lwf_is_refused_under_fsdp2(capsys, tmp_path, monkeypatch):
    never_build(monkeypatch)
    args = ["--config", "experiments/lwf.yaml", "--output_dir", str(tmp_path), "--trainer.strategy", "fsdp2"]
    message = fit_error(capsys, *TINY_RUN, *args)
    assert message.splitlines()[0] == (
        "contmm: error: strategies ['LwF'] cannot run under trainer.strategy 'fsdp2': their penalty "
        "reads whole weights, which are sharded there; use trainer.strategy ddp"
    )


def test_a_quantised_model_is_refused_under_fsdp2(capsys, tmp_path, monkeypatch):
    never_build(monkeypatch)
    args = ["--model.quantization", "4bit", "--output_dir", str(tmp_path), "--trainer.strategy", "fsdp2"]
    message = fit_error(capsys, *TINY_RUN, *args)
    assert message.splitlines()[0] == (
        "contmm: error: model.quantization '4bit' and trainer.strategy 'fsdp2': quantised weights "
        "cannot be sharded; use ddp"
    )


def test_malformed_yaml_is_named_with_its_file(capsys, tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("trainer:\n  max_epochs: [1, 2\n")
    message = fit_error(capsys, "--config", "experiments/seq_vqa.yaml", "--config", str(config))
    assert "broken.yaml" in message


def test_print_config_shows_the_resolved_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "experiments/seq_vqa.yaml", "--seed", "7", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "seed: 7" in printed and "class_path: streams.synthetic.SyntheticShapes" in printed


@pytest.mark.slow
def test_two_process_ddp_scores_every_test_sample_exactly_once_and_logs_on_rank_0_only(tmp_path):
    """DDP on CPU (gloo): both ranks run the loop, rank 0 writes and logs, shards do not overlap."""
    out, probes = tmp_path / "ddp", tmp_path / "probes"
    probes.mkdir()
    done = run_fit(
        *TINY_RUN, "--output_dir", str(out), "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.logger", "{class_path: tests.probes.RankBlindLogger}", CONTMM_PROBE_DIR=str(probes),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # A user's logger that does not check the rank itself is still used on rank 0 alone.
    assert [p.name for p in probes.iterdir()] == ["logger_rank0.jsonl"]
    logged = [json.loads(line) for line in (probes / "logger_rank0.jsonl").open()]
    loss_steps = [entry["step"] for entry in logged if "train/loss" in entry["metrics"]]
    assert loss_steps == list(range(len(loss_steps))) and loss_steps
    assert [entry["step"] for entry in logged if "score/colour" in entry["metrics"]] == [0, 1, 2]

    results = json.loads((out / "results.json").read_text())
    assert results["env"]["world_size"] == 2 and results["env"]["global_batch_size"] == 16
    assert results["stages_completed"] == 2
    for stage in range(3):
        for task in ("colour", "shape"):
            ids = [
                json.loads(line)["id"] for line in (out / f"predictions/stage_{stage}/{task}.jsonl").open()
            ]
            # 9 test samples over 2 ranks: no rank pads its shard with a duplicate.
            assert sorted(ids) == sorted(f"{task}-test-{i}" for i in range(9))
    leftovers = [p for p in out.rglob("*.tmp")]
    assert not leftovers
    # Rank 0 alone took the lock (rank 1, the same run, was not refused) and released it.
    assert (out / ".contmm-run").is_file() and not (out / ".contmm-lock").exists()


@pytest.mark.slow
def test_replay_and_ewc_hold_the_same_state_on_both_ddp_ranks(tmp_path):
    """Replay memory and the all-reduced Fisher are identical on rank 0 and rank 1."""
    probes = tmp_path / "probes"
    probes.mkdir()
    strategies = (
        "[{class_path: tests.probes.ReplayProbe, init_args: {memory_size: 10}},"
        " {class_path: tests.probes.EWCProbe, init_args: {fisher_batches: 2}}]"
    )
    done = run_fit(
        *TINY_RUN, "--output_dir", str(tmp_path / "run"), "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--strategies", strategies, CONTMM_PROBE_DIR=str(probes),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for kind in ("replay", "ewc"):
        for task_id in (0, 1):
            rank0, rank1 = (
                json.loads((probes / f"{kind}_task{task_id}_rank{r}.json").read_text()) for r in (0, 1)
            )
            assert rank0 == rank1 and rank0, (kind, task_id)
    memory = json.loads((probes / "replay_task1_rank0.json").read_text())
    assert sorted({sample_id.split("-")[0] for sample_id in memory}) == ["colour", "shape"]
