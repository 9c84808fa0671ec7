"""Train mode in training steps, eval mode in evaluation, and streams of a single task."""

import json
from typing import ClassVar

import pytest

from contmm.cli import main
from contmm.strategy import Strategy
from tests.helpers import TINY_RUN

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("in_repo")]


class ModeProbe(Strategy):
    """Puts the model in eval mode at setup, as ``from_pretrained`` leaves a pretrained one,
    and records the modes of all its modules in training steps and in evaluation."""

    training_modes: ClassVar[set[bool]] = set()
    evaluation_modes: ClassVar[set[bool]] = set()

    def setup(self, model, stream):
        model.eval()

    def penalty(self, model, batch, outputs):
        ModeProbe.training_modes |= {m.training for m in model.modules()}

    def eval_context(self, model, task_id, batch=None):
        ModeProbe.evaluation_modes |= {m.training for m in model.modules()}
        return super().eval_context(model, task_id, batch)


def test_every_module_trains_in_train_mode_and_is_evaluated_in_eval_mode(tmp_path):
    main(
        [
            "fit",
            *TINY_RUN,
            "--output_dir",
            str(tmp_path),
            "--strategies",
            "[{class_path: tests.test_training_modes.ModeProbe}]",
        ]
    )
    assert ModeProbe.training_modes == {True}
    assert ModeProbe.evaluation_modes == {False}


def test_a_stream_of_one_task_is_tuned_and_scored(tmp_path):
    main(["fit", *TINY_RUN, "--stream.init_args.tasks", "[colour]", "--output_dir", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["tasks"] == ["colour"] and results["stages_completed"] == 1
    assert len(results["matrix"]) == 2 and all(row[0] is not None for row in results["matrix"])
    # Every metric but the ones a single task defines is null, with the reason.
    assert results["metrics"]["acc"] == results["matrix"][1][0]
    assert results["metrics"]["bwt"] is None and "bwt" in results["missing_metrics"]
