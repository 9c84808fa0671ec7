"""experiments/llava15_coin.yaml, the config a real LLaVA-1.5 + CoIN run starts from, run as it
is but for what this machine cannot have: the model is a tiny LLaVA checkpoint, the data a
small generated set in CoIN's layout, and the trainer one CPU instead of eight GPUs."""

import json

import pytest

from contmm.cli import main
from tests.checkpoints import save_checkpoint
from tests.llava_files import coin_files

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("in_repo")]


def test_the_llava15_coin_config_runs_on_a_tiny_llava_checkpoint(tmp_path):
    checkpoint = save_checkpoint("llava", tmp_path / "llava-tiny")
    out = tmp_path / "run"
    main(
        [
            "fit", "--config", "experiments/llava15_coin.yaml",
            "--model.pretrained", str(checkpoint),
            "--stream.init_args.tasks", json.dumps(coin_files(tmp_path)),
            "--stream.init_args.image_root", str(tmp_path / "cl_dataset"),
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
            "--data.num_workers", "0", "--data.batch_size", "4", "--eval.batch_size", "4",
            "--trainer.enable_progress_bar", "false", "--output_dir", str(out),
        ]
    )  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["tasks"] == ["scienceqa", "textvqa"] and results["stages_completed"] == 2
    assert results["strategies"] == "LoRAPerTask"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["stage_0", "stage_1", "stage_2"]
    config = results["config"]
    assert config["model"]["dtype"] == "bfloat16" and config["model"]["gradient_checkpointing"] is True
    assert config["trainer"]["precision"] == "bf16-mixed"
