"""The distributed chores of a run, written once: sums over ranks, gathering, status lines.

Under DDP the whole continual loop runs on every rank (Lightning re-launches the command),
so each helper here is called on every rank; in a single process each is a no-op.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_only


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Replace each tensor by its sum over the ranks, in place."""
    if is_distributed():
        for tensor in tensors:
            dist.all_reduce(tensor)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


@rank_zero_only
def status(message: str) -> None:
    """A status line on stdout, printed by rank 0 only."""
    print(message)
