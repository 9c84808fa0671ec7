"""Shared fixtures: a tiny model, a small synthetic stream, the repository as working directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from contmm.model import MMLLM
from streams.synthetic import SyntheticShapes
from tests.helpers import REPO, tiny_config
from tests.llava_files import write_image


@pytest.fixture
def stream() -> SyntheticShapes:
    return SyntheticShapes(tasks=["colour", "count"], train_size=16, test_size=8, pretrain_size=8)


@pytest.fixture
def model(stream) -> MMLLM:
    torch.manual_seed(0)
    return MMLLM.build(tiny_config(), stream.texts()).eval()


@pytest.fixture
def root(tmp_path) -> Path:
    """An image root with one red and one blue 8x8 PNG (LLaVA stream tests)."""
    images = tmp_path / "images"
    write_image(images / "red.png", "red")
    write_image(images / "sub/blue.png", "blue")
    return images


@pytest.fixture(autouse=True)
def image_check_cache(tmp_path, monkeypatch) -> Path:
    """Each test's own cache of image checks and parsed stream files (streams/media_checks.py,
    streams/stream_cache.py), not the user's; the environment variable reaches the DDP
    processes a test starts."""
    cache = tmp_path / "contmm_cache"
    monkeypatch.setenv("CONTMM_CACHE", str(cache))
    return cache


@pytest.fixture
def in_repo(monkeypatch):
    """Run from the repository root: configs name experiments/ relative to it."""
    monkeypatch.chdir(REPO)
