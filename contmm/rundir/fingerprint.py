"""What a run's results depend on beyond its config: the stream's data as built, its image
files, and the tokenizer. A data file edited or an image replaced between a kill and a rerun
(same path, so the same config) would otherwise resume with other samples or pixels, or
another word-level vocabulary under the weights trained on the old one.

Each task split (and the pre-training data) is summarised by a hash of its samples' ids,
questions, answers and follow-up turns, the tokenizer by a hash of its vocabulary. A split
whose dataset has ``image_stamps()`` (the LLaVA stream's: each image file it reads → its
size, modification time and inode, or a hash of its content; ``streams/media_checks.py``)
is also summarised by a hash of those, under ``"images"``: a checkpoint holds one hash per
split, not one entry per image (a CoIN run reads 570 k). To name the image that changed, a
run keeps every image's stamp once, in ``inputs/images.json`` of its run directory
(``record_images``), read only when a split's hash differs. A stream that renders its
images (the synthetic one) has no image files and no ``"images"``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from contmm.stream import TaskStream

if TYPE_CHECKING:
    from contmm.rundir.checkpoint import Checkpoint
    from contmm.rundir.directory import RunDirectory

IMAGES = "images"  # the inputs' key of the splits' image hashes
IMAGE_STAMPS = "inputs/images.json"  # in the run directory: every image's stamp


def _digest(items) -> str:
    sha = hashlib.sha256()
    for item in items:
        sha.update(json.dumps(item, sort_keys=True, default=str).encode())
    return sha.hexdigest()


def _samples(split) -> list[dict]:
    text = split.text if hasattr(split, "text") else split.__getitem__
    fields = ("id", "question", "answer", "followups")
    # A generation sample's caption (what its conditioning is aligned to) counts too; samples
    # without one hash as they always did, so earlier runs still resume.
    return [
        {k: sample.get(k) for k in fields} | ({"caption": sample["caption"]} if "caption" in sample else {})
        for sample in (text(i) for i in range(len(split)))
    ]


def _splits(stream: TaskStream) -> dict:
    """``{"<task> train": dataset, "<task> test": dataset, ...}``, pre-training's included."""
    tasks = [*stream.tasks, *([stream.pretrain_task] if stream.pretrain_task else [])]
    return {f"{task.name} {split}": getattr(task, split) for task in tasks for split in ("train", "test")}


def _image_stamps(stream: TaskStream) -> dict[str, dict[str, list]]:
    """Each split with image files → its images' stamps."""
    splits = {name: split for name, split in _splits(stream).items() if hasattr(split, "image_stamps")}
    # Once per dataset: pre-training's test split is its training split (LLaVA's: 558 k images).
    stamps = {id(split): split.image_stamps() for split in splits.values()}
    return {name: stamps[id(split)] for name, split in splits.items()}


def run_inputs(stream: TaskStream, tokenizer) -> dict:
    """``{"<task> train": hash, "<task> test": hash, ..., "tokenizer": hash}``, and
    ``"images": {"<task> train": hash, ...}`` for the splits that read image files."""
    inputs = {name: _digest(_samples(split)) for name, split in _splits(stream).items()}
    inputs["tokenizer"] = _digest(sorted(tokenizer.get_vocab().items()))
    if images := _image_stamps(stream):
        # One dump of a split's stamps, not one per image: a second for 570 k, not several.
        digests = {
            id(stamps): hashlib.sha256(json.dumps(stamps).encode()).hexdigest() for stamps in images.values()
        }
        inputs[IMAGES] = {name: digests[id(stamps)] for name, stamps in images.items()}
    return inputs


def record_images(run: RunDirectory, stream: TaskStream, checkpoint: Checkpoint | None) -> None:
    """Keep every image's stamp in ``run`` (rank 0), to name a changed one when a resume
    finds a split's image hash changed: when the run starts, and when it resumes from a
    checkpoint of a contmm that recorded no image hashes (from then on its checkpoints do)."""
    recorded = checkpoint is not None and IMAGES in checkpoint.state.get("inputs", {})
    if not recorded and (images := _image_stamps(stream)):
        stamps = {path: stamp for split in images.values() for path, stamp in split.items()}
        run.write_text(IMAGE_STAMPS, json.dumps(stamps))


def changed_input(
    saved: dict | None, current: dict, stream: TaskStream | None = None, run_dir: Path | None = None
) -> str | None:
    """The first input that differs from the run's, named for a message; None if none does
    (or the run recorded none). A changed image is named from ``run_dir``'s record of the
    images, given the ``stream``; without them, or the record, its split is."""
    if saved is None:
        return None
    for name in sorted((set(saved) | set(current)) - {IMAGES}):
        if saved.get(name) != current.get(name):
            return "the tokenizer's vocabulary" if name == "tokenizer" else f"the data of task split '{name}'"
    if IMAGES not in saved:  # a checkpoint of a contmm that did not hash images
        return None
    images = current.get(IMAGES, {})
    # In the stream's order, a task's training split first: where a changed image is first read.
    for name in dict.fromkeys([*saved[IMAGES], *images]):
        if saved[IMAGES].get(name) != images.get(name):
            image = (
                _changed_image(stream, name, run_dir) if stream is not None and run_dir is not None else None
            )
            return (
                f"the image {image} of task split '{name}'" if image else f"an image of task split '{name}'"
            )
    return None


def _changed_image(stream: TaskStream, split: str, run_dir: Path) -> str | None:
    """The first image of ``split`` whose stamp is not the one recorded in ``run_dir``; None
    if the record is gone or unreadable."""
    try:
        recorded = json.loads((run_dir / IMAGE_STAMPS).read_text())
    except (OSError, ValueError):
        return None
    stamps = _image_stamps(stream).get(split, {})
    return next((path for path, stamp in stamps.items() if recorded.get(path) != stamp), None)
