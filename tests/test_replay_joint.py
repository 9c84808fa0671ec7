"""Replay's memory (Avalanche storage policies) and joint training's data."""

import pytest

from strategies.joint import Joint
from strategies.replay import Replay
from streams.synthetic import SyntheticShapes


@pytest.fixture
def stream():
    return SyntheticShapes(tasks=["colour", "shape", "count"], train_size=50, test_size=5, pretrain_size=0)


def _run_stream(replay, stream, stages):
    """Drive the hooks as the runner does; return each stage's training-set size."""
    sizes = []
    for task_id, task in enumerate(stream.tasks[:stages]):
        data = replay.train_data(task_id, task.train)
        sizes.append(len(data))
        replay.after_task(None, task_id, None)
    return sizes


def _memory_ids(replay):
    return [replay.memory[i]["id"] for i in range(len(replay.memory))]


def test_memory_is_mixed_into_later_stages_and_balanced_over_past_tasks(stream):
    replay = Replay(memory_size=20)
    assert _run_stream(replay, stream, 3) == [50, 50 + 20, 50 + 20]
    by_task = {}
    for sample_id in _memory_ids(replay):
        by_task[sample_id.split("-")[0]] = by_task.get(sample_id.split("-")[0], 0) + 1
    assert by_task == {"colour": 7, "shape": 7, "count": 6}
    assert all("-train-" in sample_id for sample_id in _memory_ids(replay))


def test_reservoir_memory_never_exceeds_its_size(stream):
    replay = Replay(memory_size=30, policy="reservoir")
    _run_stream(replay, stream, 3)
    assert len(replay.memory) == 30
    assert len(set(_memory_ids(replay))) == 30


def test_the_same_seed_keeps_the_same_memory_whatever_the_global_rng(stream):
    import torch

    first, second, other = Replay(memory_size=12), Replay(memory_size=12), Replay(memory_size=12, seed=5)
    _run_stream(first, stream, 2)
    torch.manual_seed(1234)  # another rank, or a resumed run, has another global RNG state
    _run_stream(second, stream, 2)
    _run_stream(other, stream, 2)
    assert _memory_ids(first) == _memory_ids(second)
    assert _memory_ids(first) != _memory_ids(other)


def test_a_memory_size_of_zero_is_refused():
    with pytest.raises(ValueError, match="memory_size"):
        Replay(memory_size=0)


def test_joint_trains_each_stage_on_every_task_so_far(stream):
    joint = Joint()
    joint.setup(None, stream)
    data = joint.train_data(2, stream.tasks[2].train)
    assert len(data) == 150
    assert {data[i]["id"].split("-")[0] for i in range(0, 150, 10)} == {"colour", "shape", "count"}
