"""A memory estimate printed before a run starts: will the model and its optimizer fit?

Counted per device: the weights (in their own dtypes), the gradients of the trainable
weights (float32, as contmm keeps trained components) and AdamW's two moments per
trainable weight (float32). Sharding divides what it shards by the number of processes:
``deepspeed_stage_2`` the gradients and optimizer state, ``fsdp2`` the weights as well
(in training: ``fsdp2`` gathers the whole model on each device for evaluation).
Activations are not counted (they depend on batch, sequence length and gradient
checkpointing), nor the adapters or projectors a strategy adds at each stage (small next
to the model); an ``_offload`` strategy's state moved to the CPU is still counted on the
device.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch

from contmm.model.components import ComponentModel
from contmm.training.distributed import status

FLOAT32 = 4
# What each Lightning strategy (by name prefix, so *_offload variants too) shards over the
# processes: (weights, gradients + optimizer state).
SHARDED = {"fsdp": (True, True), "deepspeed_stage_2": (False, True)}


class MemoryEstimate(NamedTuple):
    parameters: int
    trainable: int
    weight_bytes: int
    gradient_bytes: int  # per device
    optimizer_bytes: int  # per device
    weights_per_device: int
    processes: int
    strategy: str

    @property
    def per_device(self) -> int:
        return self.weights_per_device + self.gradient_bytes + self.optimizer_bytes

    def describe(self, what: str) -> str:
        return (
            f"memory estimate, {what}: {_count(self.parameters)} parameters ({_size(self.weight_bytes)}), "
            f"{_count(self.trainable)} trainable; per device ({self.strategy}, {self.processes} "
            f"process{'es' if self.processes > 1 else ''}): weights {_size(self.weights_per_device)} + "
            f"gradients {_size(self.gradient_bytes)} + AdamW state {_size(self.optimizer_bytes)} = "
            f"{_size(self.per_device)}, activations not included"
        )


def estimate(model: ComponentModel, trainable: Iterable[str], trainer: dict) -> MemoryEstimate:
    """The estimate for ``model`` with the components ``trainable`` trained, under the
    ``trainer:`` settings (``strategy``, ``devices``, ``num_nodes``)."""
    trainable = set(trainable)
    seen: set[int] = set()
    parameters = trained = weight_bytes = 0
    for name in model.components():
        for tensor in model.component_tensors(name):
            if not isinstance(tensor, torch.nn.Parameter) or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            parameters += tensor.numel()
            weight_bytes += tensor.numel() * tensor.element_size()
            trained += tensor.numel() if name in trainable else 0
    strategy = str(trainer.get("strategy") or "auto")
    processes = _processes(trainer)
    shard_weights, shard_state = next(
        (sharded for prefix, sharded in SHARDED.items() if strategy.startswith(prefix)), (False, False)
    )
    state_share = processes if shard_state else 1
    return MemoryEstimate(
        parameters=parameters,
        trainable=trained,
        weight_bytes=weight_bytes,
        gradient_bytes=trained * FLOAT32 // state_share,
        optimizer_bytes=2 * trained * FLOAT32 // state_share,
        weights_per_device=weight_bytes // (processes if shard_weights else 1),
        processes=processes,
        strategy=strategy,
    )


def _processes(trainer: dict) -> int:
    """Devices × nodes; ``devices: auto`` or -1 counts as 1 (Lightning finds the number)."""
    devices = trainer.get("devices", 1)
    if isinstance(devices, str):
        devices = devices.split(",") if "," in devices else int(devices) if devices.isdigit() else 1
    count = len(devices) if isinstance(devices, (list, tuple)) else devices
    return max(1, count) * max(1, int(trainer.get("num_nodes") or 1))


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.0f} K"


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def print_estimates(model: ComponentModel, trainer: dict, pretraining: list[str] | None) -> None:
    """The estimate of each stage, and of pre-training where it runs (``pretraining``: what
    it trains), printed before the run starts."""
    stages = [("pre-training", pretraining)] if pretraining is not None else []
    for what, trainable in [*stages, ("each stage", model.configured_trainable())]:
        status(estimate(model, trainable, trainer).describe(what))
