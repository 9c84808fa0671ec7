"""The LLaVA stream's image check: images decoded per second, one after another and as the
stream does it (a thread per core).

Writes ``--images`` generated images (PNG and JPEG, half each) of ``--size`` pixels to a
temporary folder, then times both sides, alternating over ``--rounds`` (best of each).

Run: ``python bench/image_check.py [--images 2000] [--size 64]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from streams.media_checks import MediaChecks, image_problem


def write_images(folder: Path, count: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        # A smooth gradient plus a little noise: compresses like a photo, not like a flat colour.
        y, x = np.mgrid[0:size, 0:size] * (255 / size)
        pixels = np.stack([x, y, 255 - x], -1) + rng.normal(0, 8, (size, size, 3)) + i % 50
        pixels = np.clip(pixels, 0, 255).astype(np.uint8)
        path = folder / f"{i}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def uncached_checks(folder: str) -> MediaChecks:
    """The stream's checks with an empty cache (a fresh folder in ``folder``), so every image
    is decoded."""
    os.environ["CONTMM_CACHE"] = tempfile.mkdtemp(dir=folder)
    return MediaChecks("decode")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = write_images(Path(folder), args.images, args.size)
        sides = {
            "one after another": lambda: [image_problem(path) for path in paths],
            "stream (threads)": lambda: uncached_checks(folder).run(paths),
        }
        best = dict.fromkeys(sides, float("inf"))
        for _ in range(args.rounds):
            for name, run in sides.items():
                start = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - start)
    for name, seconds in best.items():
        rate = args.images / seconds
        print(f"{name}: {rate:.0f} images/s ({100_000 / rate:.0f} s for 100 k)")


if __name__ == "__main__":
    main()
