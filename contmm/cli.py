"""The ``contmm`` command line: ``contmm fit --config experiments/seq_vqa.yaml``, then
``contmm eval``, ``contmm export RUN -o DIR``, ``contmm plot RUN... -o FILE.png`` and
``contmm report RUN...``.

jsonargparse owns the CLI (as in LitGPT): one parser per subcommand, configs in
LightningCLI's layout (``trainer:``, ``class_path`` / ``init_args``), several ``--config``
files compose (later wins) and ``--section.key value`` overrides any of them.
"""

from __future__ import annotations

import sys
from inspect import signature
from itertools import pairwise
from pathlib import Path

import lightning as L
import yaml
from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser
from lightning.pytorch.loggers import Logger

from contmm.analysis import plot, report
from contmm.analysis.generation_grid import generation_grid_png
from contmm.commands import evaluate, export
from contmm.rundir.reading import load_run
from contmm.training.runner import ContinualRun

# Trainer arguments the runner owns: the run directory, and its own samplers (seeded
# training shuffle, evaluation shards without duplicates).
RUNNER_OWNED_TRAINER_ARGS = {"default_root_dir", "use_distributed_sampler"}
# ContinualRun's parameters that are not options of their own: the Trainer's arguments are
# added from Trainer's signature, and the resolved config is the parse itself.
RUNNER_ONLY = ("trainer", "config")


def new_parser(description: str | None, **kwargs) -> ArgumentParser:
    """contmm's parsers: errors raised to ``main`` (one line, no usage dump), no abbreviations."""
    return ArgumentParser(description=description, exit_on_error=False, allow_abbrev=False, **kwargs)


