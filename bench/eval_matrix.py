"""Evaluation time of a whole run's score matrix: ``eval.matrix: lower`` vs ``full``.

Both sides evaluate every row 0..T of the config's stream with the runner's own
``ContinualRun.evaluate`` (a Lightning ``trainer.test`` per row, batched generation,
predictions and results.json written to a temporary run directory), on one model: the
config's, random init from the seed, with no training in between, since only the cost
of scoring the cells is compared. ``full`` scores (T+1)·T cells, ``lower`` row 0, the
last row, and at row i the i tuned tasks and the next one. The sides alternate over
several rounds; the median ratio is printed with the metrics each side computed.

Run: ``python bench/eval_matrix.py [--rounds 3]``
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import replace

import torch
from common import alternating_rounds, bench_parser, quiet_lightning

from contmm.cli import build_run, fit_parser
from contmm.scoring.matrix import ScoreMatrix
from contmm.scoring.metrics import compute_metrics, tasks_to_evaluate
from contmm.training.runner import ContinualRun


def build(config: str, seed: int, output_dir: str) -> ContinualRun:
    parser = fit_parser()
    cfg = parser.parse_args(
        ["--config", config, "--seed", str(seed), "--output_dir", output_dir]
        + ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    )
    return build_run(parser, cfg)


def evaluate_all_rows(run: ContinualRun, mode: str) -> tuple[float, dict]:
    """Seconds to score rows 0..T in ``mode``, and the metrics of the matrix it filled."""
    run.module.evaluation = replace(run.module.evaluation, matrix=mode)
    run.record.scores = ScoreMatrix(run.stream.task_names)
    start = time.perf_counter()
    for stage in range(len(run.record.scores.strict)):
        run.evaluate(stage, run.trainers(f"bench_{mode}_{stage}"))
    return time.perf_counter() - start, compute_metrics(run.record.scores.strict)


def main() -> None:
    parser = bench_parser(__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating lower / full rounds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_lightning()
    with tempfile.TemporaryDirectory() as output_dir:
        run = build(args.config, args.seed, output_dir)
        T = len(run.stream.tasks)
        cells = {
            mode: sum(len(tasks_to_evaluate(i, T, mode)) for i in range(T + 1)) for mode in ("full", "lower")
        }
        print(f"{T} tasks: full scores {cells['full']} cells, lower {cells['lower']}")
        sides = {mode: (lambda mode=mode: evaluate_all_rows(run, mode)) for mode in ("lower", "full")}
        ratios = []
        for r, result in enumerate(alternating_rounds(args.rounds, sides)):
            ratios.append(result["lower"][0] / result["full"][0])
            print(
                f"round {r}: lower {result['lower'][0]:.1f} s, full {result['full'][0]:.1f} s, "
                f"ratio {ratios[-1]:.3f}"
            )
        for mode in ("lower", "full"):
            computed = [name for name, value in result[mode][1].items() if value is not None]
            print(f"{mode}: metrics computed: {', '.join(computed)}")
    print(f"lower / full evaluation time: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
