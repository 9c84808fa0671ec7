"""A stage checkpoint of a fit run read by another command (``contmm eval --run``,
``contmm export``): found, read while the run is held shared (so a fit there does not delete
it meanwhile, ``contmm.rundir.lock``), and checked against the config that will load it."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from contmm.rundir.checkpoint import (
    CHECKPOINTS,
    Checkpoint,
    config_difference,
    latest_checkpoint,
    load_checkpoint,
)
from contmm.rundir.lock import reading

# The config sections a run's checkpoint must agree with: they decide what its weights fit.
MODEL_SECTIONS = ("model", "strategies", "pretrain")


def stage_checkpoint(source: Path, stage: int | None) -> Path:
    """``source``'s checkpoint of ``stage`` (default: its newest), or an error naming what is kept."""
    path = latest_checkpoint(source) if stage is None else source / CHECKPOINTS / f"stage_{stage}"
    if path is None or not (path / "state.json").is_file():
        kept = sorted(p.name for p in (source / CHECKPOINTS).glob("stage_*") if (p / "state.json").is_file())
        raise ValueError(
            f"{source} holds no checkpoint of stage {stage if stage is not None else '(any)'}; kept: "
            f"{kept or 'none'} (fit with --checkpoint.keep all to keep every stage)"
        )
    return path


def read_stage(
    source: Path,
    stage: int | None,
    config: dict,
    tokenizer: PreTrainedTokenizerBase,
    defaults: dict | None = None,
) -> Checkpoint:
    """``source``'s checkpoint of ``stage`` (default: its newest), refused unless ``config``'s
    model sections (``defaults``: the parser's, for keys the run's config lacks) and
    ``tokenizer``'s vocabulary are the run's."""
    with reading(source):
        checkpoint = load_checkpoint(stage_checkpoint(source, stage))
    saved = {k: checkpoint.state["config"].get(k) for k in MODEL_SECTIONS}
    current = {k: config[k] for k in MODEL_SECTIONS}
    if (difference := config_difference(saved, current, defaults=defaults)) is not None:
        raise ValueError(f"the config's model does not fit the weights of {source} ({difference})")
    # A word-level tokenizer is built from the stream's words: another stream's would give the
    # run's token ids other meanings, so the run's weights need the run's vocabulary.
    saved_tokenizer = source / "tokenizer"
    if (
        saved_tokenizer.is_dir()
        and AutoTokenizer.from_pretrained(saved_tokenizer).get_vocab() != tokenizer.get_vocab()
    ):
        raise ValueError(
            f"this stream's words build another vocabulary than {saved_tokenizer}: the weights of "
            f"{source} read token ids of the vocabulary of its own stream (evaluate on that stream)"
        )
    return checkpoint
