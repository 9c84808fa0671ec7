"""Training throughput of ContinualModule under a Lightning Trainer vs a plain PyTorch loop.

Both sides train a fresh copy of the same model (the ``model:`` section of the config,
same seed, the config's trainable components) with AdamW and the same warmup + cosine
schedule, on the same training batches of the synthetic stream's first task, collated
once up front. Only the steps after a warmup are timed: the Lightning side from
``on_train_batch_start`` of the first timed step to ``on_train_batch_end`` of the last
one (Trainer construction and startup excluded), the plain side over the same steps.
The two sides alternate over several rounds (their order flips each round) and the
median of the per-round ratios is reported, since a small shared CPU is noisy.

Run: ``python bench/train_throughput.py [--steps 50 --warmup 10 --rounds 15]``
"""

from __future__ import annotations

import copy
import statistics
import time
from contextlib import nullcontext

import lightning as L
import torch
from common import alternating_rounds, quiet_lightning, training_batches, training_parser
from torch.utils.data import DataLoader

from contmm.model import MMLLM
from contmm.strategy import Strategies
from contmm.training.module import ContinualModule, EvalConfig
from contmm.training.optimizer import OptimizerConfig, build_optimizer

CPU = torch.device("cpu")


class StepTimer(L.Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = time.perf_counter()


def train_lightning(
    model: MMLLM,
    batches: list[dict],
    warmup: int,
    strategies: Strategies | None = None,
    accelerator: str = "cpu",
    precision: str = "32-true",
) -> float:
    """Seconds of the timed steps of a Trainer fit (task 0, so strategy penalties apply)."""
    module = ContinualModule(
        model, strategies or Strategies([]), OptimizerConfig(), EvalConfig(), num_tasks=1
    )
    module.task_id = 0
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, precision=precision, max_steps=len(batches), logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(module, DataLoader(batches, batch_size=None, shuffle=False))
    return timer.end - timer.start


def train_plain(
    model: MMLLM, batches: list[dict], warmup: int, device: torch.device = CPU, autocast=nullcontext
) -> float:
    """The same optimisation (the module's own optimizer and schedule), a hand-written loop;
    ``autocast`` gives the precision context of each forward."""
    model.to(device).train()
    optimizer, scheduler = build_optimizer(model, OptimizerConfig(), len(batches))
    for step, batch in enumerate(batches):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        with autocast():
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    synchronize(device)
    return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so that a timer reads when it is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def max_param_diff(a: MMLLM, b: MMLLM) -> float:
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))


def main() -> None:
    parser = training_parser(__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="alternating Lightning / plain rounds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_lightning()

    template, batches, batch_size = training_batches(args)
    timed_samples = (args.steps - args.warmup) * batch_size
    print(
        f"{args.steps} steps of {batch_size} samples, {args.warmup} untimed, {args.rounds} rounds, "
        f"{sum(p.numel() for p in template.parameters())} parameters, {torch.get_num_threads()} threads"
    )

    def run(train):
        model = copy.deepcopy(template)
        return model, train(model, batches, args.warmup)

    runs = {"lightning": lambda: run(train_lightning), "plain": lambda: run(train_plain)}
    ratios, rates = [], {name: [] for name in runs}
    for r, results in enumerate(alternating_rounds(args.rounds, runs)):
        rate = {name: timed_samples / seconds for name, (_, seconds) in results.items()}
        for name in runs:
            rates[name].append(rate[name])
        ratios.append(rate["lightning"] / rate["plain"])
        diff = max_param_diff(results["lightning"][0], results["plain"][0])
        print(
            f"round {r}: lightning {rate['lightning']:.0f} samples/s, plain {rate['plain']:.0f} samples/s, "
            f"ratio {ratios[-1]:.3f}, max |param diff| {diff:.2e}"
        )

    lightning, plain = statistics.median(rates["lightning"]), statistics.median(rates["plain"])
    print(
        f"train throughput: lightning {lightning:.0f} samples/s, plain loop {plain:.0f} samples/s, "
        f"ratio {statistics.median(ratios):.3f} (target >= 0.95)"
    )


if __name__ == "__main__":
    main()
