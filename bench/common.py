"""What the benchmarks share: their common options, and the experiment config they build."""

from __future__ import annotations

import argparse
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
import yaml
from jsonargparse import ArgumentParser

from contmm.model import MMLLM, ModelConfig
from contmm.model.collate import InstructionCollator
from contmm.stream import TaskStream

T = TypeVar("T")


def load(config_path: str) -> tuple[ModelConfig, TaskStream, dict]:
    """The ``model:`` and ``stream:`` sections built, and the raw config for the rest."""
    with open(config_path) as f:
        raw = yaml.safe_load(f)
    parser = ArgumentParser()
    parser.add_class_arguments(ModelConfig, "model")
    parser.add_subclass_arguments(TaskStream, "stream")
    init = parser.instantiate(parser.parse_object({"model": raw["model"], "stream": raw["stream"]}))
    return init.model, init.stream, raw


def bench_parser(description: str) -> argparse.ArgumentParser:
    """``--config``, ``--threads`` and ``--seed``, which every benchmark takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default="experiments/seq_vqa.yaml")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (more than the free cores makes OpenMP spin and stall)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser


def training_parser(description: str) -> argparse.ArgumentParser:
    """The common options plus those of the training benchmarks."""
    parser = bench_parser(description)
    parser.add_argument("--steps", type=int, default=50, help="training steps per run")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="samples per step (default: the config's)"
    )
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps at the start of each run")
    return parser


def quiet_lightning() -> None:
    """Keep Trainer start-up chatter out of the benchmark's output."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def training_batches(args: argparse.Namespace) -> tuple[MMLLM, list[dict], int]:
    """The seeded model (config's trainability) and ``args.steps`` collated first-task batches."""
    model_cfg, stream, raw = load(args.config)
    batch_size = args.batch_size or raw["data"]["batch_size"]
    torch.manual_seed(args.seed)
    model = MMLLM.build(model_cfg, stream.texts())
    model.set_trainable(model.configured_trainable())
    dataset = stream.tasks[0].train
    collate = InstructionCollator(model, train=True)
    batches = [
        collate([dataset[(step * batch_size + i) % len(dataset)] for i in range(batch_size)])
        for step in range(args.steps)
    ]
    return model, batches, batch_size


def alternating_rounds(rounds: int, sides: dict[str, Callable[[], T]]) -> Iterator[dict[str, T]]:
    """Each round runs every side once and yields their results by name; the order flips
    every round so that a drift of the shared CPU does not favour one side."""
    for r in range(rounds):
        names = list(sides) if r % 2 == 0 else list(reversed(sides))
        yield {name: sides[name]() for name in names}
