"""What the tests share: tiny model configs, the tiny run, and ways to run, break and crash
`contmm fit`. Fixtures live in ``conftest.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from contmm.cli import main
from contmm.model import BackboneConfig, EncoderConfig, ModelConfig, ProjectorConfig
from contmm.model.collate import InstructionCollator
from contmm.training.module import ContinualModule

REPO = Path(__file__).resolve().parents[1]

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


def start(model, strategy, task_id: int) -> None:
    """What the runner does before a stage: the config's trainability, then the hook."""
    model.set_trainable(model.configured_trainable())
    strategy.before_task(model, task_id)


def train_steps(model, batch: dict, steps: int = 5) -> None:
    """A few AdamW steps on one batch over what is trainable now."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()


def train_loader(model, task, size: int = 16) -> DataLoader:
    samples = [task.train[i] for i in range(size)]
    return DataLoader(samples, batch_size=8, collate_fn=InstructionCollator(model, train=True))


def run_fit(*args: str, **env: str) -> subprocess.CompletedProcess:
    """`contmm fit ARGS` in a process of its own (DDP launches more, Ctrl-C reaches only it),
    from the repository root, with ``env`` added to the environment."""
    return subprocess.run(
        [sys.executable, "-m", "contmm.cli", "fit", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **env},
    )


def run_files(out: Path, pattern: str) -> dict:
    """The bytes of every file under run directory ``out`` matching ``pattern``, by relative path."""
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.glob(pattern)) if p.is_file()}


def fit_error(capsys, *args: str) -> str:
    """What `contmm fit ARGS` prints on stderr when it fails, checked to be one message: no
    traceback, no usage dump."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args])
    assert exit_info.value.code != 0
    message = capsys.readouterr().err
    assert "Traceback" not in message and "usage:" not in message
    return message


def crash_in_training(monkeypatch, task_id: int, epoch: int | None = None) -> None:
    """Make training raise in task ``task_id``'s stage (in its epoch ``epoch``, 0-based, or at
    its first step), as a crash or a kill would stop it."""
    training_step = ContinualModule.training_step

    def crashing(self, batch, batch_idx):
        if self.task_id == task_id and epoch in (None, self.current_epoch):
            raise RuntimeError(f"injected crash in stage {task_id + 1}")
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(ContinualModule, "training_step", crashing)


def crash_in_evaluation(monkeypatch, task_id: int) -> None:
    """Make the evaluation after task ``task_id``'s stage raise: a kill after its training."""
    test_step = ContinualModule.test_step

    def crashing(self, batch, batch_idx, dataloader_idx=0):
        if self.task_id == task_id:
            raise RuntimeError(f"injected crash in the evaluation after stage {task_id + 1}")
        return test_step(self, batch, batch_idx, dataloader_idx)

    monkeypatch.setattr(ContinualModule, "test_step", crashing)


def truncate(file: Path) -> None:
    """Cut ``file`` to half its size, as an interrupted download, copy or full disk leaves it."""
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
