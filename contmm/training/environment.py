"""What a result was computed with (package versions, device, world size, global batch), and
what this machine offers."""

from __future__ import annotations

import importlib.metadata
import os
import platform

import lightning as L
import torch

PACKAGES = ("contmm", "torch", "lightning", "transformers", "peft", "avalanche-lib", "torchmetrics")


def environment(trainer: L.Trainer, batch_size: int) -> dict:
    device = trainer.strategy.root_device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    return {
        "python": platform.python_version(),
        "packages": {p: importlib.metadata.version(p) for p in PACKAGES},
        "device": f"{device.type} ({name})",
        "world_size": trainer.world_size,
        "global_batch_size": batch_size * trainer.world_size * trainer.accumulate_grad_batches,
    }


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's share; macOS has no
    affinity call, and counts them all)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
