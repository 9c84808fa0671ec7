"""Data loading defaults: DataLoader workers where they pay."""

import pytest

from contmm.training.data import DataConfig
from contmm.training.environment import usable_cores


def test_workers_default_to_none_on_the_cpu_and_to_a_few_per_gpu():
    assert DataConfig().workers(on_gpu=False, devices=1) == 0  # the tiny default: decode in process
    assert DataConfig().workers(on_gpu=True, devices=1) == min(4, usable_cores())
    assert DataConfig().workers(on_gpu=True, devices=10_000) == 1  # more GPUs than cores: one each
    assert DataConfig(num_workers=3).workers(on_gpu=False, devices=1) == 3  # a setting wins
    assert DataConfig(num_workers=0).workers(on_gpu=True, devices=8) == 0


def test_a_negative_worker_count_is_refused():
    with pytest.raises(ValueError, match="data.num_workers must be at least 0, got -1"):
        DataConfig(num_workers=-1)
