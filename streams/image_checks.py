"""The check of the images a stream names: done once per image file, not once per run or rank.

Each image is checked in parallel (a thread per core: Pillow releases the GIL while it
decodes) and the outcome kept in a cache file, keyed by the image's path and stamp: a later
build of a stream over the same images (the other DDP ranks, which Lightning's launcher
starts after rank 0 has built its stream; the next run) checks only images that are new or
changed. The cache lives in ``$CONTMM_CACHE`` (default ``~/.cache/contmm``) and is written
once per stream build, at its end (``save``), if any image was checked, also when a file's
error stops the build: the checks done are kept. Builds that save at once (runs started
together) take turns (``flock``) and each adds its checks to what the file holds then, so
none is lost. A cache that cannot be read or written is skipped with a warning.

An image's stamp says which version of it was read; it is also what the run's fingerprint
records (``contmm/rundir/fingerprint.py``), so a resume on a changed image is refused. ``stat``
stamps an image by its size, modification time (ns) and inode: a file replaced (``mv``,
``cp``, an editor's save) changes one of them. ``content`` stamps it by its size and a hash
of its bytes, for file systems that keep no modification times; it reads every image at
every build.

``decode`` checks what training does: the whole image decoded and converted to RGB, after
Pillow's ``verify()`` (which reads PNG checksums that a decoder may skip). ``header`` reads
only the header and runs ``verify()``: for image sets too large to decode up front (a
JPEG's pixel data is then first read in training, where a corrupt one stops the stage and
``contmm fit`` resumes after it is fixed).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from PIL import Image

from contmm.model.images import open_rgb
from contmm.rundir.directory import atomic_write
from contmm.training.environment import usable_cores

ImageCheck = Literal["decode", "header"]
ImageChanges = Literal["stat", "content"]


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


def stat_stamp(path: Path) -> list:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def content_stamp(path: Path) -> list:
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, lambda: hashlib.blake2b(digest_size=16))
        return [os.fstat(file.fileno()).st_size, digest.hexdigest()]


class ImageChecks:
    """``problems``: each image checked so far → why it cannot be used, or None; ``stamps``:
    each → its stamp (a list, see the module's docstring). ``save()`` keeps the new checks in
    the cache."""

    def __init__(self, check: ImageCheck, changes: ImageChanges = "stat") -> None:
        self.check, self.changes = check, changes
        self.problems: dict[Path, str | None] = {}
        self.stamps: dict[Path, list] = {}
        # One file per kind of check and of stamp: their entries never match each other's.
        suffix = "" if changes == "stat" else f"_{changes}"
        self.cache_file = cache_dir() / f"image_checks_{check}{suffix}.json"
        self.cached = self._read_cache()  # {path: [*stamp, problem]}
        self.checked: dict[str, list] = {}  # the entries of the images checked since the last save

    def run(self, paths: list[Path]) -> None:
        """Stamp and check every image of ``paths`` not checked yet (or found in the cache unchanged)."""
        new = [path for path in dict.fromkeys(paths) if path not in self.problems]
        todo = []
        for path, stamp in zip(new, self._stamp(new)):
            self.stamps[path] = stamp
            hit = self.cached.get(str(path))
            if hit is not None and hit[:-1] == stamp:
                self.problems[path] = hit[-1]
            else:
                todo.append((path, stamp))
        if not todo:
            return
        with ThreadPoolExecutor(usable_cores()) as pool:
            found = pool.map(image_problem, [path for path, _ in todo], [self.check] * len(todo))
            for (path, stamp), problem in zip(todo, found):
                self.problems[path] = problem
                self.cached[str(path)] = self.checked[str(path)] = [*stamp, problem]

    def _stamp(self, paths: list[Path]) -> list[list]:
        if self.changes == "content":
            with ThreadPoolExecutor(usable_cores()) as pool:  # hashlib too releases the GIL
                return list(pool.map(content_stamp, paths))
        # A stat is microseconds: threads would cost more than they save.
        return [stat_stamp(path) for path in paths]

    def save(self) -> None:
        """Write the cache if an image was checked since it was read (or last saved)."""
        if self.checked:
            self._write_cache()
            self.checked = {}

    def _read_cache(self) -> dict:
        try:
            return self._cache_content()
        except (OSError, ValueError) as error:
            warnings.warn(
                f"image check cache {self.cache_file} unreadable, checking anew: {error}", stacklevel=2
            )
            return {}

    def _cache_content(self) -> dict:
        """The cache file's entries, none if there is no file; raises if it cannot be read."""
        if not self.cache_file.is_file():
            return {}
        cached = json.loads(self.cache_file.read_text())
        return cached if isinstance(cached, dict) else {}

    def _write_cache(self) -> None:
        try:
            with self._turn():
                # Read again: a build that saved since this one read the cache added its checks.
                try:
                    kept = self._cache_content()
                except ValueError:  # garbage (warned of when read): replaced
                    kept = {}
                atomic_write(self.cache_file, json.dumps(kept | self.checked))
        except OSError as error:
            warnings.warn(f"image check cache {self.cache_file} not written: {error}", stacklevel=2)

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """This build's turn to read and replace the cache file: of two builds saving at once,
        the second reads what the first wrote. Where the file system has no ``flock`` the
        builds save unordered, and one may drop the other's checks (done again later)."""
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.cache_file.with_name(f"{self.cache_file.name}.lock"), "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
            except OSError:
                pass  # no locks here: save unordered, as the docstring says
            yield
