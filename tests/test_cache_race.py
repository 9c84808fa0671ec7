"""Runs started at once on the same data with an empty ``$CONTMM_CACHE`` (a sweep submitted
together, the ranks of two jobs): every builder of the stream succeeds, and the cache they
leave between them is whole and serves the next build, also when they read partly different
data (each one's image checks are kept)."""

from __future__ import annotations

import multiprocessing
import traceback
import warnings
from pathlib import Path

import pytest
from PIL import Image

import streams.llava
from streams.llava import LLaVAStream, TaskFiles
from tests.llava_files import COLOURS, coin, conversation, write_image, write_json

IMAGES = 48  # enough that the builders' checks and writes overlap


def write_stream_files(folder: Path) -> list[TaskFiles]:
    """Three tasks over ``IMAGES`` images each, each image named by a training and a test record."""
    colours = list(COLOURS)
    tasks = []
    for task in ("vqa", "ocr", "ground"):
        names = [f"{task}/{i % 4}/{i}.png" for i in range(IMAGES)]
        for i, name in enumerate(names):
            write_image(folder / "images" / name, colours[i % 4], size=16 + i % 5)
        train = [
            conversation(f"{task}{i}", name, "<image>\nwhat colour ?", colours[i % 4])
            for i, name in enumerate(names)
        ]
        test = [coin(i, name, "what colour ?", colours[i % 4]) for i, name in enumerate(names)]
        train_file = write_json(folder / f"{task}_train.json", train)
        test_file = write_json(folder / f"{task}_test.jsonl", test, lines=True)
        tasks.append(TaskFiles(task, train_file, test_file, "vqa_accuracy"))
    return tasks


def build(tasks: list[TaskFiles], root: Path) -> dict:
    """What the stream built over ``tasks`` gives, by task: each split's samples and texts."""
    stream = LLaVAStream(tasks=tasks, image_root=str(root))
    return {
        task.name: [
            (split.samples, [split.text(i) for i in range(len(split))]) for split in (task.train, task.test)
        ]
        for task in stream.tasks
    }


def builder(tasks, root, start, outcomes) -> None:
    """One run's stream build, begun when every builder is ready; reports what it built, or
    its error, and every warning (an unreadable or unwritable cache is one)."""
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        start.wait()
        try:
            outcome = build(tasks, root)
        except Exception:  # noqa: BLE001 - reported to the test, which fails on it
            outcome = traceback.format_exc()
    outcomes.put((outcome, [str(warning.message) for warning in warned]))


@pytest.mark.parametrize(
    "reads",
    [(slice(0, 3), slice(0, 3)), (slice(0, 2), slice(1, 3))],
    ids=["the same tasks", "one task in common"],
)
def test_builders_started_at_once_on_an_empty_cache_all_succeed_and_leave_a_cache_that_serves(
    tmp_path, image_check_cache, monkeypatch, reads
):
    tasks, root = write_stream_files(tmp_path), tmp_path / "images"
    # Forked, not spawned: the builders start in milliseconds, with the modules imported here.
    context = multiprocessing.get_context("fork")
    start, outcomes = context.Barrier(len(reads)), context.Queue()
    processes = [context.Process(target=builder, args=(tasks[read], root, start, outcomes)) for read in reads]
    for process in processes:
        process.start()
    results = [outcomes.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    for outcome, warned in results:
        assert not isinstance(outcome, str), outcome
        assert warned == []
    assert [process.exitcode for process in processes] == [0] * len(reads)
    assert not list(image_check_cache.rglob(".*.tmp"))  # no write left half done

    parsed, opened = [], []
    parse, open_image = streams.llava._parse_records, Image.open
    monkeypatch.setattr(
        streams.llava, "_parse_records", lambda text, label: parsed.append(label) or parse(text, label)
    )
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(path) or open_image(path, *a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unreadable cache entry or check cache would warn
        third = build(tasks, root)  # every task: what each builder read, and checked
    assert parsed == [] and opened == []  # every file and image served from the cache
    assert all(third[name] == split for outcome, _ in results for name, split in outcome.items())
