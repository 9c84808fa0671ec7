"""Routed LoRA (``strategies/routed_lora.py``): an adapter per task, chosen per sample by keys."""

import json

import pytest
import torch

from contmm.model.collate import InstructionCollator
from strategies.routed_lora import RoutedLoRA
from strategies.routing import instruction_features, key_similarity
from streams.synthetic import SyntheticShapes
from tests.helpers import TINY_RUN, run_fit, start, train_loader, train_steps


@pytest.fixture
def routed(model, stream):
    model.cfg.backbone.freeze = model.cfg.input_projector.freeze = True
    strategy = RoutedLoRA(r=4, alpha=8)
    strategy.setup(model, stream)
    for task_id, task in enumerate(stream.tasks):
        start(model, strategy, task_id)
        loader = train_loader(model, task)
        train_steps(model, next(iter(loader)), steps=10)
        strategy.after_task(model, task_id, loader)
    model.eval()  # as evaluation runs (peft routes rows in eval mode only)
    return strategy


def test_each_row_of_a_mixed_batch_is_decoded_with_the_adapter_of_its_nearest_keys(model, stream, routed):
    samples = [task.test[i] for task in stream.tasks for i in range(4)]
    batch = InstructionCollator(model, train=False)(samples)
    with torch.no_grad():
        with routed.eval_context(model, 0, batch):  # the task id (0) is not used to route
            names = list(batch["adapter_names"])
            tokens = model.generate(batch, 4)
        assert "adapter_names" not in batch
        expected_route = key_similarity(
            routed.image_keys, routed.instruction_keys, instruction_features(model, batch)
        ).argmax(1)
        assert names == [f"task_{t}" for t in expected_route.tolist()]
        assert set(names) == {"task_0", "task_1"}  # both adapters serve part of this batch
        # Each row as its own adapter alone decodes it.
        lm = model.backbone.lm
        for task in (0, 1):
            lm.set_adapter(f"task_{task}")
            alone = model.generate(batch, 4)
            rows = [i for i, name in enumerate(names) if name == f"task_{task}"]
            width = alone.shape[1]  # a batch stops once all its rows wrote their end token
            assert torch.equal(tokens[rows, :width], alone[rows])
            assert (tokens[rows, width:] == model.tokenizer.pad_token_id).all()
    assert not torch.equal(tokens[:4], tokens[4:8])


def test_routing_accuracy_is_reported_for_the_tuned_tasks(model, stream, routed):
    collate = InstructionCollator(model, train=False)
    right = {}
    with torch.no_grad():
        for task_id, task in enumerate(stream.tasks):
            batch = collate([task.test[i] for i in range(8)])
            with routed.eval_context(model, task_id, batch):
                model.generate(batch, 2)
            similarity = key_similarity(
                routed.image_keys, routed.instruction_keys, instruction_features(model, batch)
            )
            right[task.name] = float((similarity.argmax(1) == task_id).float().mean())
    report = routed.evaluation_report(model)
    assert report["routing_accuracy"] == pytest.approx(right)
    assert report["mean_routing_accuracy"] == pytest.approx(sum(right.values()) / 2)
    assert min(right.values()) > 0.5  # the keys tell the two tasks' instructions apart


def test_a_stream_with_generation_tasks_is_refused(model):
    drawing = SyntheticShapes(tasks=["colour", "draw_colour"], train_size=4, test_size=2, pretrain_size=2)
    with pytest.raises(ValueError, match=r"generation task\(s\) \['draw_colour'\]"):
        RoutedLoRA().setup(model, drawing)


@pytest.mark.slow
def test_routed_lora_runs_under_two_process_ddp_and_reports_routing(tmp_path):
    out = tmp_path / "run"
    done = run_fit(
        *TINY_RUN, "--config", "experiments/routed_lora.yaml", "--output_dir", str(out),
        "--trainer.devices", "2", "--trainer.strategy", "ddp",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["env"]["world_size"] == 2
    report = results["strategy_reports"][-1]["RoutedLoRA"]
    assert set(report["routing_accuracy"]) == {"colour", "shape"}
