"""Text-to-image tasks from files: drawing records read and checked, drawings scored by CLIP
score (torchmetrics with the configured CLIP), and a run that draws them end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.multimodal import CLIPScore
from transformers import CLIPModel, CLIPProcessor

from contmm.cli import main
from contmm.scoring.images import ClipScore, check_scorer
from streams.llava import LLaVAStream, TaskFiles
from tests.generators import save_pixel_generator, save_tiny_clip
from tests.helpers import fit_error
from tests.llava_files import COLOURS, write_image, write_json


def drawing(record_id, image: str, instruction: str, caption: str | None = None) -> dict:
    record = {"id": record_id, "instruction": instruction, "image": image}
    if caption is not None:
        record["caption"] = caption
    return record


@pytest.fixture
def root(tmp_path) -> Path:
    images = tmp_path / "images"
    for colour in COLOURS:
        write_image(images / f"{colour}.png", colour, size=16)
    return images


def drawing_stream(tmp_path: Path, root: Path, train: list[dict], test: list[dict], **kwargs) -> LLaVAStream:
    task = TaskFiles(
        name="draw",
        train=write_json(tmp_path / "draw_train.json", train),
        test=write_json(tmp_path / "draw_test.jsonl", test, lines=True),
        scorer="clip_score",
    )
    return LLaVAStream(tasks=[task], image_root=str(root), **kwargs)


def test_drawing_records_give_the_instruction_the_target_image_and_the_caption(tmp_path, root):
    stream = drawing_stream(
        tmp_path,
        root,
        train=[
            drawing("d0", "red.png", "draw a red shape .", "a red shape"),
            drawing("d1", "blue.png", "a blue shape"),
        ],
        test=[drawing("q0", "green.png", "paint something green .", "a green shape")],
    )
    task = stream.tasks[0]
    first, second = task.train[0], task.train[1]
    assert (first["question"], first["caption"], first["answer"]) == (
        "draw a red shape .",
        "a red shape",
        "a red shape",
    )
    assert "image" not in first and np.asarray(first["target"])[0, 0].tolist() == list(COLOURS["red"])
    # Without a caption the instruction is what the generator reads and the drawing is scored against.
    assert second["caption"] == second["answer"] == "a blue shape"
    assert task.test[0]["answer"] == "a green shape" and task.scorer == "clip_score"


@pytest.mark.parametrize(
    "record, problem",
    [
        ({"id": "d0", "image": "red.png"}, "missing field 'instruction'"),
        ({"id": "d0", "instruction": " ", "image": "red.png"}, "field 'instruction' is empty"),
        ({"id": "d0", "instruction": "<image> draw it", "image": "red.png"}, "<image> in an instruction"),
        ({"id": "d0", "instruction": "draw", "caption": "", "image": "red.png"}, "field 'caption' is empty"),
        ({"id": "d0", "instruction": "draw", "image": "none.png"}, "no image file"),
        ({"instruction": "draw", "image": "red.png"}, "missing field 'id'"),
    ],
)
def test_a_bad_drawing_record_is_named(tmp_path, root, record, problem):
    with pytest.raises(ValueError) as error:
        drawing_stream(tmp_path, root, train=[record], test=[drawing("q0", "red.png", "draw")])
    message = str(error.value)
    assert "task 'draw' train file" in message and "record 0" in message and problem in message


def test_pretrain_drawings_join_the_pretraining_conversations(tmp_path, root):
    pretrain = write_json(
        tmp_path / "pretrain.json",
        [
            {
                "id": "p0",
                "image": "red.png",
                "conversations": [
                    {"from": "human", "value": "<image>\ndescribe ."},
                    {"from": "gpt", "value": "red"},
                ],
            }
        ],
    )
    drawings = write_json(tmp_path / "drawings.json", [drawing("p1", "blue.png", "draw a blue shape .")])
    test = [drawing("q0", "red.png", "draw")]
    stream = drawing_stream(tmp_path, root, test, test, pretrain=pretrain, pretrain_drawings=drawings)
    samples = [stream.pretrain_task.train[i] for i in range(2)]
    assert (
        "image" in samples[0]
        and samples[1]["target"] is not None
        and samples[1]["caption"] == "draw a blue shape ."
    )
    with pytest.raises(ValueError, match="pretrain_drawings is set without pretrain"):
        drawing_stream(tmp_path, root, test, test, pretrain_drawings=drawings)


def test_an_unknown_scorer_lists_text_and_image_scorers():
    with pytest.raises(ValueError) as error:
        check_scorer("fid")
    assert (
        "'fid'" in str(error.value) and "exact_match" in str(error.value) and "clip_score" in str(error.value)
    )


def test_clip_score_is_torchmetrics_clip_score_on_the_configured_model_per_image(tmp_path):
    path = save_tiny_clip(tmp_path / "clip")
    scorer = ClipScore(str(path))
    images = [Image.new("RGB", (16, 16), COLOURS[c]) for c in ("red", "blue")]
    captions = ["a red shape", "a blue circle in the top left"]
    ours = [scorer(image, caption) for image, caption in zip(images, captions)]

    model, processor = CLIPModel.from_pretrained(path), CLIPProcessor.from_pretrained(path)
    for image, caption, score in zip(images, captions, ours):
        # torchmetrics' metric class on the same (loaded) model: our per-image score is its value.
        metric = CLIPScore(model_name_or_path=lambda: (scorer.model, scorer.processor))
        metric.update(torch.from_numpy(np.array(image)).permute(2, 0, 1), caption)
        assert score == pytest.approx(float(metric.compute()) / 100, abs=1e-6)
        # And by transformers alone: the cosine of CLIP's projected image and text features, floored at 0.
        inputs = processor(text=[caption], images=[image], return_tensors="pt", padding=True)
        with torch.no_grad():
            cosine = torch.cosine_similarity(
                model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output,
                model.get_text_features(
                    input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
                ).pooler_output,
            )
        assert score == pytest.approx(max(float(cosine), 0.0), abs=1e-5)
    assert ours[0] != ours[1]


def test_a_clip_model_that_cannot_be_loaded_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"eval.clip_model .*nowhere"):
        ClipScore(str(tmp_path / "nowhere"))


# ----------------------------------------------------------------------------- through the CLI


def write_drawing_config(tmp_path: Path, root: Path, clip: bool = True) -> Path:
    """A one-task text-to-image stream (8 train, 2 test drawings), the tiny assembled model with
    a pixel generator, and CLIP score from a tiny CLIP."""
    colours = list(COLOURS)
    train = [
        drawing(
            f"d{i}", f"{colours[i % 4]}.png", f"draw a {colours[i % 4]} shape .", f"a {colours[i % 4]} shape"
        )
        for i in range(8)
    ]
    test = [
        drawing(f"q{i}", f"{c}.png", f"paint something {c} .", f"a {c} shape")
        for i, c in enumerate(colours[:2])
    ]
    config = {
        "stream": {
            "class_path": "streams.llava.LLaVAStream",
            "init_args": {
                "tasks": [
                    {
                        "name": "draw",
                        "train": write_json(tmp_path / "train.json", train),
                        "test": write_json(tmp_path / "test.json", test),
                        "scorer": "clip_score",
                    }
                ],
                "image_root": str(root),
            },
        },
        "model": {
            "output_projector": {"kind": "transformer", "num_signal_tokens": 2},
            "generator": {
                "pretrained": str(save_pixel_generator(tmp_path / "generator")),
                "num_inference_steps": 2,
            },
        },
        "eval": {"clip_model": str(save_tiny_clip(tmp_path / "clip")) if clip else None},
    }
    path = tmp_path / "drawing.yaml"
    path.write_text(json.dumps(config))
    return path


def drawing_args(config: Path, out: Path) -> list[str]:
    return [
        "--config", "experiments/seq_vqa.yaml",
        "--config", str(config),
        "--pretrain.max_epochs", "0",
        "--trainer.max_epochs", "4",
        "--data.batch_size", "4",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--output_dir", str(out),
    ]  # fmt: skip


@pytest.mark.usefixtures("in_repo")
def test_a_text_to_image_task_from_files_is_drawn_and_scored_by_clip_score(tmp_path, root):
    out = tmp_path / "run"
    main(["fit", *drawing_args(write_drawing_config(tmp_path, root), out)])

    records = [json.loads(line) for line in (out / "predictions/stage_1/draw.jsonl").open()]
    assert [r["id"] for r in records] == ["q0", "q1"]
    assert any(record["image"] for record in records)  # tuned for a few epochs, it draws
    scorer = ClipScore(str(tmp_path / "clip"))
    for record in records:
        if record["image"] is None:  # the model wrote no signal token: nothing drawn, score 0
            assert record["score"] == 0
            continue
        drawn = Image.open(out / "predictions/stage_1" / record["image"])
        assert record["score"] == pytest.approx(scorer(drawn, record["answer"]), abs=1e-6)
    results = json.loads((out / "results.json").read_text())
    assert results["matrix"][1][0] == pytest.approx(np.mean([r["score"] for r in records]))


@pytest.mark.usefixtures("in_repo")
def test_a_clip_score_task_without_eval_clip_model_stops_before_training(tmp_path, root, capsys):
    out = tmp_path / "run"
    message = fit_error(capsys, *drawing_args(write_drawing_config(tmp_path, root, clip=False), out))
    assert "['draw'] are scored by clip_score: set eval.clip_model" in message
    assert not (out / "checkpoints").exists()


@pytest.mark.usefixtures("in_repo")
def test_a_drawing_task_for_a_model_without_a_generator_stops_before_training(tmp_path, root, capsys):
    config = json.loads(write_drawing_config(tmp_path, root).read_text())
    del config["model"]
    (tmp_path / "drawing.yaml").write_text(json.dumps(config))
    message = fit_error(capsys, *drawing_args(tmp_path / "drawing.yaml", tmp_path / "run"))
    assert "['draw'] ask for images but the model generates none" in message
