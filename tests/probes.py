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
            os.kill(os.getpid(), signal.SIGINT)
