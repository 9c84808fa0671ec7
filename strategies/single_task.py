"""Single-task reference: every task is tuned alone, from the same starting model.

Before each task the components the config trains are restored to the weights they had
before the first task, so row i of the matrix is the model tuned on task i only and its
diagonal R[i][i-1] is the reference score S_j that intransigence is measured against
(`contmm report RUN --reference SINGLE_TASK_RUN`). Only the trainable components are
kept (on the CPU): frozen ones never change. Use it alone: a strategy that adds
structure (adapters, projectors) would be reset under it.
"""

from __future__ import annotations

import torch

from contmm.strategy import Strategy


class SingleTask(Strategy):
    """Restore the starting weights of the trained components before every task."""

    def setup(self, model, stream) -> None:
        self.start = {
            name: {k: v.detach().to("cpu", copy=True) for k, v in model.component_state_dict(name).items()}
            for name in model.configured_trainable()
        }

    @torch.no_grad()
    def before_task(self, model, task_id) -> None:
        for name, state in self.start.items():
            model.load_component_state_dict(name, state)

    def state_dict(self, model) -> dict:
        return {"start": self.start}

    def load_state_dict(self, state: dict, model) -> None:
        self.start = state["start"]
