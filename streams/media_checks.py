"""The check of the media files a stream names (images, videos, sounds): done once per file,
not once per run or rank.

Each file is checked in parallel (a thread per core: Pillow, PyAV and soundfile release the
GIL while they decode) and the outcome kept in a cache file, keyed by the file's path and
stamp: a later build of a stream over the same files (the other DDP ranks, which Lightning's
launcher starts after rank 0 has built its stream; the next run) checks only files that are
new or changed. The cache lives in ``$CONTMM_CACHE`` (default ``~/.cache/contmm``) and is
written once per stream build, at its end (``save``), if any file was checked, also when a
file's error stops the build: the checks done are kept. Builds that save at once (runs
started together) take turns (``flock``) and each adds its checks to what the file holds
then, so none is lost. A cache that cannot be read or written is skipped with a warning.

A file's stamp says which version of it was read; it is also what the run's fingerprint
records (``contmm/rundir/fingerprint.py``), so a resume on a changed file is refused. ``stat``
stamps a file by its size, modification time (ns) and inode: a file replaced (``mv``,
``cp``, an editor's save) changes one of them. ``content`` stamps it by its size and a hash
of its bytes, for file systems that keep no modification times; it reads every file at
every build. A directory of video frames is stamped by its frames' names and stamps.

``decode`` checks what training does: an image decoded in full and converted to RGB, after
Pillow's ``verify()`` (which reads PNG checksums that a decoder may skip); a video's every
frame decoded, as many as its header counts (fewer is a truncated file); a sound's every
sample. ``header`` reads only the headers (an image's ``verify()``, a video's frame count, a
sound's length): for sets too large to decode up front (a file's data is then first read in
training, where a corrupt one stops the stage and ``contmm fit`` resumes after it is fixed).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import soundfile
from PIL import Image

from contmm.model.images import open_rgb
from contmm.model.media import AUDIO_FILES, VIDEO_FILES, clip_metadata, decode_clip, frame_files
from contmm.rundir.directory import atomic_write
from contmm.training.environment import usable_cores

ImageCheck = Literal["decode", "header"]
# libsndfile's log line for a data chunk that the file does not hold in full.
TRUNCATED = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
ImageChanges = Literal["stat", "content"]


def cache_dir() -> Path:
    return Path(os.environ.get("CONTMM_CACHE", "~/.cache/contmm")).expanduser()


def media_kind(path: Path) -> str:
    """``video`` (a video file or a directory of frames), ``audio`` or ``image``, by the path."""
    if path.is_dir() or path.suffix.lower() in VIDEO_FILES:
        return "video"
    return "audio" if path.suffix.lower() in AUDIO_FILES else "image"


def media_problem(path: Path, check: ImageCheck = "decode") -> str | None:
    """Why the media file at ``path`` cannot be used, or None."""
    return {"image": image_problem, "video": video_problem, "audio": audio_problem}[media_kind(path)](
        path, check
    )


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


def video_problem(path: Path, check: ImageCheck = "decode") -> str | None:
    """Why the clip at ``path`` cannot be used, or None: unreadable, without frames, or
    decoding to fewer frames than its header counts (a truncated file)."""
    if path.is_dir():
        frames = frame_files(path)
        if not frames:
            return f"{path} is a directory of frames without frames (png, jpg, ...)"
        if problem := next((p for frame in frames if (p := image_problem(frame, check))), None):
            return problem
        if len(sizes := {image_size(frame) for frame in frames}) > 1:
            return f"{path}: its frames differ in size ({sorted(sizes)[:3]})"
        return None
    try:
        expected = clip_metadata(path).total_num_frames
        if expected == 0:
            return f"{path} is an empty video (no frames)"
        if check == "decode" and (decoded := len(decode_clip(path))) != expected:
            return f"{path} is truncated: {decoded} of its {expected} frames decode"
    except (OSError, ValueError) as error:
        return f"{path} is not a readable video ({error})"
    return None


def image_size(path: Path) -> tuple[int, int]:
    """The (width, height) of an image that passed its check."""
    with Image.open(path) as image:
        return image.size


def audio_problem(path: Path, check: ImageCheck = "decode") -> str | None:
    """Why the sound at ``path`` cannot be used, or None: unreadable, without samples, or
    truncated (libsndfile reads a cut WAV or AIFF as a shorter sound, and says in its log that
    the header's data size is larger than the file holds)."""
    try:
        with soundfile.SoundFile(path) as sound:
            if cut := TRUNCATED.search(sound.extra_info):
                declared, held = map(int, cut.groups())
                if declared > held:
                    return f"{path} is truncated: its header counts {declared} bytes of sound, the file holds {held}"
            if sound.frames == 0 or (check == "decode" and len(sound.read(dtype="float32")) == 0):
                return f"{path} is an empty sound (no samples)"
    except (OSError, RuntimeError, ValueError) as error:  # soundfile's LibsndfileError is a RuntimeError
        return f"{path} is not a readable sound ({error})"
    return None


def stat_stamp(path: Path) -> list:
    if path.is_dir():  # a directory of frames: each frame's stamp
        return [[frame.name, *stat_stamp(frame)] for frame in frame_files(path)]
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def content_stamp(path: Path) -> list:
    if path.is_dir():
        return [[frame.name, *content_stamp(frame)] for frame in frame_files(path)]
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, lambda: hashlib.blake2b(digest_size=16))
        return [os.fstat(file.fileno()).st_size, digest.hexdigest()]


class MediaChecks:
    """``problems``: each file checked so far → why it cannot be used, or None; ``stamps``:
    each → its stamp (a list, see the module's docstring). ``save()`` keeps the new checks in
    the cache."""

    def __init__(self, check: ImageCheck, changes: ImageChanges = "stat") -> None:
        self.check, self.changes = check, changes
        self.problems: dict[Path, str | None] = {}
        self.stamps: dict[Path, list] = {}
        # One file per kind of check and of stamp: their entries never match each other's.
        suffix = "" if changes == "stat" else f"_{changes}"
        self.cache_file = cache_dir() / f"media_checks_{check}{suffix}.json"
        self.cached = self._read_cache()  # {path: [*stamp, problem]}
        self.checked: dict[str, list] = {}  # the entries of the files checked since the last save

    def run(self, paths: list[Path]) -> None:
        """Stamp and check every file of ``paths`` not checked yet (or found in the cache unchanged)."""
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
            found = pool.map(media_problem, [path for path, _ in todo], [self.check] * len(todo))
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
        """Write the cache if a file was checked since it was read (or last saved)."""
        if self.checked:
            self._write_cache()
            self.checked = {}

    def _read_cache(self) -> dict:
        try:
            return self._cache_content()
        except (OSError, ValueError) as error:
            warnings.warn(
                f"media check cache {self.cache_file} unreadable, checking anew: {error}", stacklevel=2
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
            warnings.warn(f"media check cache {self.cache_file} not written: {error}", stacklevel=2)

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
