"""Evaluation throughput of batched KV-cache greedy decoding vs one sample at a time.

The tiny default model (the ``model:`` section of the config, random init from the seed)
answers test samples of the synthetic stream, taken in turn from each task so that a
batch mixes prompt lengths. Batched: left-padded batches through ``MMLLM.generate``, as
``ContinualModule.test_step`` runs them; per-sample: the same samples one by one. Both
decode the new tokens as test_step does; batches are collated once up front and only
generation + decoding is timed. The two sides alternate over several rounds and the
median of the per-round ratios is reported. Batched left-padded decoding must give the
same predictions as per-sample decoding: the mismatches are counted and printed.

Run: ``python bench/eval_throughput.py [--samples 200 --batch-size 100 --rounds 5]``
"""

from __future__ import annotations

import statistics
import time

import torch
from common import alternating_rounds, bench_parser, load

from contmm.model import MMLLM, model_inputs
from contmm.model.collate import InstructionCollator


def predict(model: MMLLM, batches: list[dict], max_new_tokens: int) -> tuple[list[str], float]:
    """Greedy predictions of every batch (decoded as test_step does) and the seconds taken."""
    predictions = []
    start = time.perf_counter()
    for batch in batches:
        new_tokens = model.generate(model_inputs(batch), max_new_tokens)
        predictions += model.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [p.strip() for p in predictions], time.perf_counter() - start


def main() -> None:
    parser = bench_parser(__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=200, help="test samples, taken in turn from each task")
    parser.add_argument("--batch-size", type=int, default=100, help="prompts per batched generate call")
    parser.add_argument("--max-new-tokens", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5, help="alternating batched / per-sample rounds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model_cfg, stream, _ = load(args.config)
    torch.manual_seed(args.seed)
    model = MMLLM.build(model_cfg, stream.texts()).eval()
    per_task = -(-args.samples // len(stream.tasks))
    samples = [task.test[i] for i in range(per_task) for task in stream.tasks][: args.samples]
    collate = InstructionCollator(model, train=False)
    sides = {
        "batched": [
            collate(samples[i : i + args.batch_size]) for i in range(0, len(samples), args.batch_size)
        ],
        "per-sample": [collate([sample]) for sample in samples],
    }
    widths = [batch["attention_mask"].sum(1) for batch in sides["batched"]]
    print(
        f"{len(samples)} samples, batches of {args.batch_size}, prompt lengths "
        f"{min(int(w.min()) for w in widths)}-{max(int(w.max()) for w in widths)} tokens, "
        f"max_new_tokens {args.max_new_tokens}, {args.rounds} rounds, {torch.get_num_threads()} threads"
    )

    ratios, rates = [], {name: [] for name in sides}
    runs = {
        name: (lambda b=batches: predict(model, b, args.max_new_tokens)) for name, batches in sides.items()
    }
    for r, results in enumerate(alternating_rounds(args.rounds, runs)):
        predictions = {name: result[0] for name, result in results.items()}
        rate = {name: len(samples) / result[1] for name, result in results.items()}
        for name in sides:
            rates[name].append(rate[name])
        ratios.append(rate["batched"] / rate["per-sample"])
        print(
            f"round {r}: batched {rate['batched']:.0f} samples/s, per-sample {rate['per-sample']:.0f} samples/s, "
            f"ratio {ratios[-1]:.1f}x"
        )

    batched, single = statistics.median(rates["batched"]), statistics.median(rates["per-sample"])
    print(
        f"eval throughput: batched {batched:.0f} samples/s, per-sample {single:.0f} samples/s, "
        f"ratio {statistics.median(ratios):.1f}x (target >= 5x)"
    )
    mismatches = [
        (sample["id"], b, s)
        for sample, b, s in zip(samples, predictions["batched"], predictions["per-sample"])
        if b != s
    ]
    print(f"predictions: {len(mismatches)} of {len(samples)} differ between batched and per-sample")
    for sample_id, b, s in mismatches[:5]:
        print(f"  {sample_id}: batched {b!r} vs per-sample {s!r}")


if __name__ == "__main__":
    main()
