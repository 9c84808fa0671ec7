"""SLURM's warning before a job's end: the run requeues its job and stops; the requeued job,
which runs the same command, goes on from where it stopped.

With ``#SBATCH --signal=USR1@90`` (Lightning's convention for ``SLURMEnvironment``) SLURM
sends SIGUSR1 90 s before the time limit. A ``contmm fit`` in a SLURM job (``SLURM_JOB_ID``
set, not an interactive ``bash`` / ``interactive`` job) handles it for the whole run, in a
stage, an evaluation or between them: rank 0 runs ``scontrol requeue <job>`` and every rank
stops. Nothing needs saving at that moment: every file a run writes is written atomically,
and a resume goes on from the newest stage checkpoint, or from the stage's last finished
epoch (``last.ckpt``, with ``trainer.enable_checkpointing``), redoing the interrupted epoch,
so the requeued run ends with the uninterrupted run's matrix (the same guarantee as after
a SIGKILL, tested in ``tests/test_kill_resume.py``).

Lightning's own handler for the signal (``SLURMEnvironment(auto_requeue=True)``) is left
unregistered: Lightning adds it only where no handler is set. It would save a mid-epoch
``hpc_ckpt_<n>.ckpt`` that the next fit loads ahead of contmm's resume point, and a mid-epoch
resume does not replay the epoch's remaining batches exactly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from lightning.pytorch.utilities import rank_zero_only

REQUEUE_SIGNAL = signal.SIGUSR1


class Preempted(SystemExit):
    """The run stopped on SLURM's warning; its exit code says whether the job was requeued."""


def slurm_job() -> str | None:
    """The id that ``scontrol requeue`` takes for this SLURM job (``<array job>_<task>`` for
    an array task), or None outside a batch job."""
    if "SLURM_JOB_ID" not in os.environ or os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def requeue(job: str) -> str | None:
    """``scontrol requeue job``; None if done, else why not."""
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, check=False)
    except OSError as error:
        return str(error)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit status {done.returncode}")


def stop_and_requeue(job: str) -> None:
    """The handler of SLURM's warning: rank 0 requeues the job; every rank stops."""
    if rank_zero_only.rank != 0:
        raise Preempted(0)
    if (failed := requeue(job)) is None:
        print(
            f"contmm: SLURM's warning before the time limit: job {job} requeued; the requeued job goes "
            "on from the last stage checkpoint or finished epoch",
            file=sys.stderr,
        )
        raise Preempted(0)
    print(
        f"contmm: SLURM's warning before the time limit, but `scontrol requeue {job}` failed ({failed}): "
        "run the same command again to go on",
        file=sys.stderr,
    )
    raise Preempted(1)


@contextmanager
def requeue_on_preemption() -> Iterator[None]:
    """In a SLURM batch job, requeue it and stop on SIGUSR1, for the block; elsewhere nothing."""
    job = slurm_job()
    if job is None:
        yield
        return
    before = signal.signal(REQUEUE_SIGNAL, lambda signum, frame: stop_and_requeue(job))
    try:
        yield
    finally:
        signal.signal(REQUEUE_SIGNAL, before)
