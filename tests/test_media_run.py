"""A whole checkpoint that reads sounds (Qwen2-Audio) and one that reads clips (Qwen2-VL) tuned
by `contmm fit` on LLaVA-style audio / video records: the exported directory, loaded by
transformers alone, answers as contmm predicted, and `contmm eval --run` reproduces the last
row of the matrix."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForMultimodalLM, AutoProcessor

from contmm.cli import main
from streams.llava import LLaVAStream, TaskFiles
from streams.synthetic import SyntheticShapes
from tests.checkpoints import fit_config, reference_answer, save_checkpoint
from tests.helpers import run_fit
from tests.llava_files import write_image, write_json
from tests.media_files import write_clip, write_tone

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("in_repo")]

TASKS = ["colour", "shape"]
MAX_NEW_TOKENS = 4
SUFFIXES = {"image": "png", "video": "mp4", "audio": "wav"}


def media_stream(root, modality: str) -> dict:
    """The synthetic stream's questions and answers as LLaVA records, each reading a clip or a
    sound of its own (written under ``root``): the stream section of a config. ``mixed``:
    images and clips in turn, in every task."""
    shapes = SyntheticShapes(tasks=TASKS, train_size=8, test_size=4)
    tasks = []
    for t, task in enumerate(shapes.tasks):
        files = {}
        for split in ("train", "test"):
            records = []
            for i in range(len(getattr(task, split))):
                sample = getattr(task, split).text(i)
                medium = modality if modality != "mixed" else ("image", "video")[i % 2]
                name = f"{task.name}/{split}{i}.{SUFFIXES[medium]}"
                if medium == "video":
                    write_clip(root / name, frames=4 + i % 3, seed=10 * t + i)
                elif medium == "image":
                    write_image(root / name, ("red", "blue")[i % 4 // 2])
                else:
                    write_tone(root / name, seconds=0.3 + 0.1 * (i % 3), hz=200 + 50 * i + 500 * t)
                question = sample["question"].replace("<image>", f"<{medium}>")
                turns = [{"from": "human", "value": question}, {"from": "gpt", "value": sample["answer"]}]
                records.append({"id": sample["id"], medium: name, "conversations": turns})
            files[split] = write_json(root / f"{task.name}_{split}.json", records)
        tasks.append({"name": task.name, **files})
    return {"class_path": "streams.llava.LLaVAStream", "init_args": {"tasks": tasks, "media_root": str(root)}}


def transformers_predictions(exported, stream: dict) -> dict[str, list[str]]:
    """Each task's greedy answers by transformers alone (the exported directory, its processor
    and its own generate), in id order as contmm writes its predictions."""
    model = AutoModelForMultimodalLM.from_pretrained(exported).eval()
    processor = AutoProcessor.from_pretrained(exported)
    args = stream["init_args"]
    tasks = LLaVAStream(tasks=[TaskFiles(**t) for t in args["tasks"]], media_root=args["media_root"]).tasks
    answers = {}
    for task in tasks:
        by_id = {str(s["id"]): s for s in (task.test[i] for i in range(len(task.test)))}
        answers[task.name] = [
            reference_answer(model, processor, by_id[key], MAX_NEW_TOKENS).strip() for key in sorted(by_id)
        ]
    return answers


def contmm_predictions(folder, task: str) -> list[str]:
    lines = (folder / f"{task}.jsonl").read_text().splitlines()
    return [json.loads(line)["prediction"] for line in lines]  # written sorted by id


@pytest.mark.parametrize(("kind", "modality"), [("qwen2_audio", "audio"), ("qwen2_vl", "video")])
def test_a_whole_checkpoint_tuned_on_media_records_exports_and_evaluates_as_it_predicted(
    tmp_path, kind, modality
):
    stream = media_stream(tmp_path / "media", modality)
    config = fit_config(
        save_checkpoint(kind, tmp_path / kind), tmp_path, stream=stream, optimizer={"lr": 5e-4},
        eval={"max_new_tokens": MAX_NEW_TOKENS},
    )  # fmt: skip
    run, exported = tmp_path / "fit", tmp_path / "export"
    main(["fit", "--config", config, "--output_dir", str(run)])
    main(["export", str(run), "-o", str(exported)])
    ours = {task: contmm_predictions(run / "predictions/stage_2", task) for task in TASKS}
    assert transformers_predictions(exported, stream) == ours
    assert all(any(answers) for answers in ours.values()), "answers of words: the comparison can fail"

    main(["eval", "--config", config, "--run", str(run), "--output_dir", str(tmp_path / "eval")])
    fit = json.loads((run / "results.json").read_text())
    assert (
        list(json.loads((tmp_path / "eval/results.json").read_text())["scores"].values()) == fit["matrix"][-1]
    )
    assert {task: contmm_predictions(tmp_path / "eval/predictions", task) for task in TASKS} == ours


def test_a_whole_checkpoint_with_two_towers_trains_them_under_two_process_ddp_on_images_and_clips(tmp_path):
    """Video-LLaVA with its image and video towers trained, every task mixing images and clips:
    a batch of one medium leaves the other's tower unreached, which DDP refuses without the
    zero gradients contmm gives it."""
    stream = media_stream(tmp_path / "media", "mixed")
    config = fit_config(
        save_checkpoint("video_llava", tmp_path / "video_llava"), tmp_path, stream=stream,
        model={"encoder": {"freeze": False}}, data={"batch_size": 1},
    )  # fmt: skip
    out = tmp_path / "run"
    done = run_fit(
        "--config", config, "--output_dir", str(out), "--trainer.devices", "2", "--trainer.strategy", "ddp"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["env"]["world_size"] == 2 and results["stages_completed"] == 2
    assert results["task_media"] == {task: ["image", "video"] for task in TASKS}
