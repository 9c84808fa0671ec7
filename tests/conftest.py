"""Shared tiny fixtures: a model of a few thousand parameters and a small synthetic stream."""

from __future__ import annotations

import pytest

from contmm.model import MMLLM, BackboneConfig, EncoderConfig, ModelConfig, ProjectorConfig
from streams.synthetic import SyntheticShapes

TINY_ENCODER = {
    "model_type": "clip_vision_model",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 16,
}
TINY_LLM = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 64,
}

# Command-line overrides that shrink the default experiment to a few seconds.
TINY_RUN = [
    "--config",
    "experiments/seq_vqa.yaml",
    "--stream.init_args.tasks",
    "[colour, shape]",
    "--stream.init_args.train_size",
    "32",
    "--stream.init_args.test_size",
    "9",
    "--stream.init_args.pretrain_size",
    "16",
    "--pretrain.max_epochs",
    "1",
    "--trainer.max_epochs",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.log_every_n_steps",
    "1",
    "--data.batch_size",
    "8",
    "--eval.batch_size",
    "4",
]


def tiny_config(kind: str = "mlp") -> ModelConfig:
    return ModelConfig(
        encoder=EncoderConfig(config=dict(TINY_ENCODER), feature_layer=-1),
        input_projector=ProjectorConfig(kind=kind, num_queries=3, num_heads=2),
        backbone=BackboneConfig(config=dict(TINY_LLM)),
    )


@pytest.fixture
def stream() -> SyntheticShapes:
    return SyntheticShapes(tasks=["colour", "count"], train_size=16, test_size=8, pretrain_size=8)


@pytest.fixture
def model(stream) -> MMLLM:
    import torch

    torch.manual_seed(0)
    return MMLLM.build(tiny_config(), stream.texts()).eval()


def start(model, strategy, task_id: int) -> None:
    """What the runner does before a stage: the config's trainability, then the hook."""
    model.set_trainable(model.configured_trainable())
    strategy.before_task(model, task_id)


def train_steps(model, batch: dict, steps: int = 5) -> None:
    """A few AdamW steps on one batch over what is trainable now."""
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
