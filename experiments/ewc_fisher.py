"""Where EWC's Fisher sits: the batch and the sample Fisher of a run's stage, by weight group.

    python experiments/ewc_fisher.py runs/study/ewc_batch_1e12 --stage 1 2

For each stage, loads the run's config and that stage's checkpoint (fit the run with
``--checkpoint.keep all``), estimates both Fishers on the stage's own task as EWC does
(``fisher_batches`` batches of the training data, the trainable weights of the config),
and prints per weight group: its size, its share of ΣF under each estimate, and the mean
F of each. Also the share of the LLM's output layer (``lm_head``) that sits on the rows of
the words the task answers with. The EWC study (docs/studies/ewc.md) quotes its output.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from contmm.cli import build_run, fit_parser
from contmm.model.collate import InstructionCollator
from contmm.rundir.checkpoint import load_checkpoint
from contmm.rundir.stage_source import stage_checkpoint
from strategies.ewc import EWC

# Weight groups of the assembled model, by the first pattern a parameter name matches.
GROUPS = [
    ("input projector", r"^input_projector\."),
    ("LLM embeddings", r"embed_tokens"),
    ("LLM output layer", r"lm_head"),
    ("LLM attention", r"self_attn"),
    ("LLM MLP", r"\.mlp\."),
    ("LLM norms", r"norm"),
]


def group_of(name: str) -> str:
    return next((group for group, pattern in GROUPS if re.search(pattern, name)), "other")


def by_group(fisher: dict[str, torch.Tensor]) -> dict[str, tuple[int, float]]:
    """{group: (weights, ΣF)}."""
    groups: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for name, values in fisher.items():
        groups[group_of(name)][0] += values.numel()
        groups[group_of(name)][1] += float(values.sum())
    return {group: (n, total) for group, (n, total) in groups.items()}


def answer_rows_share(run, fisher: dict[str, torch.Tensor], task) -> float:
    """The share of the output layer's ΣF on the rows of the task's answer words."""
    (name,) = [n for n in fisher if "lm_head" in n]
    words = {word for sample in task.train for word in sample["answer"].split()}
    rows = sorted({run.model.tokenizer.convert_tokens_to_ids(word) for word in words})
    return float(fisher[name][rows].sum() / fisher[name].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run directory fitted with --checkpoint.keep all")
    parser.add_argument(
        "--stage", type=int, nargs="+", default=[1], help="stages to look at (1 = first task)"
    )
    parser.add_argument("--fisher-batches", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)

    fit_cli = fit_parser()
    with tempfile.TemporaryDirectory() as scratch:
        cfg = fit_cli.parse_args(["--config", str(args.run / "config.yaml"), "--output_dir", scratch])
        run = build_run(fit_cli, cfg)
        run.strategies.setup(run.model, run.stream)
        for stage in args.stage:
            checkpoint = load_checkpoint(stage_checkpoint(args.run, stage))
            run.weights.load_state_dict(checkpoint.model, f"{args.run} stage {stage}")
            run.model.set_trainable(run.model.configured_trainable())
            task = run.stream.tasks[stage - 1]
            loader = DataLoader(
                task.train,
                batch_size=run.data.batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(stage),
                collate_fn=InstructionCollator(run.model, train=True),
            )
            fishers = {
                kind: EWC(fisher_batches=args.fisher_batches, fisher=kind).fisher(run.model, loader)
                for kind in ("batch", "sample")
            }
            print(
                f"\n## {args.run} after stage {stage} ({task.name}): Fisher on {task.name}'s training data\n"
            )
            print(
                "| weights | count | share of ΣF, batch | share of ΣF, sample | mean F, batch | mean F, sample |"
            )
            print("|---|---:|---:|---:|---:|---:|")
            groups = {kind: by_group(fisher) for kind, fisher in fishers.items()}
            totals = {kind: sum(total for _, total in g.values()) for kind, g in groups.items()}
            for group, (count, batch_total) in sorted(groups["batch"].items(), key=lambda kv: -kv[1][1]):
                sample_total = groups["sample"][group][1]
                print(
                    f"| {group} | {count} | {batch_total / totals['batch']:.3f} | "
                    f"{sample_total / totals['sample']:.3f} | {batch_total / count:.2e} | {sample_total / count:.2e} |"
                )
            count = sum(n for n, _ in groups["batch"].values())
            print(
                f"| all | {count} | 1 | 1 | {totals['batch'] / count:.2e} | {totals['sample'] / count:.2e} |"
            )
            for kind, fisher in fishers.items():
                flat = torch.cat([v.flatten() for v in fisher.values()]).sort(descending=True).values
                top = float(flat[: max(1, len(flat) // 1000)].sum() / flat.sum())
                print(
                    f"\n{kind} Fisher: the largest 0.1% of weights hold {top:.2f} of ΣF; the output layer's rows "
                    f"of {task.name}'s answer words hold {answer_rows_share(run, fisher, task):.2f} of its ΣF"
                )


if __name__ == "__main__":
    main()
