"""The strategy hooks: composition, and where the runner and the module call them."""

import json
from contextlib import contextmanager
from typing import ClassVar

import pytest
import torch

from contmm.cli import main
from contmm.model.collate import InstructionCollator
from contmm.strategy import Strategies, Strategy
from contmm.training.module import ContinualModule, EvalConfig
from contmm.training.optimizer import OptimizerConfig, build_optimizer
from tests.helpers import TINY_RUN


class Recorder(Strategy):
    """Records every hook call (class-level, since the CLI builds the instance)."""

    calls: ClassVar[list] = []
    once_per_run = False  # two copies, each with its own penalty, are composed below

    def __init__(self, penalty: float = 0.0, tag: str = "r") -> None:
        self.value, self.tag = penalty, tag

    def setup(self, model, stream):
        self.calls.append(("setup", len(stream.tasks)))

    def before_task(self, model, task_id):
        self.calls.append(("before_task", task_id))

    def train_data(self, task_id, dataset):
        self.calls.append(("train_data", task_id, len(dataset)))
        return dataset

    def penalty(self, model, batch, outputs):
        return torch.tensor(self.value)

    def after_task(self, model, task_id, dataloader):
        self.calls.append(("after_task", task_id, next(iter(dataloader))["input_ids"].device.type))

    @contextmanager
    def eval_context(self, model, task_id, batch=None):
        self.calls.append(("enter", self.tag, task_id, None if batch is None else len(batch["ids"])))
        yield
        self.calls.append(("exit", self.tag, task_id))

    def evaluation_report(self, model):
        self.calls.append(("report",))
        return {"reports_so_far": sum(c[0] == "report" for c in self.calls)}


@pytest.fixture(autouse=True)
def _clear():
    Recorder.calls.clear()


def test_composed_strategies_add_penalties_and_nest_eval_contexts():
    both = Strategies([Recorder(0.5, "a"), Strategy(), Recorder(0.25, "b")])
    assert float(both.penalty(None, {}, None)) == pytest.approx(0.75)
    assert Strategies([Strategy()]).penalty(None, {}, None) is None
    with both.eval_context(None, 3):
        assert Recorder.calls == [("enter", "a", 3, None), ("enter", "b", 3, None)]
    assert Recorder.calls[2:] == [("exit", "b", 3), ("exit", "a", 3)]
    assert both.name == "Recorder+Strategy+Recorder"


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
def test_the_training_step_adds_the_strategies_penalty_to_the_lm_loss(model, stream):
    module = ContinualModule(model, Strategies([Recorder(2.0)]), OptimizerConfig(), EvalConfig(), 2)
    batch = InstructionCollator(model, train=True)([stream.tasks[0].train[i] for i in range(4)])
    lm_loss = model(**batch).loss
    module.task_id = 0
    assert float(module.training_step(batch, 0)) == pytest.approx(float(lm_loss) + 2.0, rel=1e-5)
    module.task_id = None  # MM pre-training: no continual penalty
    assert float(module.training_step(batch, 0)) == pytest.approx(float(lm_loss), rel=1e-5)


def test_the_optimizer_covers_what_is_trainable_now_with_the_projector_rate(model):
    model.set_trainable(["input_projector"])
    optimizer, _ = build_optimizer(model, OptimizerConfig(lr=1e-3, projector_lr=5e-3), total_steps=10)
    (group,) = optimizer.param_groups
    assert group["initial_lr"] == 5e-3
    assert {id(p) for p in group["params"]} == {id(p) for p in model.input_projector.parameters()}
    model.set_trainable([])
    with pytest.raises(ValueError, match="nothing is trainable"):
        build_optimizer(model, OptimizerConfig(), total_steps=10)


@pytest.mark.slow
@pytest.mark.usefixtures("in_repo")
def test_the_runner_calls_every_hook_at_its_stage(tmp_path):
    main(
        [
            "fit",
            *TINY_RUN,
            "--output_dir",
            str(tmp_path),
            "--strategies",
            "[{class_path: tests.test_strategy.Recorder}]",
        ]
    )
    hooks = [c for c in Recorder.calls if c[0] not in ("enter", "exit", "report")]
    assert hooks == [
        ("setup", 2),
        ("before_task", 0),
        ("train_data", 0, 32),
        ("after_task", 0, "cpu"),
        ("before_task", 1),
        ("train_data", 1, 32),
        ("after_task", 1, "cpu"),
    ]
    # Every evaluation of task j runs inside eval_context(j): 3 rows x 2 tasks, per batch.
    entered = {c[2] for c in Recorder.calls if c[0] == "enter"}
    assert entered == {0, 1}
    # 9 samples per task in batches of 4: each batch is handed to the strategy for routing.
    assert [c[3] for c in Recorder.calls if c[0] == "enter"] == [4, 4, 1] * 2 * 3
    # After each of the 3 evaluations the strategy's report is stored with its row.
    reports = json.loads((tmp_path / "results.json").read_text())["strategy_reports"]
    assert reports == [{"Recorder": {"reports_so_far": n}} for n in (1, 2, 3)]


class FirstForm(Strategy):
    """A strategy written for the hooks' first form: no model in state_dict / load_state_dict /
    evaluation_report."""

    def __init__(self):
        self.loaded = None

    def state_dict(self):
        return {"kept": 1}

    def load_state_dict(self, state):
        self.loaded = state

    def evaluation_report(self):
        return {"report": True}


def test_a_strategy_written_for_the_first_form_of_the_hooks_is_warned_about_and_still_runs():
    with pytest.warns(FutureWarning, match="FirstForm: evaluation_report, load_state_dict, state_dict take"):
        both = Strategies([FirstForm(), Recorder(0.0, "a")])
    model = object()
    state = both.state_dict(model)
    assert state == {"0:FirstForm": {"kept": 1}, "1:Recorder": {}}
    both.load_state_dict(state, model)
    assert both.strategies[0].loaded == {"kept": 1}
    assert both.evaluation_report(model) == {"FirstForm": {"report": True}, "Recorder": {"reports_so_far": 1}}
