"""LoRA-FT (``strategies/lora.py``): one adapter on the frozen LLM, tuned through the stream."""

import json

import pytest
import torch

from strategies.lora import ADAPTER, LoRA
from tests.helpers import TINY_RUN, run_fit, start, train_loader, train_steps


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" in n}


def test_one_adapter_is_tuned_on_every_task_from_where_the_last_task_left_it(model, stream):
    model.cfg.backbone.freeze = model.cfg.input_projector.freeze = True
    lora = LoRA(r=4, alpha=8)
    lora.setup(model, stream)
    start(model, lora, 0)
    train_steps(model, next(iter(train_loader(model, stream.tasks[0]))))
    after_first = lora_weights(model)
    start(model, lora, 1)
    assert list(model.backbone.lm.peft_config) == [ADAPTER]
    # Task 1 starts from task 0's adapter (no fresh one), and only the adapter is trainable.
    assert all(torch.equal(after_first[n], p) for n, p in lora_weights(model).items())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(f".lora_A.{ADAPTER}." in n or f".lora_B.{ADAPTER}." in n for n in trainable)
    train_steps(model, next(iter(train_loader(model, stream.tasks[1]))))
    assert any(not torch.equal(after_first[n], p) for n, p in lora_weights(model).items())
    # Every task, tuned or not, is evaluated with the one adapter: no task id is needed.
    assert {lora.adapter_for(model, j) for j in range(4)} == {ADAPTER}


def test_lora_needs_a_frozen_backbone(model, stream):
    lora = LoRA()
    lora.setup(model, stream)
    model.cfg.backbone.freeze = False
    with pytest.raises(ValueError, match="backbone.freeze: true"):
        lora.before_task(model, 0)


@pytest.mark.slow
def test_lora_runs_under_two_process_ddp_with_one_adapter_in_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    done = run_fit(
        *TINY_RUN, "--config", "experiments/lora.yaml", "--output_dir", str(out),
        "--trainer.devices", "2", "--trainer.strategy", "ddp",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["env"]["world_size"] == 2
    assert all(results["matrix"][j + 1][j] is not None for j in range(2))
    saved = torch.load(out / "checkpoints/stage_2/strategies.pt", weights_only=True)
    (adapters,) = [state["adapters"] for state in saved.values() if "adapters" in state]
    assert list(adapters) == [ADAPTER] and adapters[ADAPTER]
