"""The memory estimate printed before a run: weights, gradients and AdamW state per device."""

import pytest

from contmm.training.memory import estimate

MiB = 2**20


def test_the_estimate_counts_weights_and_the_trainable_parts_gradients_and_adamw_moments(model):
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in [*model.input_projector.parameters(), *model.backbone.parameters()])
    memory = estimate(model, ["input_projector", "backbone"], {"devices": 1})
    assert (memory.parameters, memory.trainable) == (parameters, trainable)
    assert memory.weight_bytes == memory.weights_per_device == 4 * parameters  # float32
    assert (memory.gradient_bytes, memory.optimizer_bytes) == (4 * trainable, 8 * trainable)
    assert memory.per_device == 4 * parameters + 12 * trainable
    line = memory.describe("each stage")
    assert f"{memory.per_device / MiB:.1f} MiB" in line and "activations not included" in line


@pytest.mark.parametrize(
    ("trainer", "processes", "weights_share", "state_share"),
    [
        ({"strategy": "ddp", "devices": 2}, 2, 1, 1),  # DDP: everything on every device
        ({"strategy": "deepspeed_stage_2", "devices": [0, 1], "num_nodes": 2}, 4, 1, 4),
        ({"strategy": "fsdp2", "devices": "0,1"}, 2, 2, 2),
        ({"strategy": "deepspeed_stage_2_offload", "devices": 2}, 2, 1, 2),
        ({"devices": "auto"}, 1, 1, 1),
    ],
)
def test_sharding_divides_what_it_shards_over_the_processes(
    model, trainer, processes, weights_share, state_share
):
    alone = estimate(model, ["backbone"], {})
    sharded = estimate(model, ["backbone"], trainer)
    assert sharded.processes == processes
    assert sharded.weights_per_device == alone.weights_per_device // weights_share
    assert sharded.gradient_bytes == alone.gradient_bytes // state_share
    assert sharded.optimizer_bytes == alone.optimizer_bytes // state_share
