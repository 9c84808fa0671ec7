"""MoELoRA (CoIN's method, Chen et al. 2024, arXiv 2403.08350): a mixture of LoRA experts.

Every adapted linear of the frozen LLM gets ``experts`` LoRA experts and a router; each
token's output adds the experts' low-rank updates weighted by the router's softmax,

    y = W x + (α / r) Σ_e g_e(x) B_e A_e x,      g(x) = softmax(W_g x),

and the experts and routers are tuned through the whole stream (no task id anywhere): the
router can send different tasks' tokens to different experts, which is how it is meant to
forget less than one LoRA. The B matrices start at zero, so before the first task the model
is the base model exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from contmm.strategy import Strategy
from strategies.lora_per_task import LLM_PROJECTIONS


class MoELoRALinear(nn.Module):
    """A frozen linear plus a router-weighted mixture of LoRA experts."""

    def __init__(self, base: nn.Linear, experts: int, r: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.scaling = alpha / r
        self.lora_A = nn.Parameter(torch.empty(experts, r, base.in_features, dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(experts, base.out_features, r, dtype=base.weight.dtype))
        self.router = nn.Linear(base.in_features, experts, bias=False, dtype=base.weight.dtype)
        for expert in self.lora_A:  # as peft initialises lora_A
            nn.init.kaiming_uniform_(expert, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = torch.softmax(self.router(x), dim=-1)  # (..., experts)
        low = torch.einsum("...i,eri->...er", x, self.lora_A)  # each expert's A x
        update = torch.einsum("...er,eor->...o", gates.unsqueeze(-1) * low, self.lora_B)
        return self.base(x) + self.scaling * update


def moe_layers(model) -> list[MoELoRALinear]:
    return [module for module in model.backbone.lm.modules() if isinstance(module, MoELoRALinear)]


class MoELoRA(Strategy):
    """MoELoRA: LoRA experts with a learned router on the frozen LLM, tuned on every task.

    Args:
        experts: LoRA experts per adapted linear (CoIN uses several; 4 here by default).
        r: rank of every expert.
        alpha: scaling numerator (the update is scaled by ``alpha / r``).
        target_modules: the backbone's linears that get experts, matched as name suffixes.
    """

    def __init__(
        self,
        experts: int = 4,
        r: int = 8,
        alpha: float = 16.0,
        target_modules: Sequence[str] = LLM_PROJECTIONS,
    ) -> None:
        if experts < 1 or r < 1:
            raise ValueError(f"MoELoRA: experts and r must be at least 1, got {experts} and {r}")
        self.experts, self.r, self.alpha, self.targets = experts, r, alpha, tuple(target_modules)

    def setup(self, model, stream) -> None:
        """Wrap the target linears now (before row 0: the B matrices are zero, so the model is
        unchanged), so a resumed run has the layers its checkpoint's weights fill."""
        lm = model.backbone.lm
        targets = [
            (name, module)
            for name, module in lm.named_modules()
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in self.targets
        ]
        if not targets:
            raise ValueError(f"MoELoRA: no linear of the LLM is named {list(self.targets)}")
        for name, linear in targets:
            parent = lm.get_submodule(name.rsplit(".", 1)[0]) if "." in name else lm
            setattr(parent, name.rsplit(".", 1)[-1], MoELoRALinear(linear, self.experts, self.r, self.alpha))

    def before_task(self, model, task_id) -> None:
        if not model.cfg.backbone.freeze:
            raise ValueError(
                "MoELoRA needs `model.backbone.freeze: true`: the experts are what the tasks tune"
            )
        for layer in moe_layers(model):  # the runner froze the backbone, experts included
            for parameter in (layer.lora_A, layer.lora_B, *layer.router.parameters()):
                parameter.requires_grad_(True)
