"""O-LoRA (Wang et al. 2023, arXiv 2310.14152): orthogonal subspaces, one LoRA per task.

Each task adds a fresh LoRA adapter on the frozen LLM; the earlier adapters stay in the
forward pass, frozen. While task t is tuned, its adapter's down-projections are pushed
orthogonal to every earlier adapter's in each adapted layer,

    L_orth = Σ_layers Σ_{i<t} ‖A_i A_tᵀ‖²_F       (A: peft's ``lora_A`` weight, r × d_in),

so the new task writes into directions the earlier tasks' updates do not read. At
evaluation every adapter is active, summed: no task id is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from peft import PeftModel

from contmm.training.sharding import whole
from strategies.lora_per_task import LLM_PROJECTIONS, LoRAPerTask


def lora_layers(lm) -> list:
    """The modules of ``lm`` that carry LoRA adapters (peft's ``lora_A`` dicts)."""
    return [
        module for module in lm.modules() if isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict)
    ]


def orthogonality(lm, new: str, earlier: Sequence[str]) -> torch.Tensor:
    """Σ over LoRA layers and earlier adapters of ‖A_i A_newᵀ‖²_F."""
    terms = [
        (whole(layer.lora_A[old].weight) @ whole(layer.lora_A[new].weight).T).pow(2).sum()
        for layer in lora_layers(lm)
        for old in earlier
    ]
    return torch.stack(terms).sum()


class OLoRA(LoRAPerTask):
    """O-LoRA: a new LoRA adapter per task, orthogonal to the earlier ones, all active.

    Args:
        r, alpha, dropout, target_modules: each adapter's settings (as LoRAPerTask's).
        orth_lambda: weight λ₁ of the orthogonality loss (the paper's default 0.5).
        l2_lambda: weight λ₂ of an L2 penalty on the new adapter's weights (the paper's 0).
    """

    def __init__(
        self,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: Sequence[str] | str = LLM_PROJECTIONS,
        orth_lambda: float = 0.5,
        l2_lambda: float = 0.0,
    ) -> None:
        super().__init__(r, alpha, dropout, target_modules)
        self.orth_lambda, self.l2_lambda = orth_lambda, l2_lambda
        self.task = None

    def before_task(self, model, task_id) -> None:
        super().before_task(model, task_id)  # adds task_<id>, the only trainable adapter
        self.task = f"task_{task_id}"
        lm = model.backbone.lm
        trainable = {n for n, p in lm.named_parameters() if p.requires_grad}
        lm.base_model.set_adapter(list(lm.peft_config))  # the earlier adapters join the forward ...
        for name, parameter in lm.named_parameters():
            parameter.requires_grad_(name in trainable)  # ... frozen

    def penalty(self, model, batch, outputs) -> torch.Tensor | None:
        lm = model.backbone.lm
        earlier = [name for name in lm.peft_config if name != self.task]
        terms = []
        if earlier and self.orth_lambda:
            terms.append(self.orth_lambda * orthogonality(lm, self.task, earlier))
        if self.l2_lambda:
            new = [p for n, p in lm.named_parameters() if f".{self.task}." in n]
            terms.append(self.l2_lambda * torch.stack([whole(p).pow(2).sum() for p in new]).sum())
        return torch.stack(terms).sum() if terms else None

    @contextmanager
    def eval_context(self, model, task_id, batch=None):
        """Every adapter tuned so far, summed, whatever the task: no task id."""
        lm = model.backbone.lm
        if not isinstance(lm, PeftModel):
            yield
            return
        active = list(lm.base_model.active_adapters)
        grads = {n: p.requires_grad for n, p in lm.named_parameters()}
        lm.base_model.set_adapter(list(lm.peft_config), inference_mode=True)
        try:
            yield
        finally:
            lm.base_model.set_adapter(active)
            for name, parameter in lm.named_parameters():
                parameter.requires_grad_(grads[name])
