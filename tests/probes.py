"""Test-only strategies that write what each DDP rank holds, to compare ranks afterwards.

They write to the directory in ``$CONTMM_PROBE_DIR`` (a real strategy never touches the
filesystem; these exist to look inside a 2-process run).
"""

import json
import os
from pathlib import Path

import torch.distributed as dist

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
        fisher = self.importances[-1][0]
        _write("ewc", task_id, {name: value.double().flatten().tolist() for name, value in fisher.items()})
