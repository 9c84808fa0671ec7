"""O-LoRA (``strategies/olora.py``): an adapter per task, orthogonal to the earlier ones, all active."""

import json

import pytest
import torch

from strategies.olora import OLoRA, lora_layers
from tests.helpers import TINY_RUN, run_fit, start, train_loader, train_steps


@pytest.fixture
def olora(model, stream):
    model.cfg.backbone.freeze = model.cfg.input_projector.freeze = True
    strategy = OLoRA(r=4, alpha=8, orth_lambda=0.5)
    strategy.setup(model, stream)
    start(model, strategy, 0)
    train_steps(model, next(iter(train_loader(model, stream.tasks[0]))))
    start(model, strategy, 1)
    return strategy


def test_the_new_adapter_trains_with_the_earlier_ones_in_the_forward_pass_frozen(model, olora):
    lm = model.backbone.lm
    assert list(lm.peft_config) == ["task_0", "task_1"]
    assert sorted(lm.base_model.active_adapters) == ["task_0", "task_1"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".task_1." in n for n in trainable)


def test_the_penalty_is_the_orthogonality_of_the_down_projections_and_lowers_it(model, stream, olora):
    layers = lora_layers(model.backbone.lm)
    by_hand = sum(
        float(((layer.lora_A["task_0"].weight @ layer.lora_A["task_1"].weight.T) ** 2).sum())
        for layer in layers
    )
    batch = next(iter(train_loader(model, stream.tasks[1])))
    penalty = olora.penalty(model, batch, None)
    assert by_hand > 0 and float(penalty) == pytest.approx(0.5 * by_hand, rel=1e-5)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(20):
        optimizer.zero_grad()
        olora.penalty(model, batch, None).backward()
        optimizer.step()
    assert float(olora.penalty(model, batch, None)) < 0.1 * float(penalty)


def test_every_adapter_answers_at_evaluation_whatever_the_task_and_training_state_comes_back(model, olora):
    lm = model.backbone.lm
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    with olora.eval_context(model, 0):
        assert sorted(lm.base_model.active_adapters) == ["task_0", "task_1"]
        assert not any(p.requires_grad for n, p in model.named_parameters() if ".lora_" in n)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads


@pytest.mark.slow
def test_olora_runs_under_two_process_ddp(tmp_path):
    out = tmp_path / "run"
    done = run_fit(
        *TINY_RUN, "--config", "experiments/olora.yaml", "--output_dir", str(out),
        "--trainer.devices", "2", "--trainer.strategy", "ddp",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["env"]["world_size"] == 2 and results["strategies"] == "OLoRA"
    assert all(results["matrix"][j + 1][j] is not None for j in range(2))
