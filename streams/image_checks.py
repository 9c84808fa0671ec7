"""The check of the images a stream names: done once per image file, not once per run or rank.

Each image is checked in parallel (a thread per core: Pillow releases the GIL while it
decodes) and the outcome kept in a cache file, keyed by the image's path, size and
modification time: a later build of a stream over the same images (the other DDP ranks,
which Lightning's launcher starts after rank 0 has built its stream; the next run) checks
only images that are new or changed. The cache lives in ``$CONTMM_CACHE`` (default
``~/.cache/contmm``) and is written once per stream build, at its end (``save``), if any
image was checked, also when a file's error stops the build: the checks done are kept. A
cache that cannot be read or written is skipped with a warning.

``decode`` checks what training does: the whole image decoded and converted to RGB, after
Pillow's ``verify()`` (which reads PNG checksums that a decoder may skip). ``header`` reads
only the header and runs ``verify()``: for image sets too large to decode up front (a
JPEG's pixel data is then first read in training, where a corrupt one stops the stage and
``contmm fit`` resumes after it is fixed).
"""

from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from PIL import Image

from contmm.environment import usable_cores
from contmm.images import open_rgb
from contmm.results import atomic_write

ImageCheck = Literal["decode", "header"]


def cache_dir() -> Path:
    return Path(os.environ.get("CONTMM_CACHE", "~/.cache/contmm")).expanduser()


def image_problem(path: Path, check: ImageCheck = "decode") -> str | None:
    """Why the image at ``path`` cannot be used, or None."""
    try:
        with Image.open(path) as image:
            image.verify()
        if check == "decode":
            open_rgb(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return f"{path} is not a readable image ({error})"
    return None


class ImageChecks:
    """``problems``: each image checked so far → why it cannot be used, or None. ``save()``
    keeps the new checks in the cache."""

    def __init__(self, check: ImageCheck) -> None:
        self.check = check
        self.problems: dict[Path, str | None] = {}
        self.cache_file = cache_dir() / f"image_checks_{check}.json"  # one per kind of check
        self.cached = self._read_cache()  # {path: [size, mtime_ns, problem]}
        self.unsaved = False  # images checked since the cache was read or saved

    def run(self, paths: list[Path]) -> None:
        """Check every image of ``paths`` not checked yet (or found in the cache unchanged)."""
        todo = []
        for path in dict.fromkeys(p for p in paths if p not in self.problems):
            stat = path.stat()
            key = [stat.st_size, stat.st_mtime_ns]
            hit = self.cached.get(str(path))
            if hit is not None and hit[:2] == key:
                self.problems[path] = hit[2]
            else:
                todo.append((path, key))
        if not todo:
            return
        with ThreadPoolExecutor(usable_cores()) as pool:
            found = pool.map(image_problem, [path for path, _ in todo], [self.check] * len(todo))
            for (path, key), problem in zip(todo, found):
                self.problems[path] = problem
                self.cached[str(path)] = [*key, problem]
                self.unsaved = True

    def save(self) -> None:
        """Write the cache if an image was checked since it was read (or last saved)."""
        if self.unsaved:
            self._write_cache()
            self.unsaved = False

    def _read_cache(self) -> dict:
        if not self.cache_file.is_file():
            return {}
        try:
            cached = json.loads(self.cache_file.read_text())
            return cached if isinstance(cached, dict) else {}
        except (OSError, ValueError) as error:
            warnings.warn(
                f"image check cache {self.cache_file} unreadable, checking anew: {error}", stacklevel=2
            )
            return {}

    def _write_cache(self) -> None:
        try:
            atomic_write(self.cache_file, json.dumps(self.cached))
        except OSError as error:
            warnings.warn(f"image check cache {self.cache_file} not written: {error}", stacklevel=2)
