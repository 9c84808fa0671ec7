"""MoELoRA (``strategies/moelora.py``): LoRA experts with a learned router on the frozen LLM."""

import json

import pytest
import torch

from strategies.moelora import MoELoRA, MoELoRALinear, moe_layers
from tests.helpers import TINY_RUN, run_fit, start, train_loader, train_steps


def test_a_moe_layer_adds_the_router_weighted_sum_of_its_experts_updates():
    torch.manual_seed(0)
    layer = MoELoRALinear(torch.nn.Linear(6, 5), experts=3, r=2, alpha=4.0)
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(2, 7, 6)
    gates = torch.softmax(layer.router(x), -1)
    by_hand = layer.base(x) + sum(
        2.0 * gates[..., e : e + 1] * (x @ layer.lora_A[e].T @ layer.lora_B[e].T) for e in range(3)
    )
    torch.testing.assert_close(layer(x), by_hand)


def test_the_wrapped_model_starts_as_the_base_and_only_experts_and_routers_learn(model, stream):
    model.cfg.backbone.freeze = model.cfg.input_projector.freeze = True
    batch = next(iter(train_loader(model, stream.tasks[0])))
    with torch.no_grad():
        base_logits = model(**batch).logits
    moe = MoELoRA(experts=2, r=4)
    moe.setup(model, stream)
    layers = moe_layers(model)
    layer_count = model.backbone.lm.config.num_hidden_layers
    assert len(layers) == 7 * layer_count  # every projection (q k v o gate up down) of every layer
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, base_logits)  # B = 0: the base model
    start(model, moe, 0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B", "router.weight")) for n in trainable)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if ".base." in n}
    train_steps(model, batch, steps=3)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if ".base." in n)
    assert all(layer.lora_B.abs().sum() > 0 for layer in layers)


def test_moelora_needs_a_frozen_backbone(model, stream):
    moe = MoELoRA()
    moe.setup(model, stream)
    model.cfg.backbone.freeze = False
    with pytest.raises(ValueError, match="backbone.freeze: true"):
        moe.before_task(model, 0)


@pytest.mark.slow
def test_moelora_runs_under_two_process_ddp(tmp_path):
    out = tmp_path / "run"
    done = run_fit(
        *TINY_RUN, "--config", "experiments/moelora.yaml", "--output_dir", str(out),
        "--trainer.devices", "2", "--trainer.strategy", "ddp",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["env"]["world_size"] == 2 and results["strategies"] == "MoELoRA"
    assert all(results["matrix"][j + 1][j] is not None for j in range(2))
