"""`contmm fit` on the synthetic image -> sound -> clip stream (experiments/seq_av.yaml, shrunk):
a modality's components are first trained at the stage that first carries it and left as
they were in stages without it; replay with EWC runs under two-process DDP on the mixed stream
(batches with and without a replayed medium), and so do a projector per task and modality
with an adapter per task, both routed by the instruction."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import run_fit

TINY_AV_RUN = [
    "--config", "experiments/seq_av.yaml",
    "--stream.init_args.tasks", "[colour, pitch, appear]",
    "--stream.init_args.train_size", "16",
    "--stream.init_args.test_size", "4",
    "--stream.init_args.pretrain_size", "8",
    "--pretrain.max_epochs", "1",
    "--trainer.max_epochs", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--data.batch_size", "4",
    "--eval.batch_size", "4",
]  # fmt: skip


def weights(run, stage: int, component: str) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / f"stage_{stage}" / "model.pt")
    return {k: v for k, v in state.items() if k.startswith(f"{component}.")}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_each_medium_s_components_are_first_trained_at_its_first_stage(tmp_path):
    out = tmp_path / "run"
    done = run_fit(*TINY_AV_RUN, "--output_dir", str(out), "--checkpoint.keep", "all")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["task_media"] == {"colour": ["image"], "pitch": ["audio"], "appear": ["video"]}
    assert [len(row) for row in results["matrix"]] == [3] * 4
    assert "stage 1: video_projector, audio_encoder, audio_projector not trained" in done.stdout
    for component, first_stage in (("audio_projector", 2), ("audio_encoder", 2), ("video_projector", 3)):
        before = [weights(out, stage, component) for stage in range(first_stage)]
        assert all(same(before[0], w) for w in before[1:]), f"{component} changed before stage {first_stage}"
        assert not same(before[-1], weights(out, first_stage, component)), f"{component} not trained"
    # The image's projector is left as it was by the stages without images.
    assert same(weights(out, 1, "input_projector"), weights(out, 3, "input_projector"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategies",
    [
        (
            '[{"class_path": "strategies.replay.Replay", "init_args": {"memory_size": 8}}, '
            '{"class_path": "strategies.ewc.EWC"}]'
        ),
        (
            '[{"class_path": "strategies.projector_expansion.ProjectorExpansion", "init_args": {"image_weight": 0}}, '
            '{"class_path": "strategies.routed_lora.RoutedLoRA", "init_args": {"r": 4}}]'
        ),
    ],
    ids=["replay+ewc", "projector_expansion+routed_lora"],
)
def test_strategies_run_on_the_mixed_stream_under_two_process_ddp(tmp_path, strategies):
    out = tmp_path / "run"
    lora = ["--model.backbone.freeze", "true"] if "lora" in strategies else []
    done = run_fit(
        *TINY_AV_RUN, *lora, "--strategies", strategies, "--output_dir", str(out),
        "--trainer.devices", "2", "--trainer.strategy", "ddp",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["env"]["world_size"] == 2 and results["stages_completed"] == 3
    for report in results["strategy_reports"][-1].values():  # every medium's task was routed
        assert set(report["routing_accuracy"]) == {"colour", "pitch", "appear"}
