"""Learning without Forgetting (Li & Hoiem 2016, arXiv 1606.09282), for instruction tuning.

While a task is tuned, the model's next-token distributions on the answer tokens of the
task's own samples are distilled toward those of the model as it was before the task
(knowledge distillation at temperature T, scaled by T²), so what the model did before
bends less; no sample of an earlier task is stored. The first task is distilled toward the
pre-trained model, which keeps general skills (see the NFT study, docs/studies/nft.md).

The earlier model is not copied: only the trainable parameters are snapshotted at the
start of each task (a LoRA adapter's, say), and its outputs come from the same modules with
the snapshot swapped in (``torch.func.functional_call``), one extra forward per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from contmm.model.collate import IGNORE_INDEX
from contmm.strategy import Strategy


def distillation(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float):
    """KL(teacher ‖ student) at ``temperature``, times T², averaged over the positions that
    predict an answer token (logits at t predict the token at t + 1)."""
    answers = labels[:, 1:] != IGNORE_INDEX
    student, teacher = student[:, :-1][answers].float(), teacher[:, :-1][answers].float()
    kl = F.kl_div(
        F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
        log_target=True, reduction="batchmean",
    )  # fmt: skip
    return kl * temperature**2


class LwF(Strategy):
    """LwF: distil the answers toward the model as it was before the task.

    Args:
        alpha: weight of the distillation term added to the LM loss.
        temperature: softening of both distributions (Hinton et al.'s T; LwF uses 2).
    """

    # Its teacher is a functional_call over the model with the previous weights swapped in,
    # which FSDP's own unsharding would overwrite.
    runs_sharded = False

    def __init__(self, alpha: float = 1.0, temperature: float = 2.0) -> None:
        if alpha < 0 or temperature <= 0:
            raise ValueError(f"LwF: alpha must be >= 0 and temperature > 0, got {alpha} and {temperature}")
        self.alpha, self.temperature = alpha, temperature
        self.previous: dict[str, torch.Tensor] = {}

    def before_task(self, model, task_id) -> None:
        self.previous = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def penalty(self, model, batch, outputs) -> torch.Tensor | None:
        if not self.previous or self.alpha == 0:
            return None
        device = outputs.logits.device
        if next(iter(self.previous.values())).device != device:
            self.previous = {n: t.to(device) for n, t in self.previous.items()}
        with torch.no_grad():
            teacher = functional_call(model, self.previous, args=(), kwargs=batch, strict=False).logits
        return self.alpha * distillation(outputs.logits, teacher, batch["labels"], self.temperature)
