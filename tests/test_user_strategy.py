"""The own-strategy tutorial's example, run as written from a module outside the repository."""

import csv
import json
import re

import pytest

from tests.helpers import REPO, TINY_RUN, run_fit


def _tutorial_blocks(language: str) -> list[str]:
    page = (REPO / "docs/tutorials/own-strategy.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", page, flags=re.DOTALL)


@pytest.mark.slow
def test_the_tutorial_strategy_runs_from_the_users_own_module_by_class_path(tmp_path):
    modules = tmp_path / "my_lab"
    modules.mkdir()
    (modules / "my_strategies.py").write_text(_tutorial_blocks("python")[0])
    config = tmp_path / "my_l2.yaml"
    config.write_text(_tutorial_blocks("yaml")[0])

    out = tmp_path / "run"
    done = run_fit(*TINY_RUN, "--config", str(config), "--output_dir", str(out), PYTHONPATH=str(modules))
    assert done.returncode == 0, done.stderr[-3000:]

    assert json.loads((out / "results.json").read_text())["strategies"] == "L2ToPrevious"

    def penalties(stage: str) -> list[float]:
        rows = csv.DictReader((out / "logs/csv" / stage / "metrics.csv").open())
        return [float(r["train/penalty"]) for r in rows if r.get("train/penalty")]

    # No previous weights while tuning the first task; a pull on the second one.
    assert penalties("stage_1") == []
    assert penalties("stage_2") and all(value >= 0 for value in penalties("stage_2"))
    assert any(value > 0 for value in penalties("stage_2"))
