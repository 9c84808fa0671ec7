"""EWC's training step time as a ratio to naive's, and the memory EWC keeps.

Both sides train a fresh copy of the same model under a Lightning Trainer on the same
batches; the EWC side carries one task's Fisher and anchor (computed once up front on
``--fisher-batches`` batches), so every step adds the penalty (λ/2)·ΣF(θ−θ*)² and its
gradient. The sides alternate over several rounds and the median ratio is reported.
Memory: EWC stores two tensors per *trainable* parameter per task, printed against the
model's trainable and total parameter counts.

Run: ``python bench/ewc_step.py [--steps 50 --warmup 10 --rounds 9]``
"""

from __future__ import annotations

import copy
import statistics

import torch
from common import alternating_rounds, quiet_lightning, training_batches, training_parser
from train_throughput import train_lightning

from contmm.strategy import Strategies
from strategies.ewc import EWC


def main() -> None:
    parser = training_parser(__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="alternating naive / EWC rounds")
    parser.add_argument("--fisher-batches", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_lightning()

    template, batches, batch_size = training_batches(args)
    ewc = EWC(fisher_batches=args.fisher_batches)
    ewc.after_task(template, 0, batches)
    stored = sum(t.numel() for state in (*ewc.fishers, *ewc.anchors) for t in state.values())
    trainable = sum(p.numel() for p in template.parameters() if p.requires_grad)
    total = sum(p.numel() for p in template.parameters())
    print(f"EWC stores {stored} values for one task = 2 x {trainable} trainable parameters (model: {total})")

    timed = (args.steps - args.warmup) * batch_size

    def run(strategies: Strategies) -> float:
        return train_lightning(copy.deepcopy(template), batches, args.warmup, strategies)

    sides = {"naive": lambda: run(Strategies([])), "ewc": lambda: run(Strategies([copy.deepcopy(ewc)]))}
    ratios = []
    for r, seconds in enumerate(alternating_rounds(args.rounds, sides)):
        ratios.append(seconds["ewc"] / seconds["naive"])
        print(
            f"round {r}: naive {timed / seconds['naive']:.0f} samples/s, "
            f"ewc {timed / seconds['ewc']:.0f} samples/s, step time ratio {ratios[-1]:.3f}"
        )
    print(f"ewc step time / naive step time: {statistics.median(ratios):.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
