"""`trainer.logger`: the user's loggers beside contmm's own, one run over the whole stream.

Lightning's CSVLogger stands in for W&B and MLflow: it goes through the same code, and its
file can be read back.
"""

import csv
import importlib.util
import json

import pytest

from contmm.cli import main
from tests.helpers import TINY_RUN, crash_in_training, fit_error, run_fit

pytestmark = pytest.mark.usefixtures("in_repo")


def user_csv_logger(save_dir) -> list[str]:
    return [
        "--trainer.logger",
        f"{{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {{save_dir: {save_dir}, name: mine}}}}",
    ]


def rows(metrics_csv) -> list[dict]:
    with open(metrics_csv, newline="") as file:
        return list(csv.DictReader(file))


def losses(metrics_csv) -> list[tuple[int, float]]:
    """(step, train/loss) of every row that logged the training loss."""
    return [(int(r["step"]), float(r["train/loss"])) for r in rows(metrics_csv) if r["train/loss"]]


def scores(metrics_csv) -> dict[int, dict[str, float]]:
    """Step -> the score/ and metric/ values logged at it."""
    logged = {}
    for row in rows(metrics_csv):
        values = {k: float(v) for k, v in row.items() if k.startswith(("score/", "metric/")) and v}
        if values:
            logged[int(row["step"])] = values
    return logged


@pytest.mark.slow
def test_a_user_logger_holds_pretraining_every_stage_and_every_rows_scores_in_one_run(tmp_path):
    out, user = tmp_path / "run", tmp_path / "user"
    main(["fit", *TINY_RUN, "--output_dir", str(out), *user_csv_logger(user)])

    assert [p.name for p in (user / "mine").iterdir()] == ["version_0"]  # one run, not one per stage
    logged = user / "mine/version_0/metrics.csv"
    # contmm's own logs have each stage's loss at the stage's steps, from 0; the user's has
    # them all, in stage order, at steps that go on from one stage to the next.
    per_stage = [
        losses(out / f"logs/csv/{stage}/metrics.csv") for stage in ("pretrain", "stage_1", "stage_2")
    ]
    assert all(per_stage) and all(stage[0][0] == 0 for stage in per_stage)
    assert [loss for _, loss in losses(logged)] == [loss for stage in per_stage for _, loss in stage]
    assert [step for step, _ in losses(logged)] == list(range(sum(map(len, per_stage))))

    results = json.loads((out / "results.json").read_text())
    logged_scores = scores(logged)
    assert sorted(logged_scores) == [0, 1, 2]  # step = stage
    for stage, row in enumerate(results["matrix"]):
        assert [logged_scores[stage][f"score/{task}"] for task in ("colour", "shape")] == pytest.approx(row)
    assert logged_scores[2]["metric/acc"] == pytest.approx(results["metrics"]["acc"])


@pytest.mark.slow
def test_a_resumed_run_logs_every_row_again_and_its_steps_go_on_after_the_completed_stages(
    tmp_path, monkeypatch
):
    out, user = tmp_path / "run", tmp_path / "user"
    run = ["fit", *TINY_RUN, "--output_dir", str(out), *user_csv_logger(user)]
    with monkeypatch.context() as patch:
        crash_in_training(patch, task_id=1)
        with pytest.raises(RuntimeError, match="injected crash"):
            main(run)
    main(run)

    first, resumed = (user / f"mine/version_{v}/metrics.csv" for v in (0, 1))
    # The resumed process is a new run of the user's logger (no version was named): it gets
    # the rows restored from the checkpoint and stage 2's losses, numbered as if the run
    # had not stopped.
    assert sorted(scores(first)) == [0, 1] and sorted(scores(resumed)) == [0, 1, 2]
    steps = [step for step, _ in losses(resumed)]
    assert steps[0] == losses(first)[-1][0] + 1
    assert steps == list(range(steps[0], steps[0] + len(losses(out / "logs/csv/stage_2/metrics.csv"))))


def test_a_logger_must_be_a_logger_class(capsys):
    """Lightning's ``logger: true`` would add its TensorBoard logger: contmm's are always there."""
    message = fit_error(capsys, "--config", "experiments/seq_vqa.yaml", "--trainer.logger", "true")
    assert "trainer.logger" in message


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed")
def test_an_offline_wandb_logger_makes_one_local_run_for_the_whole_stream(tmp_path):
    user = tmp_path / "wandb_runs"
    done = run_fit(
        *TINY_RUN,
        "--output_dir",
        str(tmp_path / "run"),
        "--trainer.logger",
        f"{{class_path: lightning.pytorch.loggers.WandbLogger, init_args: {{offline: true, save_dir: {user}}}}}",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        # W&B keeps its settings and caches in these: nothing is written outside tmp_path.
        WANDB_DIR=str(user),
        WANDB_CONFIG_DIR=str(tmp_path / "config"),
        WANDB_CACHE_DIR=str(tmp_path / "cache"),
        WANDB_DATA_DIR=str(tmp_path / "data"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((user / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    # The run's records are protobuf messages in W&B's own binary log; the metric names
    # appear in it as plain bytes.
    (records,) = runs[0].glob("run-*.wandb")
    data = records.read_bytes()
    assert all(name in data for name in (b"train/loss", b"score/colour", b"score/shape", b"metric/acc"))
