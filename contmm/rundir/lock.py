"""One writer per run directory, readers beside it, and locks that die with their process.

``.contmm-lock`` is held by the process that writes the directory (``contmm fit``; ``contmm
eval`` in its own output directory) with ``flock``: the kernel releases it when that process
ends, however it ends (SIGKILL, the out-of-memory killer, a scheduler's hard kill), so the
same command run again simply goes on. Two live runs still exclude each other. The file
keeps the holder's pid, host, command and start time, for the message that refuses a second
run, and is removed when the holder ends normally (by an error or Ctrl-C too).

File systems shared by several hosts do not always carry ``flock`` from host to host (some
NFS set-ups; Lustre without ``-o flock``), so the holder also keeps a **lease**: a thread
rewrites the file's ``refreshed`` time every quarter of ``$CONTMM_LOCK_LEASE`` seconds
(default 300). A lock file of another host whose lease is live refuses the run; one not
refreshed for the lease time was left by a run that is gone (a failed node) and is taken
over with a warning naming the old holder. A run that meets a live lease of another host
waits for it to expire first, so that a job requeued onto another node right after its node
failed still starts by itself. Where the file system refuses ``flock`` altogether, the lease
decides alone (on this host with the holder's pid as well). The hosts' clocks must agree to
well within the lease time, as NTP keeps them.

``.contmm-readers`` is held shared by ``contmm eval --run`` and ``contmm export`` while they
read a run's stage checkpoints; a fit takes it exclusively, without waiting, before it
deletes what they read (``--resume false``; the previous stage's checkpoint, whose removal
waits for the next stage while a reader holds it). It stays in the directory, empty.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

LOCK = ".contmm-lock"
READERS = ".contmm-readers"
LEASE_ENV = "CONTMM_LOCK_LEASE"
DEFAULT_LEASE_S = 300.0
# flock's errors on a file system that does not implement it (as opposed to EWOULDBLOCK: held).
NO_FLOCK = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}

# The descriptors of the locks this process holds. A forked child (a DataLoader worker)
# shares them, and a flock lives until every copy is closed: a worker still running after
# its parent was killed would hold the run directory. So a child closes its copies at once.
HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in HELD:
        os.close(fd)
    HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


def lease_seconds() -> float:
    """``$CONTMM_LOCK_LEASE``: how long a lock file not refreshed still counts as held."""
    text = os.environ.get(LEASE_ENV, "")
    try:
        lease = float(text) if text else DEFAULT_LEASE_S
    except ValueError:
        raise ValueError(f"{LEASE_ENV}={text!r} is not a number of seconds") from None
    if lease <= 0:
        raise ValueError(f"{LEASE_ENV}={text!r}: the lease must be positive (seconds)")
    return lease


def alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def try_flock(fd: int, operation: int) -> bool | None:
    """``flock(fd, operation | LOCK_NB)``: True if taken, False if another process holds it,
    None if the file system has no ``flock``."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno in NO_FLOCK:
            return None
        raise
    return True


