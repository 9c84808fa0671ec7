"""LLaVA / CoIN files written for tests: images, training conversations, test records, and a
stream config with the arguments that run `contmm fit` on it."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230), "white": (245, 245, 245)}


def write_image(path: Path, colour: str = "red", size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), COLOURS[colour]).save(path)


def conversation(record_id, image: str, question: str, answer: str) -> dict:
    return {
        "id": record_id,
        "image": image,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
    }


def coin(question_id, image: str, text: str, answer) -> dict:
    return {"question_id": question_id, "image": image, "text": text, "answer": answer}


def write_json(path: Path, records, lines: bool = False) -> str:
    text = "".join(json.dumps(r) + "\n" for r in records) if lines else json.dumps(records, indent=1)
    path.write_text(text)
    return str(path)


def coin_files(root) -> list[dict]:
    """Two tasks' train and test files, images under root/cl_dataset."""
    for colour in COLOURS:
        write_image(root / "cl_dataset" / f"{colour}.png", colour, size=32)
    tasks = []
    for name, question in (("scienceqa", "what colour is it ?"), ("textvqa", "name the colour .")):
        train = [
            conversation(f"{name}-{i}", f"{c}.png", f"<image>\n{question}", c)
            for i, c in enumerate(list(COLOURS) * 4)
        ]
        test = [coin(f"{name}-q{i}", f"{c}.png", question, [c, c, c]) for i, c in enumerate(COLOURS)]
        folder = root / "playground" / name
        folder.mkdir(parents=True)
        tasks.append(
            {
                "name": name,
                "train": write_json(folder / "train.json", train),
                "test": write_json(folder / "test.json", test),
                "scorer": "vqa_accuracy",
            }
        )
    return tasks


def write_cli_stream(tmp_path: Path, bad_test: bool = False) -> Path:
    """Two colour tasks (16 train, 4 test each) over 32x32 images, and the YAML that names them."""
    images = tmp_path / "images"
    colours = list(COLOURS)
    for colour in colours:
        write_image(images / f"{colour}.png", colour, size=32)
    tasks = []
    for name, question in (("colour", "what colour is it ?"), ("hue", "name the hue .")):
        train = [
            conversation(f"{name}-{i}", f"{colours[i % 4]}.png", f"<image>\n{question}", colours[i % 4])
            for i in range(16)
        ]
        test = [coin(f"{name}-q{i}", f"{c}.png", question, [c, c]) for i, c in enumerate(colours)]
        if bad_test and name == "hue":
            test[2]["image"] = "../secret.png"
        tasks.append(
            {
                "name": name,
                "train": write_json(tmp_path / f"{name}_train.json", train),
                "test": write_json(tmp_path / f"{name}_test.jsonl", test, lines=True),
                "scorer": "vqa_accuracy",
            }
        )
    stream = {
        "class_path": "streams.llava.LLaVAStream",
        "init_args": {"tasks": tasks, "image_root": str(images)},
    }
    config = tmp_path / "stream.yaml"
    config.write_text(json.dumps({"stream": stream}))  # JSON is YAML
    return config


def cli_args(config: Path, out: Path) -> list[str]:
    return [
        "fit",
        "--config", "experiments/seq_vqa.yaml",
        "--config", str(config),
        "--pretrain.max_epochs", "0",
        "--trainer.max_epochs", "1",
        "--data.batch_size", "8",
        "--eval.batch_size", "4",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--output_dir", str(out),
    ]  # fmt: skip
