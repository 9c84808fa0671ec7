"""The run directory's locks (contmm/rundir/lock.py): a live holder excludes others, a killed one
never blocks the next run, a lease on file systems shared by hosts, readers beside a fit."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from contmm.rundir import lock as lock_module
from contmm.rundir.lock import LOCK, locked, no_readers, reading
from tests.helpers import REPO

HOLD = """
import sys
from pathlib import Path
from contmm.rundir.lock import locked
with locked(Path(sys.argv[1]), "contmm fit"):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding ``tmp_path``'s lock until it is killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdout.readline() == b"held\n"
    yield process
    process.kill()
    process.wait()


def write_owner(directory, host: str, refreshed: datetime, pid: int = 1) -> None:
    owner = {"pid": pid, "host": host, "command": "contmm fit", "since": refreshed.isoformat()}
    (directory / LOCK).write_text(json.dumps(owner | {"refreshed": refreshed.isoformat()}))


def test_a_live_holder_refuses_a_second_run_naming_its_pid_host_and_command(tmp_path, holder):
    with pytest.raises(ValueError) as refused, locked(tmp_path, "contmm fit"):
        pass
    message = str(refused.value)
    assert f"contmm fit (process {holder.pid} on {socket.gethostname()}" in message
    assert str(tmp_path / LOCK) in message


def test_a_holder_killed_with_sigkill_never_blocks_the_next_run(tmp_path, holder, capsys):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / LOCK).exists()  # nothing ran to remove it
    with locked(tmp_path, "contmm fit"):
        owner = json.loads((tmp_path / LOCK).read_text())
        assert owner["pid"] == os.getpid()
    assert f"process {holder.pid}" in capsys.readouterr().out  # said, not silent
    assert not (tmp_path / LOCK).exists()


def test_a_lock_file_naming_a_live_pid_that_holds_nothing_is_taken_over(tmp_path):
    # A pid reused by another process (here: this very one) reads as alive; the kernel's
    # lock says no process holds the file.
    write_owner(tmp_path, socket.gethostname(), datetime.now(UTC), pid=os.getpid())
    with locked(tmp_path, "contmm fit"):
        assert json.loads((tmp_path / LOCK).read_text())["command"] == "contmm fit"


def test_the_holder_refreshes_its_lease(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTMM_LOCK_LEASE", "0.2")
    with locked(tmp_path, "contmm fit"):
        first = json.loads((tmp_path / LOCK).read_text())["refreshed"]
        deadline = time.monotonic() + 5
        while json.loads((tmp_path / LOCK).read_text())["refreshed"] == first:
            assert time.monotonic() < deadline, "the lease was not refreshed"
            time.sleep(0.01)


def test_another_hosts_expired_lease_is_taken_over_with_a_warning_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTMM_LOCK_LEASE", "60")
    write_owner(tmp_path, "node-17", datetime.now(UTC) - timedelta(seconds=61))
    with pytest.warns(UserWarning, match="process 1 on node-17"), locked(tmp_path, "contmm fit"):
        pass


def test_another_hosts_live_lease_is_waited_for_then_taken_over(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONTMM_LOCK_LEASE", "0.4")
    write_owner(tmp_path, "node-17", datetime.now(UTC))
    start = time.monotonic()
    with pytest.warns(UserWarning, match="node-17"), locked(tmp_path, "contmm fit"):
        pass
    assert time.monotonic() - start >= 0.3  # it waited for the lease to run out
    assert "waiting up to" in capsys.readouterr().out


def test_another_hosts_lease_refreshed_while_waiting_refuses_the_run(tmp_path, monkeypatch):
    # A run on another node whose flock this host cannot see, still refreshing its lease.
    monkeypatch.setenv("CONTMM_LOCK_LEASE", "0.4")
    write_owner(tmp_path, "node-17", datetime.now(UTC))
    sleep = time.sleep

    def refreshing(seconds):
        sleep(seconds)
        write_owner(tmp_path, "node-17", datetime.now(UTC))

    monkeypatch.setattr(lock_module.time, "sleep", refreshing)
    refused = pytest.raises(ValueError, match="process 1 on node-17.*is refreshing its lease")
    with refused, locked(tmp_path, "contmm fit"):
        pass


def test_without_flock_a_live_pid_on_this_host_refuses_and_a_dead_one_does_not(tmp_path, monkeypatch):
    def no_flock(fd, operation):
        raise OSError(lock_module.errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_module.fcntl, "flock", no_flock)
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        write_owner(tmp_path, socket.gethostname(), datetime.now(UTC), pid=live.pid)
        with pytest.raises(ValueError, match=f"process {live.pid} on"), locked(tmp_path, "contmm fit"):
            pass
    finally:
        live.kill()
        live.wait()
    with locked(tmp_path, "contmm fit"):
        pass


def test_a_reader_holds_off_deletion_and_a_fit_does_not_wait_for_it(tmp_path):
    with no_readers(tmp_path) as free:
        assert free
    with reading(tmp_path), no_readers(tmp_path) as free:
        assert not free
    with no_readers(tmp_path) as free:
        assert free


def test_a_lease_that_is_not_a_number_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTMM_LOCK_LEASE", "ten")
    with pytest.raises(ValueError, match="CONTMM_LOCK_LEASE='ten'"), locked(tmp_path, "contmm fit"):
        pass


KILLED_WITH_A_WORKER = """
import os, signal, sys, time
from pathlib import Path
from contmm.rundir.lock import locked
with locked(Path(sys.argv[1]), "contmm fit"):
    if os.fork() == 0:  # a DataLoader worker, which outlives its killed parent a while
        for fd in (1, 2):  # not the pipe the test reads to its end
            os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
        time.sleep(3)
        os._exit(0)
    print("forked", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_forked_worker_that_outlives_its_killed_run_does_not_hold_the_lock(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", KILLED_WITH_A_WORKER, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    assert run.returncode == -signal.SIGKILL and run.stdout == b"forked\n"
    with locked(tmp_path, "contmm fit"):  # within the worker's 3 s
        pass
