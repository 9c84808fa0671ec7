"""A bad setting, an empty or ambiguous task list or a strategy listed twice stops `contmm fit`
with one message naming it, before any model is built or any run directory written."""

from __future__ import annotations

import pytest

from contmm import runner
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
