"""What the benchmarks share: the model config and the stream of an experiment config."""

from __future__ import annotations

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
