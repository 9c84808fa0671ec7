"""Sharded training with FSDP2 (``trainer.strategy: fsdp2``): each fit trains a sharded
copy of the model, and the model is whole again between fits.

The continual loop changes the model between stages (a strategy adds an adapter or a
projector, EWC reads every weight after a task, a checkpoint saves them, evaluation
decodes with them), and everything that does so expects plain tensors. So each fit shards
a *structural copy* of the model (new module objects holding the same parameters; torch's
``fully_shard`` then replaces the copy's parameters by DTensor shards), the originals'
storage is freed while the copy trains, and at the fit's end each original parameter gets
its trained values back, gathered from the shards: the same ``nn.Parameter`` objects, so
whatever holds them (the strategies, the checkpoint's list of untrained tensors) stays
right. Evaluation decodes with the whole model on every device, as under DDP.

The units sharded are the transformer blocks the models name in ``_no_split_modules`` (what
transformers' own FSDP wrapping uses), then the rest of the model as the root unit.
Lightning's ``ModelParallelStrategy`` runs it (on GPUs with NCCL, on the CPU with gloo), with
every process in one data-parallel group and Lightning's in-progress checkpoints saved
whole.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from contmm.strategy import Strategies

STRATEGY_NAME = "fsdp2"


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over every process (data parallel only); checkpoints saved as one whole file."""

    def __init__(self, **kwargs) -> None:
        super().__init__(save_distributed_checkpoint=False, **kwargs)

    def setup_environment(self) -> None:
        # One data-parallel group of all processes, no tensor parallelism: what FSDP is.
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()


if STRATEGY_NAME not in StrategyRegistry:
    StrategyRegistry.register(
        STRATEGY_NAME,
        FSDP2Strategy,
        description="contmm's FSDP2: parameters, gradients and AdamW state sharded",
    )


def check_can_shard(trainer_strategy: object, strategies: Strategies, quantization: str | None) -> None:
    """Under ``fsdp2``, refuse before the model is built the strategies whose penalty reads
    whole weights, and quantised weights."""
    if trainer_strategy != STRATEGY_NAME:
        return
    strategies.check_sharded(STRATEGY_NAME)
    if quantization:
        raise ValueError(
            f"model.quantization {quantization!r} and trainer.strategy {STRATEGY_NAME!r}: quantised "
            "weights cannot be sharded; use ddp"
        )


def structural_copy(module: nn.Module) -> nn.Module:
    """New module objects with the same parameters and buffers: sharding the copy leaves the
    original's modules (their classes, hooks and parameters) as they were."""
    copies: dict[int, nn.Module] = {}

    def copy_of(m: nn.Module) -> nn.Module:
        if id(m) not in copies:
            new = m.__class__.__new__(m.__class__)
            # Every dict (parameters, buffers, hooks) copied, the rest shared: fully_shard's
            # new parameters and hooks land in the copy's dicts only.
            new.__dict__.update(
                {k: copy.copy(v) if isinstance(v, dict) else v for k, v in m.__dict__.items()}
            )
            copies[id(m)] = new
            new._modules = OrderedDict((k, None if c is None else copy_of(c)) for k, c in m._modules.items())
            # A module kept as a plain attribute (a view over registered ones, as the whole
            # checkpoint's ``backbone``) must be the copy's view too.
            for k, v in m.__dict__.items():
                if isinstance(v, nn.Module):
                    new.__dict__[k] = copy_of(v)
        return copies[id(m)]

    return copy_of(module)


def block_names(model: nn.Module) -> set[str]:
    """The class names of the transformer blocks of every transformers model inside."""
    return {name for m in model.modules() for name in getattr(m, "_no_split_modules", None) or ()}


class ShardedCopy:
    """A sharded copy of ``model`` on ``mesh`` (``module``); ``restore`` puts the trained
    values back into the model's own parameters."""

    def __init__(self, model: nn.Module, mesh) -> None:
        self.model = model
        self.module = structural_copy(model)
        # (copy's module, parameter name) -> the model's parameter it stands for.
        self.originals = {
            (copied, name): p
            for copied, original in zip(self.module.modules(), model.modules())
            for name, p in original.named_parameters(recurse=False)
        }
        blocks = block_names(model)
        for m in list(self.module.modules()):
            if type(m).__name__ in blocks:
                fully_shard(m, mesh=mesh)
        fully_shard(self.module, mesh=mesh)
        for p in self.originals.values():
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)  # the shards hold it now

    def restore(self) -> nn.Module:
        """Gather every parameter (a collective: every rank calls it) into the model's own."""
        for (copied, name), original in self.originals.items():
            sharded = copied._parameters[name]
            original.data = sharded.full_tensor() if isinstance(sharded, DTensor) else sharded.data
        return self.model


def local_part(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``tensor`` (whole, the same on every rank) where the parameter
    ``like`` is sharded; ``tensor`` itself otherwise."""
    if not isinstance(like, DTensor):
        return tensor
    return distribute_tensor(tensor, like.device_mesh, like.placements, src_data_rank=None).to_local()


def whole(param: torch.Tensor) -> torch.Tensor:
    """``param`` whole on every rank (gradients flow back to each rank's shard); ``param`` if
    not sharded. For small weights (LoRA matrices): a big one costs its full size."""
    return param.full_tensor() if isinstance(param, DTensor) else param


def local(param: torch.Tensor) -> torch.Tensor:
    """This rank's shard of ``param`` (gradients flow back to it); ``param`` if not sharded."""
    return param.to_local() if isinstance(param, DTensor) else param


def summed_over_shards(value: torch.Tensor) -> torch.Tensor:
    """``value``, a sum over this rank's shards, with the value of the sum over every rank's
    and the gradient of this rank's part alone: each rank's shards get exactly their part
    of the gradient (FSDP averages over ranks the gradient of the loss, not of this)."""
    total = value.detach().clone()
    dist.all_reduce(total)
    return value + (total - value.detach())
