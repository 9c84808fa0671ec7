"""Projector expansion (EProj): a projector per task, picked per sample by task keys."""

import json

import pytest
import torch
import torch.nn.functional as F

from contmm.cli import main
from contmm.model.collate import InstructionCollator
from strategies.projector_expansion import ProjectorExpansion, instruction_features
from tests.helpers import TINY_RUN, start, train_loader, train_steps


def run_stream(model, strategy, stream):
    """Both tasks: tune each task's projector a little, then store the task's keys."""
    for task_id, task in enumerate(stream.tasks):
        start(model, strategy, task_id)
        loader = train_loader(model, task)
        train_steps(model, next(iter(loader)))
        strategy.after_task(model, task_id, loader)


@pytest.fixture
def expansion(model, stream) -> ProjectorExpansion:
    model.cfg.encoder.freeze = model.cfg.backbone.freeze = True
    strategy = ProjectorExpansion(image_weight=0.0)
    strategy.setup(model, stream)
    return strategy


def mixed_test_batch(model, stream, per_task=4):
    samples = [task.test[i] for task in stream.tasks for i in range(per_task)]
    return InstructionCollator(model, train=False)(samples)


def test_each_task_trains_a_copy_of_the_previous_projector_and_the_older_ones_stay_fixed(
    model, expansion, stream
):
    start(model, expansion, 0)
    loader = train_loader(model, stream.tasks[0])
    train_steps(model, next(iter(loader)))
    start(model, expansion, 1)
    first, second = model.input_projector.projectors
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"input_projector.projectors.1.{n}" for n, _ in second.named_parameters()}
    frozen = [p.detach().clone() for p in first.parameters()]
    train_steps(model, next(iter(train_loader(model, stream.tasks[1]))))
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), frozen))
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))


def test_each_sample_of_a_mixed_batch_goes_to_the_projector_of_its_nearest_keys(model, expansion, stream):
    run_stream(model, expansion, stream)
    batch = mixed_test_batch(model, stream)
    expanded = model.input_projector
    with torch.no_grad():
        # The task id handed to the context (0) is not used to route.
        with expansion.eval_context(model, 0, batch):
            routed = model.embed(batch["input_ids"], batch["pixel_values"])
        route = expanded.last_route
        similarity = F.normalize(instruction_features(model, batch), dim=-1) @ expanded.instruction_keys.T
        assert route.tolist() == similarity.argmax(1).tolist()
        assert set(route.tolist()) == {0, 1}  # both projectors serve part of this batch
        by_projector = []
        for task_id in (0, 1):
            expanded.active = task_id
            by_projector.append(model.embed(batch["input_ids"], batch["pixel_values"]))
    expected = torch.stack([by_projector[task][i] for i, task in enumerate(route.tolist())])
    torch.testing.assert_close(routed, expected, rtol=0, atol=0)


def test_routing_accuracy_counts_the_tuned_tasks_and_is_reset_after_each_report(model, expansion, stream):
    start(model, expansion, 0)
    expansion.after_task(model, 0, train_loader(model, stream.tasks[0]))
    assert expansion.evaluation_report(model) == {}  # nothing evaluated yet
    collate = InstructionCollator(model, train=False)
    with torch.no_grad():
        for task_id, task in enumerate(stream.tasks):  # only task 0 has been tuned
            batch = collate([task.test[i] for i in range(4)])
            with expansion.eval_context(model, task_id, batch):
                model.embed(batch["input_ids"], batch["pixel_values"])
    # Task 0's samples all go to its projector, the only one; task 1, not tuned yet, has no
    # right projector to be routed to and is left out.
    assert expansion.evaluation_report(model) == {
        "routing_accuracy": {"colour": 1.0},
        "mean_routing_accuracy": 1.0,
    }
    assert expansion.evaluation_report(model) == {}


def test_the_oracle_uses_the_task_id_and_the_latest_projector_for_an_untuned_task(model, stream):
    model.cfg.encoder.freeze = model.cfg.backbone.freeze = True
    oracle = ProjectorExpansion(oracle=True)
    oracle.setup(model, stream)
    run_stream(model, oracle, stream)
    expanded = model.input_projector
    batch = mixed_test_batch(model, stream)
    for task_id in (0, 1):
        with oracle.eval_context(model, task_id, batch):
            assert expanded.active == task_id and expanded.instruction is None
    assert oracle.evaluation_report(model) == {"routing": "oracle"}


def test_a_frozen_projector_is_refused(model, stream):
    model.cfg.input_projector.freeze = True
    with pytest.raises(ValueError, match="input_projector.freeze: false"):
        ProjectorExpansion().setup(model, stream)


@pytest.mark.slow
@pytest.mark.usefixtures("in_repo")
def test_the_cli_run_reports_routing_accuracy_and_routed_tasks_keep_their_scores(tmp_path):
    main(
        [
            "fit",
            *TINY_RUN,
            "--config",
            "experiments/projector_expansion.yaml",
            "--output_dir",
            str(tmp_path),
        ]
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["strategy_reports"][0] == {}  # before the first task there is nothing to route
    last = results["strategy_reports"][-1]["ProjectorExpansion"]
    assert last == {"routing_accuracy": {"colour": 1.0, "shape": 1.0}, "mean_routing_accuracy": 1.0}
    # Encoder, LLM and the colour projector are frozen after stage 1 and every colour sample
    # is routed to its projector: tuning shape changes no colour answer.
    after = {s: (tmp_path / f"predictions/stage_{s}/colour.jsonl").read_text() for s in (1, 2)}
    assert after[1] == after[2]
    assert results["matrix"][2][0] == results["matrix"][1][0]
    shape = {s: (tmp_path / f"predictions/stage_{s}/shape.jsonl").read_text() for s in (1, 2)}
    assert shape[1] != shape[2]  # while the shape task, through its own projector, did change
