"""The single-task reference strategy: each task starts again from the same weights."""

import torch

from strategies.single_task import SingleTask
from tests.helpers import start, train_loader, train_steps


def test_every_task_starts_from_the_weights_the_first_one_started_from(model, stream):
    model.cfg.encoder.freeze = True
    reference = SingleTask()
    reference.setup(model, stream)
    assert set(reference.start) == {"input_projector", "backbone"}  # the frozen encoder is not kept
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    start(model, reference, 0)
    train_steps(model, next(iter(train_loader(model, stream.tasks[0]))))
    assert not torch.equal(model.backbone.lm.lm_head.weight, before["backbone.lm.lm_head.weight"])
    start(model, reference, 1)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
