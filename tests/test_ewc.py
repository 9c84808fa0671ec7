"""EWC: a Fisher over the trainable parameters only, the penalty, separate and online modes."""

import pytest
import torch

from contmm.model.collate import InstructionCollator
from strategies.ewc import EWC
from streams.synthetic import SyntheticShapes


@pytest.fixture
def batches(model, stream):
    collate = InstructionCollator(model, train=True)
    return [collate([stream.tasks[0].train[i + 4 * b] for i in range(4)]) for b in range(3)]


def test_the_batch_fisher_covers_only_trainable_parameters_and_averages_squared_batch_gradients(
    model, batches
):
    model.set_trainable(["input_projector"])
    ewc = EWC(fisher_batches=2, fisher="batch")
    fisher = ewc.fisher(model, batches)
    assert set(fisher) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(name.startswith("input_projector.") for name in fisher)

    name, param = next(iter(model.input_projector.named_parameters()))
    expected = torch.zeros_like(param)
    for batch in batches[:2]:
        grad = torch.autograd.grad(model(**batch).loss, param)[0]
        expected += grad.pow(2) / 2
    assert torch.allclose(fisher[f"input_projector.{name}"], expected, atol=1e-10)


def test_the_sample_fisher_averages_each_samples_squared_gradient_of_its_answer_loss(model, stream, batches):
    model.set_trainable(["input_projector"])
    fisher = EWC(fisher_batches=2).fisher(model, batches)
    assert set(fisher) == {n for n, p in model.named_parameters() if p.requires_grad}

    # By hand: each sample alone through the model (its own loss is its answer tokens' mean).
    collate = InstructionCollator(model, train=True)
    param = model.input_projector[0].weight
    expected, samples = torch.zeros_like(param), 0
    for b in range(2):
        for sample in [stream.tasks[0].train[i + 4 * b] for i in range(4)]:
            grad = torch.autograd.grad(model(**collate([sample])).loss, param)[0]
            expected, samples = expected + grad.pow(2), samples + 1
    torch.testing.assert_close(fisher["input_projector.0.weight"], expected / samples, rtol=1e-4, atol=1e-12)
    # The batch Fisher squares the mean of the samples' gradients (colour answers are equally
    # long), which is smaller than the mean of their squares: the two are not one estimate.
    assert (
        fisher["input_projector.0.weight"].sum()
        > EWC(fisher_batches=2, fisher="batch").fisher(model, batches)["input_projector.0.weight"].sum()
    )


def test_the_penalty_is_zero_at_the_anchor_and_grows_as_weights_move(model, batches):
    model.set_trainable(["input_projector"])
    ewc = EWC(ewc_lambda=10.0, fisher_batches=3)
    assert ewc.penalty(model, None, None) is None  # nothing learnt yet
    ewc.after_task(model, 0, batches)
    assert float(ewc.penalty(model, None, None)) == 0.0

    ((fisher, anchor),) = zip(ewc.fishers, ewc.anchors)
    weight = model.input_projector[0].weight
    with torch.no_grad():
        weight.add_(0.1)
    name = "input_projector.0.weight"
    own_term = 0.5 * 10.0 * (fisher[name] * (weight - anchor[name]).pow(2)).sum()
    assert float(ewc.penalty(model, None, None)) == pytest.approx(float(own_term), rel=1e-6)
    assert float(own_term) > 0
    # Its gradient pulls each weight back to the anchor in proportion to its Fisher value.
    model.zero_grad()
    ewc.penalty(model, None, None).backward()
    torch.testing.assert_close(weight.grad, 10.0 * fisher[name] * (weight - anchor[name]).detach())
    assert torch.count_nonzero(model.input_projector[2].weight.grad) == 0  # unmoved: no pull


def test_parameters_frozen_now_or_absent_then_are_not_penalised(model, batches):
    model.set_trainable(["input_projector"])
    ewc = EWC(fisher_batches=1)
    ewc.after_task(model, 0, batches)
    with torch.no_grad():
        model.input_projector[0].weight.add_(1.0)
    model.set_trainable(["backbone"])  # the projector is frozen in the next stage
    ewc.before_task(model, 1)
    assert ewc.penalty(model, None, None) is None


def test_separate_mode_keeps_one_fisher_per_task_online_mode_one_running_fisher(model, batches):
    model.set_trainable(["input_projector"])
    separate, online = EWC(fisher_batches=1), EWC(mode="online", decay=0.5, fisher_batches=1)
    for task_id in range(2):
        separate.after_task(model, task_id, batches)
        online.after_task(model, task_id, batches)
    assert len(separate.fishers) == 2 and len(online.fishers) == 1
    name = "input_projector.0.weight"
    first, second = separate.fishers[0][name], separate.fishers[1][name]
    assert torch.allclose(online.fishers[0][name], second + 0.5 * first)


def test_a_decay_in_separate_mode_is_refused():
    with pytest.raises(ValueError, match="decay.*'online' only"):
        EWC(mode="separate", decay=0.9)


def test_a_sample_fisher_is_refused_on_a_stream_with_generation_tasks(model):
    drawing = SyntheticShapes(tasks=["draw_colour", "colour"], train_size=4, test_size=2, pretrain_size=4)
    with pytest.raises(ValueError, match=r"\['draw_colour'\].*fisher: batch"):
        EWC().setup(model, drawing)
    EWC(fisher="batch").setup(model, drawing)


def test_a_normalised_fisher_has_mean_one_and_the_raw_fishers_proportions(model, batches):
    model.set_trainable(["input_projector"])
    raw, normalised = EWC(fisher_batches=2, normalise=False), EWC(fisher_batches=2)
    raw.after_task(model, 0, batches)
    normalised.after_task(model, 0, batches)
    (plain,), (scaled,) = raw.fishers, normalised.fishers
    weights = sum(v.numel() for v in scaled.values())
    assert sum(float(v.sum()) for v in scaled.values()) / weights == pytest.approx(1.0, rel=1e-5)
    ratio = float(scaled["input_projector.0.weight"].sum() / plain["input_projector.0.weight"].sum())
    for name in plain:
        torch.testing.assert_close(scaled[name], plain[name] * ratio)
