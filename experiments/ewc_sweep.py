"""EWC's λ sweep on the default stream: ACC, BWT and MFT against λ, per Fisher variant.

    python experiments/ewc_sweep.py                 # fit the runs not made yet, then plot
    python experiments/ewc_sweep.py --plot-only     # the figure and table from what exists

Runs go to runs/ewc_sweep/<variant>_<λ> (each `contmm fit --config experiments/seq_vqa.yaml
--config experiments/ewc.yaml` with the variant and λ; one torch thread each); the figure to
docs/images/ewc_lambda_sweep.png; a Markdown table of every run is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# variant: (EWC init_args, the λ values swept). The raw Fishers' scale is set by how small
# the gradients are at the end of a task, hence their λ range; normalised Fishers have mean 1.
VARIANTS = {
    "batch": ({"fisher": "batch", "normalise": False}, [1e10, 1e11, 1e12, 1e13]),
    "sample": ({"fisher": "sample", "normalise": False}, [1e9, 1e10, 1e11, 1e12]),
    "sample_normalised": (
        {"fisher": "sample", "normalise": True},
        [0.01, 0.1, 1.0, 10.0, 100.0, 300.0, 1e3, 3e3, 1e4],
    ),
}
METRICS = [("acc", "ACC"), ("bwt", "BWT"), ("mft", "MFT")]


def run_dir(root: Path, variant: str, ewc_lambda: float) -> Path:
    return root / f"{variant}_{ewc_lambda:g}"


def finished(out: Path) -> bool:
    file = out / "results.json"
    results = json.loads(file.read_text()) if file.is_file() else {}
    return results.get("stages_completed", -1) == len(results.get("tasks", []))


def fit(out: Path, args: dict, ewc_lambda: float) -> None:
    command = [
        "contmm", "fit", "--config", "experiments/seq_vqa.yaml", "--config", "experiments/ewc.yaml",
        "--strategies.init_args.ewc_lambda", str(ewc_lambda),
        *(option for key, value in args.items() for option in (f"--strategies.init_args.{key}", str(value).lower())),
        "--output_dir", str(out), "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("runs/ewc_sweep"))
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/images/ewc_lambda_sweep.png"))
    args = parser.parse_args()

    results: dict[str, list[tuple[float, dict]]] = {}
    for variant, (init_args, lambdas) in VARIANTS.items():
        for ewc_lambda in lambdas:
            out = run_dir(args.root, variant, ewc_lambda)
            if not args.plot_only and not finished(out):
                fit(out, init_args, ewc_lambda)
            if finished(out):
                metrics = json.loads((out / "results.json").read_text())["metrics"]
                results.setdefault(variant, []).append((ewc_lambda, metrics))

    print("| Fisher | λ | ACC | BWT | MFT | run |\n|---|---:|---:|---:|---:|---|")
    for variant, points in results.items():
        for ewc_lambda, m in points:
            print(
                f"| {variant} | {ewc_lambda:g} | {m['acc']:.3f} | {m['bwt']:+.3f} | {m['mft']:.3f} | "
                f"{run_dir(args.root, variant, ewc_lambda)} |"
            )

    figure, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4), squeeze=False)
    for ax, (variant, points) in zip(axes[0], results.items()):
        lambdas = [ewc_lambda for ewc_lambda, _ in points]
        for key, label in METRICS:
            ax.plot(lambdas, [m[key] for _, m in points], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_ylim(-1.05, 1.05)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_title(f"Fisher: {variant.replace('_', ', ')}")
        ax.set_xlabel("λ")
    axes[0][0].legend()
    figure.suptitle("EWC on the default stream (seed 0)")
    figure.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
