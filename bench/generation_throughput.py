"""Image generation throughput: all prompts of a task denoised in one sampling loop vs one
prompt at a time, on the same generator.

The any-to-any config's generator (``model.generator``: the committed tiny one) draws the
test samples of the synthetic stream's generation tasks, conditioned on its text encoder's
encoding of their captions (what the Output Projector is aligned to). Batched: batches of
``--batch-size`` through ``ModalityGenerator.sample``, as evaluation runs them; one at a
time: the same conditionings singly. Each image's noise comes from its own seeded
generator, so both sides must draw the same images: the largest pixel difference is
printed. The sides alternate over several rounds; the median ratio is reported.

Run: ``python bench/generation_throughput.py [--samples 100 --batch-size 100 --rounds 3]``
"""

from __future__ import annotations

import statistics
import time

import torch
from common import alternating_rounds, bench_parser, load

from contmm.model.generator import ModalityGenerator
from contmm.scoring.images import generates_images, image_noise


def draw(generator: ModalityGenerator, conditioning: torch.Tensor, ids: list[str], batch_size: int):
    """Every image, ``batch_size`` at a time, and the seconds taken."""
    images = []
    start = time.perf_counter()
    for i in range(0, len(ids), batch_size):
        noise = [image_noise(0, sample_id) for sample_id in ids[i : i + batch_size]]
        images.append(generator.sample(conditioning[i : i + batch_size], noise))
    return torch.cat(images), time.perf_counter() - start


def main() -> None:
    parser = bench_parser(__doc__.split("\n")[0])
    parser.set_defaults(config="experiments/seq_any2any.yaml")
    parser.add_argument(
        "--samples", type=int, default=100, help="test prompts, taken in turn from each generation task"
    )
    parser.add_argument("--batch-size", type=int, default=100, help="images denoised together")
    parser.add_argument("--rounds", type=int, default=3, help="alternating batched / one-at-a-time rounds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model_cfg, stream, _ = load(args.config)
    generator = ModalityGenerator(model_cfg.generator).eval()
    tasks = [task for task in stream.tasks if generates_images(task.scorer)]
    per_task = -(-args.samples // len(tasks))
    samples = [task.test.text(i) for i in range(per_task) for task in tasks][: args.samples]
    ids = [s["id"] for s in samples]
    with torch.no_grad():
        conditioning = generator.encode_captions(generator.caption_ids([s["caption"] for s in samples]))
    print(
        f"{len(samples)} prompts of {[t.name for t in tasks]}, {generator.image_size}x{generator.image_size} "
        f"pixels, {generator.cfg.num_inference_steps} sampler steps, batches of {args.batch_size}, "
        f"{args.rounds} rounds, {torch.get_num_threads()} threads"
    )
    sides = {
        "batched": lambda: draw(generator, conditioning, ids, args.batch_size),
        "one at a time": lambda: draw(generator, conditioning, ids, 1),
    }
    ratios = []
    for r, results in enumerate(alternating_rounds(args.rounds, sides)):
        rate = {name: len(ids) / seconds for name, (_, seconds) in results.items()}
        ratios.append(rate["batched"] / rate["one at a time"])
        difference = (results["batched"][0] - results["one at a time"][0]).abs().max().item()
        print(
            f"round {r}: batched {rate['batched']:.1f} images/s, one at a time {rate['one at a time']:.1f} "
            f"images/s, ratio {ratios[-1]:.1f}x, largest pixel difference {difference:.1e}"
        )
    print(f"generation throughput: ratio {statistics.median(ratios):.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
