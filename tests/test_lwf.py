"""LwF (``strategies/lwf.py``): answers distilled toward the model as it was before the task."""

import copy
import json

import pytest
import torch

from contmm.model.collate import IGNORE_INDEX
from strategies.lwf import LwF
from tests.helpers import TINY_RUN, run_fit, start, train_loader, train_steps


def kl_by_hand(student_logits, teacher_logits, labels, temperature):
    """Σ over answer-predicting positions of Σ_v p_T (log p_T - log p_S), / positions, × T²."""
    total, positions = 0.0, 0
    for row in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            if labels[row, t + 1] == IGNORE_INDEX:
                continue
            p_teacher = torch.softmax(teacher_logits[row, t] / temperature, -1)
            p_student = torch.softmax(student_logits[row, t] / temperature, -1)
            total += float((p_teacher * (p_teacher.log() - p_student.log())).sum())
            positions += 1
    return total / positions * temperature**2


def test_the_penalty_is_the_distillation_toward_the_model_before_the_task(model, stream):
    lwf = LwF(alpha=0.5, temperature=2.0)
    lwf.setup(model, stream)
    start(model, lwf, 1)
    before = copy.deepcopy(model)
    batch = next(iter(train_loader(model, stream.tasks[1])))
    assert float(lwf.penalty(model, batch, model(**batch))) == pytest.approx(0.0, abs=1e-6)

    train_steps(model, batch, steps=3)  # the task's own loss moves the model
    outputs = model(**batch)
    penalty = lwf.penalty(model, batch, outputs)
    with torch.no_grad():
        expected = kl_by_hand(outputs.logits, before(**batch).logits, batch["labels"], 2.0)
    assert expected > 1e-4 and float(penalty) == pytest.approx(0.5 * expected, rel=1e-4)
    # The gradient reaches the tuned weights; the snapshot of the earlier model stays put.
    penalty.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    assert all(torch.equal(lwf.previous[n], p) for n, p in before.named_parameters() if n in lwf.previous)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="temperature > 0"):
        LwF(temperature=0)


@pytest.mark.slow
def test_lwf_runs_under_two_process_ddp(tmp_path):
    out = tmp_path / "run"
    done = run_fit(
        *TINY_RUN, "--config", "experiments/lwf.yaml", "--output_dir", str(out),
        "--trainer.devices", "2", "--trainer.strategy", "ddp",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["env"]["world_size"] == 2 and results["strategies"] == "LwF"
    assert all(results["matrix"][j + 1][j] is not None for j in range(2))