def open_locked_file(path: Path, operation: int) -> tuple[int, bool | None]:
    """``path`` opened (created if need be) and ``flock``-ed without waiting: the descriptor and
    ``try_flock``'s answer. A file unlinked by its holder between our open and our lock is a
    lock on nothing: then it is opened again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        taken = try_flock(fd, operation)
        try:
            same_file = taken and os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same_file = False
        if not taken or same_file:
            return fd, taken
        os.close(fd)


def read_owner(fd: int) -> dict | None:
    """The holder recorded in the lock file, or None where it names none (empty, cut short, not
    contmm's)."""
    try:
        owner = json.loads(os.pread(fd, 4096, 0) or b"null")
        return owner if isinstance(owner, dict) and {"pid", "host"} <= owner.keys() else None
    except (OSError, ValueError):
        return None


def describe(owner: dict | None) -> str:
    if owner is None:
        return "a process that left no name in it"
    since = owner.get("since", "?")
    return (
        f"{owner.get('command', 'a contmm run')} (process {owner['pid']} on {owner['host']}, since {since})"
    )


def lease_age(owner: dict) -> float | None:
    """Seconds since ``owner`` last refreshed its lease; None if it records no time."""
    try:
        refreshed = datetime.fromisoformat(owner.get("refreshed") or owner["since"])
    except (KeyError, TypeError, ValueError):
        return None
    return (datetime.now(UTC) - refreshed).total_seconds()


class RunLock:
    """The hold of one process on ``directory/.contmm-lock``: taken by :meth:`acquire`,
    refreshed by a thread, released by :meth:`release`."""

    def __init__(self, directory: Path, command: str) -> None:
        self.path = directory / LOCK
        self.command = command
        self.lease = lease_seconds()
        self.fd: int | None = None
        self.owner: dict = {}  # what the file says of this holder
        self.stop = threading.Event()
        self.refresher: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ValueError naming its holder."""
        fd, kernel = open_locked_file(self.path, fcntl.LOCK_EX)
        try:
            if kernel is False:
                raise ValueError(self.held_message(read_owner(fd), "holds it"))
            self.take_over(fd, kernel)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        HELD.add(fd)
        self.write_owner(since=datetime.now(UTC).isoformat())
        self.refresher = threading.Thread(target=self.refresh, name="contmm-lock-lease", daemon=True)
        self.refresher.start()

    def take_over(self, fd: int, kernel: bool | None) -> None:
        """The lock file is free as far as this host's kernel knows (``kernel``; None: the file
        system cannot tell): decide whether a holder it names may still be running."""
        owner = read_owner(fd)
        if owner is None:
            return
        this_host = owner["host"] == socket.gethostname()
        if this_host and kernel:  # the kernel would know a holder on this host
            print(f"contmm: {describe(owner)} ended without releasing {self.path}; taking it over")
            return
        if this_host:  # no flock here: the pid tells
            if alive(int(owner["pid"])) and int(owner["pid"]) != os.getpid():
                raise ValueError(self.held_message(owner, "holds it"))
            return
        owner = self.wait_for_lease(fd, owner)
        warnings.warn(
            f"{self.path}: the lease of {describe(owner)} was last refreshed over {self.lease:.0f} s ago "
            f"(${LEASE_ENV}); that run is gone (a failed node?): taking the lock over",
            stacklevel=2,
        )

    def wait_for_lease(self, fd: int, owner: dict) -> dict:
        """Wait while another host's lease may still be live; ValueError if it is refreshed."""
        age = lease_age(owner)
        if age is not None and age < self.lease:
            print(
                f"contmm: {self.path} is held by {describe(owner)}, refreshed {age:.0f} s ago; waiting up "
                f"to {self.lease - age:.0f} s for its lease to expire (a run still alive refreshes it)"
            )
            deadline = time.monotonic() + self.lease - age
            while time.monotonic() < deadline:
                time.sleep(min(self.lease / 8, max(deadline - time.monotonic(), 0)))
                now = read_owner(fd)
                if now != owner:
                    raise ValueError(self.held_message(now, "is refreshing its lease"))
        return owner

    def held_message(self, owner: dict | None, doing: str) -> str:
        return (
            f"{self.path.parent} is in use: {describe(owner)} {doing} ({self.path}). Wait for it to end "
            "or choose another --output_dir"
        )

    def write_owner(self, since: str) -> None:
        self.owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "since": since,
            "refreshed": datetime.now(UTC).isoformat(timespec="microseconds"),
        }
        data = (json.dumps(self.owner) + "\n").encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def refresh(self) -> None:
        """Renew the lease until released. The file keeps its length (the times are printed at
        a fixed width), so a reader never meets half a rewrite."""
        while not self.stop.wait(self.lease / 4):
            try:
                self.owner["refreshed"] = datetime.now(UTC).isoformat(timespec="microseconds")
                os.pwrite(self.fd, (json.dumps(self.owner) + "\n").encode(), 0)
            except OSError as error:  # a full or vanished file system: the run itself will say
                print(f"contmm: could not renew the lease in {self.path}: {error}", file=sys.stderr)

    def release(self) -> None:
        self.stop.set()
        if self.refresher is not None:
            self.refresher.join()
        # Unlinked while still held: a run waiting on the old file then opens the path anew.
        self.path.unlink(missing_ok=True)
        HELD.discard(self.fd)
        os.close(self.fd)


@contextmanager
def locked(directory: Path, command: str) -> Iterator[None]:
    """Hold ``directory``'s lock for the block as ``command``; ValueError naming the holder if
    another live process holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    lock = RunLock(directory, command)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def open_readers(directory: Path) -> int | None:
    """The readers' lock file of ``directory``, opened; None where it is not there and cannot be
    made (a run directory the reader may not write: then no fit of this user deletes there)."""
    path = directory / READERS
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
        try:
            return os.open(path, flags, 0o644)
        except OSError:
            continue
    return None


@contextmanager
def reading(directory: Path) -> Iterator[None]:
    """Hold ``directory``'s readers' lock shared for the block: a fit does not delete the
    checkpoints being read. Waits while a fit deletes (a moment)."""
    fd = open_readers(directory)
    try:
        if fd is not None:
            HELD.add(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
            except OSError as error:
                if error.errno not in NO_FLOCK:
                    raise
        yield
    finally:
        if fd is not None:
            HELD.discard(fd)
            os.close(fd)


@contextmanager
def no_readers(directory: Path) -> Iterator[bool]:
    """Whether no ``contmm eval`` / ``export`` reads ``directory`` now; while the block runs,
    none starts. Does not wait."""
    fd = open_readers(directory)
    try:
        yield fd is None or try_flock(fd, fcntl.LOCK_EX) is not False
    finally:
        if fd is not None:
            os.close(fd)
