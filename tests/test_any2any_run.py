"""`contmm fit` on a stream that interleaves understanding and generation tasks, end to end:
images saved per stage, scored into the same matrix, the grid, and resuming."""

import json

import pytest
from PIL import Image

from contmm.cli import main
from tests.helpers import REPO, TINY_RUN, crash_in_training, run_files

# The tiny run's overrides on the any-to-any config (TINY_RUN opens with its own --config).
RUN = [
    "--config",
    "experiments/seq_any2any.yaml",
    *TINY_RUN[2:],
    "--stream.init_args.tasks",
    "[draw_colour, colour, draw_position]",
    "--model.generator.num_inference_steps",
    "2",
    "--strategies",
    "[{class_path: strategies.replay.Replay, init_args: {memory_size: 8}}]",
]

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("in_repo")]


def fit(out, *extra):
    main(["fit", *RUN, "--output_dir", str(out), *extra])
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("any2any") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        fit(out)
    return out


def test_generation_cells_are_scored_on_images_saved_beside_the_predictions(uninterrupted):
    results = json.loads((uninterrupted / "results.json").read_text())
    assert results["tasks"] == ["draw_colour", "colour", "draw_position"]
    assert all(score is not None for score in results["matrix"][3])
    for stage in range(4):
        lines = (uninterrupted / f"predictions/stage_{stage}/draw_colour.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert len(records) == 9
        drawn = [r for r in records if r["image"] is not None]
        for record in drawn:
            with Image.open(uninterrupted / f"predictions/stage_{stage}" / record["image"]) as image:
                assert image.size == (16, 16)
        # A prompt that wrote no signal token has no image and scores 0.
        assert all(r["score"] == 0 for r in records if r["image"] is None)
        mean = sum(r["score"] for r in records) / len(records)
        assert results["matrix"][stage][0] == pytest.approx(mean)
    # After tuning on draw_colour the model draws for its prompts.
    assert all(
        json.loads(line)["image"] for line in (uninterrupted / "predictions/stage_1/draw_colour.jsonl").open()
    )
    with Image.open(uninterrupted / "generations.png") as grid:
        assert grid.size[0] > grid.size[1] > 100


def test_a_crashed_any2any_run_resumes_to_the_uninterrupted_matrix_and_images(
    tmp_path, monkeypatch, uninterrupted
):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        crash_in_training(patch, task_id=2)
        with pytest.raises(RuntimeError, match="injected crash"):
            fit(out)
    resumed = fit(out)
    expected = json.loads((uninterrupted / "results.json").read_text())
    assert resumed["matrix"] == expected["matrix"]
    assert run_files(out, "predictions/**/*.jsonl") == run_files(uninterrupted, "predictions/**/*.jsonl")
    assert run_files(out, "predictions/**/*.png") == run_files(uninterrupted, "predictions/**/*.png")


def test_contmm_plot_writes_the_generation_grid_beside_the_figure(tmp_path, uninterrupted, capsys):
    main(["plot", str(uninterrupted), "-o", str(tmp_path / "plot.png")])
    grid = tmp_path / "plot_run_generations.png"
    assert f"wrote {grid}" in capsys.readouterr().out
    assert grid.read_bytes() == (uninterrupted / "generations.png").read_bytes()


def test_projector_pairs_resume_to_the_uninterrupted_matrix_and_routes(tmp_path, monkeypatch):
    pairs = [
        "--strategies",
        "[{class_path: strategies.projector_expansion.ProjectorExpansion, init_args: {image_weight: 0.0}}]",
    ]
    expected = fit(tmp_path / "uninterrupted", *pairs)
    with monkeypatch.context() as patch:
        crash_in_training(patch, task_id=2)
        with pytest.raises(RuntimeError, match="injected crash"):
            fit(tmp_path / "run", *pairs)
    resumed = fit(tmp_path / "run", *pairs)
    assert resumed["matrix"] == expected["matrix"]
    assert resumed["strategy_reports"] == expected["strategy_reports"]
    routed = expected["strategy_reports"][-1]["ProjectorExpansion"]["routing_accuracy"]
    assert set(routed) == {"draw_colour", "colour", "draw_position"}