def fit_parser() -> ArgumentParser:
    """``contmm fit``'s options: the parameters of :class:`ContinualRun`, and the Trainer's."""
    parser = new_parser(ContinualRun.__doc__.split("\n\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML config; may be given several times")
    parser.add_class_arguments(ContinualRun, skip=set(RUNNER_ONLY), sub_configs=True)
    parser.add_class_arguments(
        L.Trainer,
        "trainer",
        instantiate=False,
        skip=RUNNER_OWNED_TRAINER_ARGS | {"logger"},
        help="Lightning Trainer arguments of every stage",
    )
    # Not Lightning's type: these loggers go beside contmm's own, so true / false mean nothing.
    parser.groups["trainer"].add_argument(
        "--trainer.logger",
        type=Logger | list[Logger] | None,
        default=None,
        help=(
            "Lightning loggers (class_path / init_args: W&B, MLflow, CSV, ...) beside contmm's own, "
            "built once: pre-training, every stage and every row's scores (step = stage) are one "
            "run of theirs, training steps counted over the whole stream"
        ),
    )
    return parser


def plot_parser() -> ArgumentParser:
    parser = new_parser(plot.__doc__)
    parser.add_argument("runs", nargs="+", type=str, help="run directories (results.json or CSV scores)")
    parser.add_argument("-o", "--output", type=str, required=True, help="the image to write, e.g. plot.png")
    return parser


def report_parser() -> ArgumentParser:
    parser = new_parser(report.__doc__)
    parser.add_argument("runs", nargs="+", type=str, help="run directories, one table row each")
    parser.add_argument(
        "--reference", type=str, help="a single-task reference run with the same tasks: adds Intransigence"
    )
    return parser


def eval_parser() -> ArgumentParser:
    """``contmm eval``'s options: ``fit``'s, and the run whose weights are scored."""
    parser = fit_parser()
    parser.description = evaluate.__doc__.split("\n\n")[0]
    parser.add_argument(
        "--run",
        type=str | None,
        default=None,
        help="a fit run directory: score its weights (default: as built)",
    )
    parser.add_argument(
        "--stage",
        type=int | None,
        default=None,
        help="the run's stage checkpoint to score (default: its newest)",
    )
    return parser


def export_parser() -> ArgumentParser:
    parser = new_parser(export.__doc__.split("\n\n")[0])
    parser.add_argument("run", type=str, help="the fit run directory (its config.yaml and checkpoints)")
    parser.add_argument(
        "--stage", type=int | None, default=None, help="the stage to export (default: the newest)"
    )
    parser.add_argument(
        "-o", "--output", type=str, required=True, help="the directory to write (new or empty)"
    )
    return parser


def export_command(cfg) -> None:
    """Rebuild the run from its resolved config.yaml (from the directory it was run in) and export it."""
    source = Path(cfg.run)
    if not (source / "config.yaml").is_file():
        raise ValueError(f"{source} is not a run directory: it has no config.yaml")
    fit_cli = fit_parser()
    run = build_run(fit_cli, fit_cli.parse_args(["--config", str(source / "config.yaml")]))
    manifest = export.export(run, source, cfg.stage, Path(cfg.output))
    print(f"wrote stage {manifest['stage']} of {source} to {cfg.output}")


def build_parser(fit_cli: ArgumentParser, eval_cli: ArgumentParser) -> ArgumentParser:
    parser = new_parser("Continual instruction tuning of multimodal LLMs.", prog="contmm")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    subcommands = parser.add_subcommands()
    subcommands.add_subcommand("fit", fit_cli, help="run a continual stream end to end")
    subcommands.add_subcommand("eval", eval_cli, help="score a model, or a run's stage, on a stream")
    subcommands.add_subcommand("export", export_parser(), help="write a run's model for transformers / peft")
    subcommands.add_subcommand("plot", plot_parser(), help="plot run directories to an image")
    subcommands.add_subcommand("report", report_parser(), help="print a Markdown table of run metrics")
    return parser


def build_run(fit_cli: ArgumentParser, cfg) -> ContinualRun:
    """The continual run that the parsed ``fit`` config ``cfg`` describes."""
    init = fit_cli.instantiate(cfg)
    resolved = cfg.clone()
    del resolved["config"]  # the files it came from; the resolved values are what counts
    # The parser's defaults: what a key missing from an older run's saved config counts as.
    defaults = fit_cli.get_defaults().as_dict()
    config = {"yaml": fit_cli.dump(resolved), "dict": resolved.as_dict(), "defaults": defaults}
    arguments = {name: init[name] for name in signature(ContinualRun).parameters if name not in RUNNER_ONLY}
    return ContinualRun(**arguments, trainer=init.trainer.as_dict(), config=config)


def fit(fit_cli: ArgumentParser, cfg) -> dict:
    """Run the continual stream that the parsed ``fit`` config ``cfg`` describes."""
    return build_run(fit_cli, cfg).fit()


def plot_command(cfg) -> None:
    """Write the figure of the runs the parsed ``plot`` arguments ``cfg`` name."""
    runs = [load_run(path) for path in cfg.runs]
    plot.save_plot(runs, cfg.output)
    print(f"wrote {cfg.output}")
    output = Path(cfg.output)
    for run in runs:  # runs with generation tasks: their images after every stage, beside it
        if (grid := generation_grid_png(run)) is not None:
            path = output.with_name(f"{output.stem}_{run.name}_generations.png")
            path.write_bytes(grid)
            print(f"wrote {path}")


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
    fit_cli, eval_cli = fit_parser(), eval_parser()
    parser = build_parser(fit_cli, eval_cli)
    given = sys.argv[1:] if argv is None else argv
    try:
        cfg = parser.parse_args(given)
    except ArgumentError as error:
        # jsonargparse's message names the bad key, value or class_path; the full usage
        # it would print first buries it.
        error = yaml_error(given) or error
        command = next((arg for arg in given if arg in ("fit", "eval", "export", "plot", "report")), "fit")
        print(f"contmm: error: {error}\n(`contmm {command} --help` lists every option)", file=sys.stderr)
        sys.exit(2)
    try:
        if cfg.subcommand == "fit":
            fit(fit_cli, cfg.fit)
        elif cfg.subcommand == "eval":
            evaluate.evaluate(build_run(eval_cli, cfg.eval), cfg.eval.run, cfg.eval.stage)
        elif cfg.subcommand == "export":
            export_command(cfg.export)
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
