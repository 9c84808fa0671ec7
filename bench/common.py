"""What the benchmarks share: their common options, and the experiment config they build."""

from __future__ import annotations

import argparse

import yaml
from jsonargparse import ArgumentParser

from contmm.model import ModelConfig
from contmm.stream import TaskStream


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
