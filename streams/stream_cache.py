"""The parsed stream, kept: each data file read and checked once per file version, not once per run or rank.

Once a stream has read and checked a data file, what it made of it (its samples, and the
image paths its records' names resolved to) is kept in ``$CONTMM_CACHE/streams/`` (see
``streams/media_checks.py``), so a later build over the same file (the other DDP ranks,
which Lightning's launcher starts after rank 0 has built its stream; the next run; a
resume) loads it instead of parsing and checking every record again. A file with a bad
record is never kept: its error comes from reading it.

An entry is named by what decides how a file is read: its resolved path and the reader's
settings (``settings``, from ``streams/llava.py``). It serves a build only if the file is
still the one it was made from (size, modification and change times in nanoseconds,
inode) and the code that read it is the same (``code_digest``: the source of the reading
modules and the entry format). A file modified less than :data:`RACY_NS` before it was read
might change again within its timestamp's resolution, with the same size, and look
unchanged: its entry also holds a digest of the text read, compared with the file's text
on loading. The images a loaded entry names are checked again by the caller (their
image-check cache says whether each is unchanged), so a stream is never served with an
image that was not checked.

Entries are pickles written by contmm on this machine (atomically, so a reader never sees
half an entry); a cache that cannot be read or written is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import copyreg
import functools
import gc
import hashlib
import io
import pickle
import time
import warnings
from pathlib import Path

from contmm.rundir.directory import atomic_write
from streams.media_checks import cache_dir

FORMAT = 1  # the layout of an entry; the code digest covers the rest
# A file changed this recently when read is "racy": its entry also keeps a digest of its text.
RACY_NS = 2_000_000_000


@functools.cache
def code_digest(*sources: Path) -> str:
    """A digest of the entry format and of the reading code's ``sources``: a change to how
    files are read makes every entry stale."""
    digest = hashlib.sha256(f"format {FORMAT}".encode())
    for source in (Path(__file__), *sources):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def file_stamp(path: Path) -> dict | None:
    """What changes when ``path`` is written, with ``racy`` set if it was changed so
    recently that a write within its timestamp resolution might not change the rest; None if
    it cannot be stat'ed (reading it names the problem)."""
    now = time.time_ns()
    try:
        stat = path.stat()
    except OSError:
        return None
    return {
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
        "inode": stat.st_ino,
        "racy": now - max(stat.st_mtime_ns, stat.st_ctime_ns) < RACY_NS,
    }


def text_digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()


class StreamCache:
    """The kept reads of data files, for one code version."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.folder = cache_dir() / "streams"
        self.unwritable = False  # warned once per build, not once per file
        # Every path loaded, made once per build: a Path made from a string is slow (tens of
        # microseconds), and a stream names the same images from file after file.
        self.paths: dict[str, Path] = {}

    @staticmethod
    def stamp(path: Path) -> dict | None:
        return file_stamp(path)

    def entry(self, path: Path, settings: dict) -> Path:
        name = repr((str(path.resolve()), sorted(settings.items())))
        return self.folder / f"{hashlib.sha256(name.encode()).hexdigest()[:32]}.pickle"

    def load(self, path: Path, settings: dict, read_text) -> object | None:
        """What was kept for ``path`` read with ``settings`` if the file is unchanged since,
        else None. ``read_text()`` gives the file's text (for a racy entry's digest)."""
        entry = self.entry(path, settings)
        stamp = file_stamp(path)
        if stamp is None or not entry.is_file():
            return None
        try:
            with entry.open("rb") as f:
                header = pickle.load(f)
                if header != self._header(path, settings, stamp, header.get("digest")):
                    return None  # the file, or the code reading it, changed since
                if header["digest"] is not None and header["digest"] != self._digest(read_text):
                    return None
                return _load(_Unpickler(f, self.paths))
        except Exception as error:  # noqa: BLE001 - any unreadable entry is read anew, never fatal
            warnings.warn(f"stream cache {entry} unreadable, reading {path} anew: {error!r}", stacklevel=2)
            return None

    @staticmethod
    def _digest(read_text) -> str | None:
        try:
            return text_digest(read_text())
        except (OSError, ValueError):  # reading the file anew names the problem
            return None

    def store(self, path: Path, settings: dict, stamp: dict | None, text: str, value: object) -> None:
        """Keep ``value``, read from ``text``, the content of ``path`` when it had ``stamp``
        (taken before reading: an entry stamped after it might hold an older text than its
        stamp says). Not written if the file has changed since: it would be stale."""
        if stamp is None or _unchanging(file_stamp(path)) != _unchanging(stamp):
            return
        digest = text_digest(text) if stamp["racy"] else None
        entry = self.entry(path, settings)
        try:
            header = pickle.dumps(self._header(path, settings, stamp, digest), pickle.HIGHEST_PROTOCOL)
            body = io.BytesIO()
            with _no_collection():  # a third faster
                _Pickler(body, pickle.HIGHEST_PROTOCOL).dump(value)
            atomic_write(entry, header + body.getvalue())
        except OSError as error:
            if not self.unwritable:
                warnings.warn(f"stream cache {self.folder} not written: {error}", stacklevel=2)
            self.unwritable = True

    def _header(self, path: Path, settings: dict, stamp: dict, digest: str | None) -> dict:
        return {
            "code": self.code,
            "file": str(path.resolve()),
            "settings": settings,
            "stamp": _unchanging(stamp),
            "digest": digest,
        }


def _unchanging(stamp: dict | None) -> dict | None:
    """The stamp without ``racy``, which turns false as the file ages."""
    return stamp and {key: value for key, value in stamp.items() if key != "racy"}


def _path(text: str) -> Path:
    """A path, as pickled: loading makes it with :meth:`_Unpickler.path`."""
    return Path(text)


class _Pickler(pickle.Pickler):
    # By exact type, looked up in C: no Python call for each other object (as a
    # reducer_override would make).
    dispatch_table = copyreg.dispatch_table | {type(Path()): lambda path: (_path, (str(path),))}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, paths: dict[str, Path]) -> None:
        super().__init__(file)
        self.paths = paths

    def find_class(self, module: str, name: str):
        if module == __name__ and name == "_path":
            return self.path
        return super().find_class(module, name)

    def path(self, text: str) -> Path:
        path = self.paths.get(text)
        if path is None:
            path = self.paths[text] = Path(text)
            str(path)  # kept by the Path: the checks of every file that names it use it
        return path


@contextlib.contextmanager
def _no_collection():
    """No cyclic garbage collection in the block (as it was, after)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load(unpickler: pickle.Unpickler) -> object:
    """What ``unpickler`` holds, loaded without the cyclic garbage collector: an entry is
    hundreds of thousands of new objects, none of them garbage, and each collection they
    start walks them all (loading took three times as long). They are then moved straight to
    the oldest generation (``freeze`` then ``unfreeze``; not where the program froze objects
    itself), as the young collections that follow would each walk them all again (another
    second for 570 k samples)."""
    with _no_collection():
        value = unpickler.load()
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
    return value
