"""The ``contmm`` command line: ``contmm fit --config experiments/seq_vqa.yaml``.

jsonargparse owns the CLI (as in LitGPT): one parser per subcommand, configs in
LightningCLI's layout (``trainer:``, ``class_path`` / ``init_args``), several ``--config``
files compose (later wins) and ``--section.key value`` overrides any of them.
"""

from __future__ import annotations

import sys

import lightning as L
from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

from contmm.data import DataConfig
from contmm.model import ModelConfig
from contmm.module import EvalConfig, OptimizerConfig
from contmm.runner import ContinualRun, PretrainConfig
from contmm.strategy import Strategy
from contmm.stream import TaskStream

# Trainer arguments the runner owns: one logger pair per stage under the run directory,
# and its own samplers (seeded training shuffle, evaluation shards without duplicates).
RUNNER_OWNED_TRAINER_ARGS = {"logger", "default_root_dir", "use_distributed_sampler"}


def fit_parser() -> ArgumentParser:
    parser = ArgumentParser(
        exit_on_error=False,
        allow_abbrev=False,
        description="Tune a multimodal LLM on a stream of tasks, one stage per task, and score "
        "every task after every stage.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML config; may be given several times")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of initialisation and shuffling (the stream takes its own)"
    )
    parser.add_argument("--output_dir", type=str, default="runs/seq_vqa", help="the run directory")
    parser.add_class_arguments(ModelConfig, "model", help="the multimodal LLM")
    parser.add_subclass_arguments(TaskStream, "stream", required=True, help="the task stream")
    parser.add_argument(
        "--strategies",
        type=list[Strategy],
        default=[],
        help="continual strategies, run in order (class_path / init_args entries)",
    )
    parser.add_class_arguments(PretrainConfig, "pretrain", help="MM pre-training before the stream")
    parser.add_class_arguments(OptimizerConfig, "optimizer", help="optimizer of every stage")
    parser.add_class_arguments(DataConfig, "data", help="training data loading")
    parser.add_class_arguments(EvalConfig, "eval", help="evaluation after every stage")
    parser.add_class_arguments(
        L.Trainer,
        "trainer",
        instantiate=False,
        skip=RUNNER_OWNED_TRAINER_ARGS,
        help="Lightning Trainer arguments of every stage",
    )
    return parser


def build_parser(fit_cli: ArgumentParser) -> ArgumentParser:
    parser = ArgumentParser(
        prog="contmm",
        description="Continual instruction tuning of multimodal LLMs.",
        exit_on_error=False,
        allow_abbrev=False,
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    subcommands = parser.add_subcommands()
    subcommands.add_subcommand("fit", fit_cli, help="run a continual stream end to end")
    return parser


def fit(fit_cli: ArgumentParser, cfg) -> dict:
    """Run the continual stream that the parsed ``fit`` config ``cfg`` describes."""
    init = fit_cli.instantiate(cfg)
    resolved = cfg.clone()
    del resolved["config"]  # the files it came from; the resolved values are what counts
    config = {"yaml": fit_cli.dump(resolved), "dict": resolved.as_dict()}
    run = ContinualRun(
        stream=init.stream,
        model=init.model,
        strategies=init.strategies,
        seed=init.seed,
        output_dir=init.output_dir,
        pretrain=init.pretrain,
        optimizer=init.optimizer,
        data=init.data,
        evaluation=init.eval,
        trainer=init.trainer.as_dict(),
        config=config,
    )
    return run.fit()


def main(argv: list[str] | None = None) -> None:
    fit_cli = fit_parser()
    parser = build_parser(fit_cli)
    try:
        cfg = parser.parse_args(argv)
    except ArgumentError as error:
        # jsonargparse's message names the bad key, value or class_path; the full usage
        # it would print first buries it.
        print(f"contmm: error: {error}\n(`contmm fit --help` lists every option)", file=sys.stderr)
        sys.exit(2)
    try:
        if cfg.subcommand == "fit":
            fit(fit_cli, cfg.fit)
    except (ValueError, OSError) as error:
        if cfg.debug:
            raise
        print(f"contmm: error: {error}\n(run `contmm --debug ...` for the traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
