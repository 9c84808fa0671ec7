"""Building a LLaVA stream of CoIN's size: seconds from the files to a checked stream.

Writes ``--records`` records (CoIN has about 570 K) over ``--tasks`` tasks, 95% training
conversations (JSON lists) and 5% CoIN test questions (JSON lines), naming ``--images``
distinct image files (small JPEGs), to a temporary folder; then times ``LLaVAStream(...)``
three times: the first build parses and checks every record and image (nothing cached); the
second finds the images checked but not the files read (the stream cache emptied: what
every rank paid before the stream cache, ``streams/stream_cache.py``); the third finds both
(what DDP ranks 1..N-1, the next run and a resume pay). The data files are left
:data:`~streams.stream_cache.RACY_NS` to age before the first build, as data files are
(one changed in that time is also hashed when its cache entry is loaded).

Run: ``OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python bench/stream_build.py [--records 570000]
[--images 20000] [--check_images decode]`` (one torch thread, as in docs/studies/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from streams.llava import LLaVAStream, TaskFiles
from streams.stream_cache import RACY_NS


def write_images(folder: Path, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    names = []
    for i in range(count):
        name = f"images/{i % 100}/{i}.jpg"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


def write_task(folder: Path, task: int, records: int, images: list[str]) -> TaskFiles:
    tests = max(1, records // 20)
    train = [
        {
            "id": f"t{task}_{i}",
            "image": images[(task * 7919 + i) % len(images)],
            "conversations": [
                {"from": "human", "value": f"<image>\nWhat is shown in picture {i}? Answer briefly."},
                {"from": "gpt", "value": f"object {i % 97}"},
            ],
        }
        for i in range(records - tests)
    ]
    (folder / f"task{task}_train.json").write_text(json.dumps(train))
    with (folder / f"task{task}_test.jsonl").open("w") as f:
        for i in range(tests):
            record = {
                "question_id": i,
                "image": images[(task * 104729 + i) % len(images)],
                "text": f"What is shown in picture {i}?",
                "answer": [f"object {i % 97}"],
            }
            f.write(json.dumps(record) + "\n")
    return TaskFiles(
        name=f"task{task}",
        train=str(folder / f"task{task}_train.json"),
        test=str(folder / f"task{task}_test.jsonl"),
        scorer="vqa_accuracy",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=570_000)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--check_images", default="decode", help="LLaVAStream's check_images")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root, tempfile.TemporaryDirectory() as cache:
        os.environ["CONTMM_CACHE"] = cache  # empty: the first build checks every file and image
        folder = Path(root)
        start = time.perf_counter()
        images = write_images(folder, args.images)
        tasks = [write_task(folder, t, args.records // args.tasks, images) for t in range(args.tasks)]
        print(
            f"wrote {args.records} records naming {args.images} images in {time.perf_counter() - start:.1f} s"
        )
        time.sleep(RACY_NS / 1e9)
        builds = ("first build (nothing cached)", "images cached, files parsed", "images and files cached")
        for build in builds:
            if build == builds[1]:
                shutil.rmtree(Path(cache) / "streams")
            start = time.perf_counter()
            stream = LLaVAStream(tasks=tasks, image_root=root, check_images=args.check_images)
            seconds = time.perf_counter() - start
            samples = sum(len(task.train) + len(task.test) for task in stream.tasks)
            print(f"{build}: {samples} samples in {seconds:.1f} s ({samples / seconds:,.0f} records/s)")


if __name__ == "__main__":
    main()
