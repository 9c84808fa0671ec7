"""What a run's results depend on beyond its config: the stream's data as built, and the
tokenizer. A data file edited between a kill and a rerun (same path, so the same config)
would otherwise resume with other samples, or another word-level vocabulary under the
weights trained on the old one.

Each task split (and the pre-training data) is summarised by a hash of its samples' ids,
questions, answers and follow-up turns, the tokenizer by a hash of its vocabulary. Images
are not read for this (the stream checks them when it is built).
"""

from __future__ import annotations

import hashlib
import json

from contmm.stream import TaskStream


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


def run_inputs(stream: TaskStream, tokenizer) -> dict[str, str]:
    """``{"<task> train": hash, "<task> test": hash, ..., "tokenizer": hash}``."""
    tasks = [*stream.tasks, *([stream.pretrain_task] if stream.pretrain_task else [])]
    inputs = {
        f"{task.name} {split}": _digest(_samples(getattr(task, split)))
        for task in tasks
        for split in ("train", "test")
    }
    inputs["tokenizer"] = _digest(sorted(tokenizer.get_vocab().items()))
    return inputs


def changed_input(saved: dict[str, str] | None, current: dict[str, str]) -> str | None:
    """The first input that differs from the run's, named for a message; None if none does
    (or the run recorded none)."""
    if saved is None:
        return None
    for name in sorted(set(saved) | set(current)):
        if saved.get(name) != current.get(name):
            return "the tokenizer's vocabulary" if name == "tokenizer" else f"the data of task split '{name}'"
    return None
