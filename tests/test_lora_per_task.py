"""LoRA per task: one adapter per task on the frozen LLM, picked by task id at evaluation."""

import json

import pytest
import torch

from contmm.cli import main
from contmm.model import MMLLM
from contmm.model.collate import InstructionCollator
from strategies.lora_per_task import LoRAPerTask
from tests.helpers import TINY_RUN, start, train_steps


@pytest.fixture
def lora(model, stream) -> LoRAPerTask:
    model.cfg.backbone.freeze = True
    strategy = LoRAPerTask(r=4, alpha=8)
    strategy.setup(model, stream)
    return strategy


def logits_under(strategy, model, task_id, batch):
    with torch.no_grad(), strategy.eval_context(model, task_id):
        return model(**batch).logits


@pytest.fixture
def batch(model, stream):
    return InstructionCollator(model, train=True)([stream.tasks[1].train[i] for i in range(8)])


def test_only_the_new_adapter_and_the_configured_components_are_trainable(model, lora):
    start(model, lora, 0)
    start(model, lora, 1)
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    lora_weights = {n for n in params if ".lora_" in n}
    task_1 = {n for n in lora_weights if ".task_1." in n}
    assert len(task_1) == 2 * 7  # lora_A and lora_B on the 7 projections of the 1-layer LLM
    assert trainable & lora_weights == task_1  # task_0's adapter and the base LLM are frozen
    assert trainable - lora_weights == {
        f"input_projector.{n}" for n, _ in model.input_projector.named_parameters()
    }


def test_a_trainable_backbone_is_refused(model, stream):
    strategy = LoRAPerTask()
    with pytest.raises(ValueError, match="backbone.freeze: true"):
        strategy.before_task(model, 0)


def test_training_a_task_leaves_the_earlier_tasks_adapter_untouched(model, lora, batch):
    model.cfg.input_projector.freeze = True  # only the adapters train: task 0 must not move at all
    base = logits_under(lora, model, 1, batch)
    start(model, lora, 0)
    train_steps(model, batch)
    start(model, lora, 1)
    before = {t: logits_under(lora, model, t, batch) for t in (0, 1)}
    torch.testing.assert_close(before[1], base)  # a new adapter starts as the base LLM (B = 0)
    train_steps(model, batch)
    torch.testing.assert_close(logits_under(lora, model, 0, batch), before[0], rtol=0, atol=0)
    assert not torch.allclose(logits_under(lora, model, 1, batch), before[1])


def test_eval_context_picks_the_tasks_adapter_and_restores_the_active_one(model, lora, batch):
    base = logits_under(lora, model, 0, batch)  # no adapter yet: the base LLM
    start(model, lora, 0)
    train_steps(model, batch)
    start(model, lora, 1)
    train_steps(model, batch, steps=2)
    lm = model.backbone.lm
    flags = [p.requires_grad for p in model.parameters()]
    for task_id, expected in [(0, "task_0"), (1, "task_1"), (3, "task_1")]:  # 3: not tuned yet
        with lora.eval_context(model, task_id):
            assert lm.active_adapter == expected
        assert lm.active_adapter == "task_1"
    assert [p.requires_grad for p in model.parameters()] == flags
    task_0, task_1 = (logits_under(lora, model, t, batch) for t in (0, 1))
    assert not torch.allclose(task_0, task_1) and not torch.allclose(task_0, base)
    torch.testing.assert_close(logits_under(lora, model, 3, batch), task_1)


def test_state_dict_rebuilds_every_adapter_on_a_fresh_model(model, lora, batch, stream):
    model.cfg.input_projector.freeze = True  # a fresh build from the same seed equals all but the adapters
    start(model, lora, 0)
    train_steps(model, batch)
    start(model, lora, 1)
    train_steps(model, batch)
    torch.manual_seed(0)
    fresh = MMLLM.build(model.cfg, stream.texts()).eval()
    restored = LoRAPerTask(r=4, alpha=8)
    restored.setup(fresh, stream)
    restored.load_state_dict(lora.state_dict(model), fresh)
    assert list(fresh.backbone.lm.peft_config) == ["task_0", "task_1"]
    for task_id in (0, 1):
        torch.testing.assert_close(
            logits_under(restored, fresh, task_id, batch), logits_under(lora, model, task_id, batch)
        )


@pytest.mark.slow
@pytest.mark.usefixtures("in_repo")
def test_fit_with_lora_per_task_keeps_the_first_tasks_predictions(tmp_path):
    strategy = "[{class_path: strategies.lora_per_task.LoRAPerTask}]"
    # With the projector frozen too, nothing task 0 is evaluated with changes in stage 2.
    frozen = ["--model.backbone.freeze", "true", "--model.input_projector.freeze", "true"]
    # Enough steps for each adapter to answer in its own task's words (colour, then shape).
    steps = ["--trainer.max_epochs", "4", "--optimizer.lr", "0.01", "--pretrain.lr", "0.001"]
    main(["fit", *TINY_RUN, "--output_dir", str(tmp_path), "--strategies", strategy, *frozen, *steps])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["strategies"] == "LoRAPerTask" and results["stages_completed"] == 2
    assert len(results["matrix"]) == 3 and all(v is not None for row in results["matrix"] for v in row)
    colour = [
        [json.loads(line)["prediction"] for line in (tmp_path / f"predictions/stage_{s}/colour.jsonl").open()]
        for s in range(3)
    ]
    assert colour[1] != colour[0]  # task 0's adapter changed its answers ...
    assert colour[2] == colour[1]  # ... and tuning task 1 left them as they were
