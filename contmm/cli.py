"""The ``contmm`` command line: ``contmm fit --config experiments/seq_vqa.yaml``, then
``contmm plot RUN... -o FILE.png`` and ``contmm report RUN...`` on the run directories.

jsonargparse owns the CLI (as in LitGPT): one parser per subcommand, configs in
LightningCLI's layout (``trainer:``, ``class_path`` / ``init_args``), several ``--config``
files compose (later wins) and ``--section.key value`` overrides any of them.
"""

from __future__ import annotations

import sys
from itertools import pairwise
from pathlib import Path

import lightning as L
import yaml
from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

from contmm import plot, report
from contmm.data import DataConfig
from contmm.model import ModelConfig
from contmm.module import EvalConfig, OptimizerConfig
from contmm.rundata import load_run
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
    parser.add_argument(
        "--resume",
        type=bool,
        default=True,
        help="go on after the last completed stage in output_dir; false deletes its results and starts over",
    )
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


def plot_parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False, allow_abbrev=False, description=plot.__doc__)
    parser.add_argument("runs", nargs="+", type=str, help="run directories (results.json or CSV scores)")
    parser.add_argument("-o", "--output", type=str, required=True, help="the image to write, e.g. plot.png")
    return parser


def report_parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False, allow_abbrev=False, description=report.__doc__)
    parser.add_argument("runs", nargs="+", type=str, help="run directories, one table row each")
    parser.add_argument(
        "--reference", type=str, help="a single-task reference run with the same tasks: adds Intransigence"
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
    subcommands.add_subcommand("plot", plot_parser(), help="plot run directories to an image")
    subcommands.add_subcommand("report", report_parser(), help="print a Markdown table of run metrics")
    return parser


def build_run(fit_cli: ArgumentParser, cfg) -> ContinualRun:
    """The continual run that the parsed ``fit`` config ``cfg`` describes."""
    init = fit_cli.instantiate(cfg)
    resolved = cfg.clone()
    del resolved["config"]  # the files it came from; the resolved values are what counts
    config = {"yaml": fit_cli.dump(resolved), "dict": resolved.as_dict()}
    return ContinualRun(
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
        resume=init.resume,
    )


def fit(fit_cli: ArgumentParser, cfg) -> dict:
    """Run the continual stream that the parsed ``fit`` config ``cfg`` describes."""
    return build_run(fit_cli, cfg).fit()


def plot_command(cfg) -> None:
    """Write the figure of the runs the parsed ``plot`` arguments ``cfg`` name."""
    plot.save_plot([load_run(path) for path in cfg.runs], cfg.output)
    print(f"wrote {cfg.output}")


def report_command(cfg) -> None:
    """Print the Markdown metrics table of the runs the parsed ``report`` arguments name."""
    reference = load_run(cfg.reference) if cfg.reference else None
    print(report.report([load_run(path) for path in cfg.runs], reference))


def yaml_error(given: list[str]) -> str | None:
    """The first ``--config`` file that is not valid YAML, named with the parser's message
    (jsonargparse reports the line and column but not the file)."""
    for flag, value in pairwise(given):
        if flag == "--config" and Path(value).is_file():
            try:
                yaml.safe_load(Path(value).read_text())
            except yaml.YAMLError as error:
                return f"{value} is not valid YAML: {error}"
    return None


def main(argv: list[str] | None = None) -> None:
    fit_cli = fit_parser()
    parser = build_parser(fit_cli)
    given = sys.argv[1:] if argv is None else argv
    try:
        cfg = parser.parse_args(given)
    except ArgumentError as error:
        # jsonargparse's message names the bad key, value or class_path; the full usage
        # it would print first buries it.
        error = yaml_error(given) or error
        command = next((arg for arg in given if arg in ("fit", "plot", "report")), "fit")
        print(f"contmm: error: {error}\n(`contmm {command} --help` lists every option)", file=sys.stderr)
        sys.exit(2)
    try:
        if cfg.subcommand == "fit":
            fit(fit_cli, cfg.fit)
        elif cfg.subcommand == "plot":
            plot_command(cfg.plot)
        elif cfg.subcommand == "report":
            report_command(cfg.report)
    except KeyboardInterrupt:
        # Outside a stage's training (Lightning handles Ctrl-C there): what is on disk is
        # whole, since every file is written atomically.
        print("contmm: interrupted; completed stages are kept, the same command resumes", file=sys.stderr)
        sys.exit(130)
    except (ValueError, OSError) as error:
        if cfg.debug:
            raise
        # jsonargparse wraps an error raised while building a class (a stream that rejects
        # its files) in a message listing every type it tried (`raise ... from error`):
        # show the original.
        while isinstance(error.__cause__, (ValueError, OSError)):
            error = error.__cause__
        print(f"contmm: error: {error}\n(run `contmm --debug ...` for the traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
