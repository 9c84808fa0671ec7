"""One run per run directory: ``.contmm-lock``, held while a run uses the directory.

The lock file is created with ``O_EXCL``, so of two runs started at once exactly one gets
it, and holds the owner's pid and host, so that a refused run can say who holds it. A lock
whose process is gone (killed with SIGKILL, a crashed machine) is reported as stale, never
taken over silently: another host's process cannot be checked from here, and a pid alone
cannot prove a run is gone on a shared file system.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

LOCK = ".contmm-lock"


def alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def held_by(lock: Path) -> str:
    """Why ``lock`` refuses this run: who holds it, or that it is stale, and what to do."""
    try:
        owner = json.loads(lock.read_text())
        pid, host, since = int(owner["pid"]), str(owner["host"]), owner.get("since", "?")
    except (OSError, ValueError, KeyError, TypeError):
        return (
            f"{lock.parent} is locked by {lock}, which names no owner (not written by contmm, or "
            f"cut short): if no run uses {lock.parent}, delete {lock} and run again"
        )
    if host == socket.gethostname() and not alive(pid):
        return (
            f"{lock} is stale: process {pid} on {host}, which locked {lock.parent} at {since}, is "
            f"no longer running (it was killed or crashed). Delete {lock} and run again"
        )
    return (
        f"{lock.parent} is in use by another contmm run: process {pid} on {host}, since {since} "
        f"({lock}). Wait for it to end or choose another --output_dir; if that process is gone, "
        f"delete {lock}"
    )


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold ``directory``'s lock for the block; ValueError naming the holder if it is held.
    The lock is removed when the block ends, by an error or Ctrl-C too."""
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise ValueError(held_by(lock)) from None
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now(UTC).isoformat()}
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(owner) + "\n")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
