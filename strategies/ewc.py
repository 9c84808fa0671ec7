"""Elastic Weight Consolidation (Kirkpatrick et al. 2017), over the trainable parameters only.

After each task the diagonal empirical Fisher of the *trainable* parameters is estimated
on ``fisher_batches`` training batches, averaged over DDP ranks; later stages pay
(λ/2)·Σ F·(θ − θ*)². Memory is O(trainable parameters): a frozen LLM backbone is never
copied. Parameters that did not exist when a Fisher was computed (a new adapter or
projector) are not penalised by it.

Fisher: ``sample`` is the empirical Fisher of the paper, the mean over training samples of
each sample's squared gradient (of its mean answer-token loss; one backward pass per
sample). ``batch`` squares the gradient of each batch's mean loss instead (one backward
pass per batch, as many libraries do): at a minimum the samples' gradients cancel in the
mean, so it is orders of magnitude smaller and needs a λ to match.

``normalise`` scales each task's Fisher to mean 1 over the weights it covers. An empirical
Fisher is a squared gradient of the training loss, so its scale follows how well the task
was fit: on the default stream the first task (fit to a near-zero loss) gets a Fisher 10⁵
times smaller than the next one (fit under the penalty, whose pull leaves the loss gradient
non-zero), and a λ that protects the first freezes everything after the second (the
EWC study, docs/studies/ewc.md). Normalised, λ weighs every task alike.

Under ``trainer.strategy: fsdp2`` the Fisher is computed on the whole model after the fit
(as under DDP) and the penalty on each rank's shards of the weights.

Modes: ``separate`` keeps one (Fisher, anchor) pair per past task; ``online`` (Schwarz et
al. 2018) keeps one running Fisher, decayed by ``decay`` each task, anchored at the latest
weights.
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch.distributed.tensor import DTensor

from contmm.scoring.images import generates_images
from contmm.strategy import Strategy
from contmm.training.distributed import all_reduce_sum
from contmm.training.sharding import local, local_part, summed_over_shards


class _FisherQuadratic(torch.autograd.Function):
    """Σ F·(θ − θ*)² over many tensors and its gradient 2F·(θ − θ*), in a few fused
    ``_foreach`` calls: per-tensor autograd ops cost more than the arithmetic on a small
    model (about 3.3 against 2.0 ms a step for 480 K weights in 32 tensors, one CPU thread)."""

    @staticmethod
    def forward(ctx, fishers, anchors, *params):
        diffs = torch._foreach_sub(params, anchors)
        weighted = torch._foreach_mul(diffs, fishers)
        ctx.save_for_backward(*weighted)
        return torch.stack([torch.dot(w.flatten(), d.flatten()) for w, d in zip(weighted, diffs)]).sum()

    @staticmethod
    def backward(ctx, grad):
        return None, None, *torch._foreach_mul(ctx.saved_tensors, 2 * grad)


class EWC(Strategy):
    """EWC: a quadratic pull toward each past task's weights, weighted by its Fisher.

    Args:
        ewc_lambda: weight λ of the penalty.
        mode: ``separate`` or ``online``.
        decay: online mode only: the factor γ applied to the running Fisher before a task's is
            added (default 1).
        fisher_batches: training batches (per rank) the Fisher is estimated from.
        fisher: ``sample`` (mean of per-sample squared gradients) or ``batch`` (mean of
            squared batch gradients).
        normalise: scale each task's Fisher to mean 1 (the defaults, λ = 1000 on a
            normalised sample Fisher, gave the best ACC of the sweep of docs/studies/ewc.md).
    """

    # Each copy keeps its own Fishers and adds its own penalty (e.g. two modes or lambdas).
    once_per_run = False

    def __init__(
        self,
        ewc_lambda: float = 1000.0,
        mode: Literal["separate", "online"] = "separate",
        decay: float | None = None,
        fisher_batches: int = 50,
        fisher: Literal["sample", "batch"] = "sample",
        normalise: bool = True,
    ) -> None:
        if decay is not None and mode != "online":
            raise ValueError(f"EWC.decay ({decay}) applies to mode 'online' only; mode is {mode!r}")
        self.ewc_lambda, self.mode, self.fisher_batches = ewc_lambda, mode, fisher_batches
        self.per_sample, self.normalise = fisher == "sample", normalise
        self.decay = 1.0 if decay is None else decay
        # Per consolidated task t (separate), or one running pair (online): the diagonal
        # Fisher F_t and the anchor θ*_t, the weights the task ended with.
        self.fishers: list[dict[str, torch.Tensor]] = []
        self.anchors: list[dict[str, torch.Tensor]] = []
        self._terms: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] | None = None

    def setup(self, model, stream) -> None:
        if self.per_sample and (drawn := [t.name for t in stream.tasks if generates_images(t.scorer)]):
            # The Output Projector's objectives (alignment, denoising) are batch means, not a
            # loss per sample: a sample Fisher would leave the projector unprotected.
            raise ValueError(
                f"EWC(fisher='sample') squares each sample's answer-token loss gradient; the "
                f"generation tasks {drawn} train the Output Projector through batch objectives "
                "it does not cover: use fisher: batch on this stream"
            )

    def before_task(self, model, task_id) -> None:
        self._terms = None  # trainability and parameters may have changed: re-pair lazily

    def penalty(self, model, batch, outputs) -> torch.Tensor | None:
        """(λ/2) Σ_t Σ_i F_t,i (θ_i − θ*_t,i)² over the parameters trainable now."""
        if self._terms is None:
            params = dict(model.named_parameters())
            # .to: a resumed run loads the Fisher on the CPU, the model may be on a GPU.
            # local_part: under fsdp2 each rank pays for its own shards of the weights.
            self._terms = [
                (p, local_part(fisher[name].to(p.device), p), local_part(anchor[name].to(p.device), p))
                for fisher, anchor in zip(self.fishers, self.anchors)
                for name in fisher
                if (p := params.get(name)) is not None and p.requires_grad
            ]
        if not self._terms:
            return None
        params, fishers, anchors = zip(*self._terms)
        value = _FisherQuadratic.apply(fishers, anchors, *map(local, params))
        if isinstance(params[0], DTensor):
            value = summed_over_shards(value)
        return 0.5 * self.ewc_lambda * value

    def after_task(self, model, task_id, dataloader) -> None:
        fisher = self.fisher(model, dataloader)
        if self.normalise:
            mean = sum(float(v.sum()) for v in fisher.values()) / sum(v.numel() for v in fisher.values())
            fisher = {n: v / mean for n, v in fisher.items()} if mean > 0 else fisher
        anchor = {n: p.detach().clone() for n, p in model.named_parameters() if n in fisher}
        if self.mode == "online" and self.fishers:
            # Schwarz et al.: F ← γ F + F_task, anchored at the latest weights alone.
            (running,) = self.fishers
            fisher = {n: v + self.decay * running[n] if n in running else v for n, v in fisher.items()}
            self.fishers, self.anchors = [], []
        self.fishers.append(fisher)
        self.anchors.append(anchor)
        self._terms = None

    def fisher(self, model, dataloader) -> dict[str, torch.Tensor]:
        """Diagonal empirical Fisher of the trainable parameters, averaged over ranks."""
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        device = next(iter(params.values())).device
        terms = 0  # samples (sample Fisher) or batches (batch Fisher)
        with torch.enable_grad():
            for batches, batch in enumerate(dataloader):
                if batches == self.fisher_batches:
                    break
                batch = move_data_to_device(batch, device)
                outputs = model(**batch)
                losses = sample_losses(outputs.logits, batch["labels"]) if self.per_sample else [outputs.loss]
                for i, loss in enumerate(losses):
                    grads = torch.autograd.grad(
                        loss, list(params.values()), retain_graph=i < len(losses) - 1, allow_unused=True
                    )
                    for name, grad in zip(params, grads):
                        if grad is not None:
                            fisher[name] += grad.detach().pow(2)
                terms += len(losses)
        count = torch.tensor(float(terms), device=device)
        all_reduce_sum(*fisher.values(), count)
        return {n: v / count for n, v in fisher.items()}

    def state_dict(self, model) -> dict:
        return {"fishers": self.fishers, "anchors": self.anchors}

    def load_state_dict(self, state: dict, model) -> None:
        self.fishers, self.anchors = state["fishers"], state["anchors"]
        self._terms = None


def sample_losses(logits: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """Each sample's mean next-token loss over its answer tokens (samples without any are
    left out): the terms whose gradients the sample Fisher squares."""
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none"
    )
    tokens = (labels[:, 1:] != -100).sum(1)
    return [nll[i].sum() / tokens[i] for i in range(len(tokens)) if tokens[i] > 0]
