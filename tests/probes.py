"""Test-only strategies and a logger for 2-process runs, steered by environment variables.

The probes write what each DDP rank holds, or logs, to ``$CONTMM_PROBE_DIR``, to compare
ranks afterwards (a real strategy never touches the filesystem); ``CrashBeforeTask`` stops
a run between stages.
"""

import json
import os
import signal
from pathlib import Path

import torch.distributed as dist
from lightning.pytorch.loggers import Logger

from contmm.strategy import Strategy
from strategies.ewc import EWC
from strategies.replay import Replay


def _write(kind: str, task_id: int, payload) -> None:
    rank = dist.get_rank() if dist.is_initialized() else 0
    path = Path(os.environ["CONTMM_PROBE_DIR"]) / f"{kind}_task{task_id}_rank{rank}.json"
    path.write_text(json.dumps(payload))


class ReplayProbe(Replay):
    def after_task(self, model, task_id, dataloader):
        super().after_task(model, task_id, dataloader)
        _write("replay", task_id, [self.memory[i]["id"] for i in range(len(self.memory))])


class EWCProbe(EWC):
    def after_task(self, model, task_id, dataloader):
        super().after_task(model, task_id, dataloader)
        fisher = self.fishers[-1]
        _write("ewc", task_id, {name: value.double().flatten().tolist() for name, value in fisher.items()})


class RankBlindLogger(Logger):
    """A user's logger that, unlike Lightning's, logs on whichever rank calls it: every
    ``log_metrics`` call is a line of ``logger_rank<LOCAL_RANK>.jsonl``."""

    name = "rank_blind"
    version = 0

    def log_metrics(self, metrics, step=None):
        rank = os.environ.get("LOCAL_RANK", "0")  # set for the ranks Lightning launches
        with (Path(os.environ["CONTMM_PROBE_DIR"]) / f"logger_rank{rank}.jsonl").open("a") as file:
            file.write(json.dumps({"metrics": metrics, "step": step}) + "\n")

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class CrashBeforeTask(Strategy):
    """Raises before task ``$CONTMM_CRASH_AT_TASK`` (on every rank): a run killed between
    stages, whose config is the same as the run that resumes it."""

    def before_task(self, model, task_id):
        if os.environ.get("CONTMM_CRASH_AT_TASK") == str(task_id):
            raise RuntimeError(f"injected crash before task {task_id}")


class InterruptInTask(Strategy):
    """Presses Ctrl-C (SIGINT to its own process) in the first training step of task
    ``$CONTMM_INTERRUPT_AT_TASK``, as a user stopping a run midway would."""

    def before_task(self, model, task_id):
        self.task_id = task_id

    def penalty(self, model, batch, outputs):
        if os.environ.get("CONTMM_INTERRUPT_AT_TASK") == str(self.task_id):
            # A process started in the background by a non-interactive shell ignores SIGINT
            # (as the test suite's is, run with `&`); a user's terminal delivers it.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.kill(os.getpid(), signal.SIGINT)


class KillAt(Strategy):
    """SIGKILLs its own process group at the moment ``$CONTMM_KILL_AT`` names, as an
    out-of-memory killer or a scheduler's preemption would: no exception handler, no
    ``finally`` runs. The moments: ``pretrain`` (a pre-training step), ``row0`` (the first
    evaluation), ``mid_epoch`` (stage 2, second epoch, second batch), ``after_last_epoch``
    (the end of stage 2's fit, after the strategies listed before this one did their
    end-of-task step), ``evaluation`` (row 2) and ``checkpoint_write`` (stage 2's
    checkpoint, between its model and strategy files). List it last. With
    ``$CONTMM_KILL_SIGNAL=SIGUSR1`` it sends SLURM's warning before a time limit instead."""

    def __init__(self) -> None:
        self.moment = os.environ.get("CONTMM_KILL_AT")
        if self.moment in ("pretrain", "mid_epoch"):
            self._patch_training_step()
        elif self.moment in ("row0", "evaluation"):
            self._patch_test_step()
        elif self.moment == "checkpoint_write":
            self._patch_checkpoint_save()

    @staticmethod
    def kill() -> None:
        if os.environ.get("CONTMM_KILL_SIGNAL") == "SIGUSR1":  # SLURM's warning, to each task
            os.kill(os.getpid(), signal.SIGUSR1)
        else:
            os.killpg(os.getpgid(0), signal.SIGKILL)

    def _patch_training_step(self) -> None:
        from contmm.training.module import ContinualModule

        training_step = ContinualModule.training_step
        pretraining = self.moment == "pretrain"

        def step(module, batch, batch_idx):
            in_pretraining = module.task_id is None
            if batch_idx == 1 and (
                in_pretraining if pretraining else module.task_id == 1 and module.current_epoch == 1
            ):
                KillAt.kill()
            return training_step(module, batch, batch_idx)

        ContinualModule.training_step = step

    def _patch_test_step(self) -> None:
        from contmm.training.module import ContinualModule

        test_step = ContinualModule.test_step
        task = None if self.moment == "row0" else 1

        def step(module, batch, batch_idx, dataloader_idx=0):
            if module.task_id == task:
                KillAt.kill()
            return test_step(module, batch, batch_idx, dataloader_idx)

        ContinualModule.test_step = step

    def _patch_checkpoint_save(self) -> None:
        from contmm.rundir import checkpoint

        save = checkpoint.torch.save

        def saving(obj, path, *args, **kwargs):
            # Lightning saves through torch.save as well, into a buffer: only the named file counts.
            if isinstance(path, (str, os.PathLike)) and Path(path).parts[-2:] == (
                ".stage_2.tmp",
                "strategies.pt",
            ):
                KillAt.kill()
            return save(obj, path, *args, **kwargs)

        checkpoint.torch.save = saving

    def after_task(self, model, task_id, dataloader):
        if self.moment == "after_last_epoch" and task_id == 1:
            KillAt.kill()
