"""A bad setting, an empty or ambiguous task list or a strategy listed twice stops `contmm fit`
with one message naming it, before any model is built or any run directory written."""

from __future__ import annotations

import pytest

from contmm.strategy import Strategies
from contmm.training import runner
from strategies.ewc import EWC
from strategies.naive import Naive
from strategies.replay import Replay
from tests.helpers import TINY_RUN, fit_error

pytestmark = pytest.mark.usefixtures("in_repo")


@pytest.fixture
def no_model(monkeypatch):
    def build(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(runner, "build_model", build)


def stopped(capsys, tmp_path, *args: str) -> str:
    """The first line `contmm fit` (the tiny run, then ``args``) stops with; nothing was written."""
    out = tmp_path / "run"
    message = fit_error(capsys, *TINY_RUN, "--output_dir", str(out), *args)
    assert message.count("contmm: error:") == 1
    assert not out.exists()
    return message.splitlines()[0]


# A setting, a bad value, and what the message must say.
BAD_SETTINGS = [
    ("eval.batch_size", "0", "eval.batch_size must be at least 1, got 0"),
    ("eval.max_new_tokens", "0", "eval.max_new_tokens must be at least 1, got 0"),
    ("data.batch_size", "-4", "data.batch_size must be at least 1, got -4"),
    ("data.num_workers", "-1", "data.num_workers must be at least 0, got -1"),
    ("optimizer.lr", "0", "optimizer.lr must be positive, got 0"),
    ("optimizer.lr", "-0.001", "optimizer.lr must be positive, got -0.001"),
    ("optimizer.projector_lr", "0", "optimizer.projector_lr must be positive, got 0"),
    ("pretrain.max_epochs", "-1", "pretrain.max_epochs must be at least 0, got -1"),
    ("pretrain.lr", "0", "pretrain.lr must be positive, got 0"),
    ("seed", "-1", "seed must be in 0 .. 4294967293, got -1"),
    # Fine for row 0, but stage 1 would seed with 2**32, outside numpy's range.
    ("seed", str(2**32 - 1), "seed must be in 0 .. 4294967293, got 4294967295"),
]


@pytest.mark.parametrize(
    ("setting", "value", "expected"), BAD_SETTINGS, ids=[f"{s}={v}" for s, v, _ in BAD_SETTINGS]
)
def test_a_bad_setting_is_named_before_the_model_is_built(
    capsys, tmp_path, no_model, setting, value, expected
):
    assert expected in stopped(capsys, tmp_path, f"--{setting}", value)


@pytest.mark.parametrize(
    ("tasks", "expected"),
    [
        ("[]", "SyntheticShapes: the stream has no tasks"),
        ("[colour, shape, colour]", "duplicate task name(s) ['colour']"),
    ],
    ids=["no tasks", "a task twice"],
)
def test_an_empty_or_ambiguous_task_list_is_refused(capsys, tmp_path, no_model, tasks, expected):
    assert expected in stopped(capsys, tmp_path, "--stream.init_args.tasks", tasks)


def test_a_strategy_listed_twice_that_can_run_once_is_named_before_the_model_is_built(
    capsys, tmp_path, no_model
):
    config = tmp_path / "twice.yaml"
    config.write_text(
        "strategies:\n"
        "  - {class_path: strategies.replay.Replay, init_args: {memory_size: 8}}\n"
        "  - {class_path: strategies.ewc.EWC}\n"
        "  - {class_path: strategies.replay.Replay, init_args: {memory_size: 4}}\n"
    )
    message = stopped(capsys, tmp_path, "--config", str(config))
    assert message == (
        "contmm: error: strategies: Replay is listed 2 times, but a run can use it once "
        "(a second copy would act again on what the first did); list it once"
    )


def test_strategies_whose_copies_add_up_may_be_listed_twice():
    assert Strategies([EWC(), Replay(), EWC(ewc_lambda=1.0, mode="online"), Naive(), Naive()]).name == (
        "EWC+Replay+EWC+Naive+Naive"
    )
    with pytest.raises(ValueError, match="Replay is listed 2 times"):
        Strategies([Replay(), EWC(), Replay()])
