"""Output Projector (Θ_T→X of arXiv 2401.13601): the LLM's hidden states at its signal tokens
-> the Modality Generator's conditioning.

The LLM's vocabulary gains ``k`` signal tokens ``<gen_0>`` … ``<gen_{k-1}>`` (GILL's ``[IMG]``
tokens, NExT-GPT's signal tokens); a generation answer is those tokens, and the last hidden
states at them are projected into what the generator's UNet cross-attends to. Two kinds:
``mlp`` maps each signal token's state to one conditioning vector (the conditioning is ``k``
long), ``transformer`` has learned queries (as many as the generator's caption encoding is
long) attend to the ``k`` states, as GILL's mapper and NExT-GPT's output projection do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from contmm.checks import check_at_least
from contmm.model.files import load_safetensors
from contmm.model.projector import Resampler


def signal_tokens(count: int) -> list[str]:
    return [f"<gen_{i}>" for i in range(count)]


@dataclass
class OutputProjectorConfig:
    """The Output Projector: the LLM's hidden states at its signal tokens to the generator's
    conditioning, and the weights of the objectives that train it on generation samples.

    Args:
        kind: ``mlp`` (one conditioning vector per signal token) or ``transformer`` (learned
            queries, as many as the generator's caption encoding is long, attending to the
            signal tokens' states).
        num_signal_tokens: the signal tokens ``<gen_0>`` … the LLM learns to write.
        num_layers: attention blocks of the ``transformer`` kind.
        num_heads: attention heads of the ``transformer`` kind.
        alignment_weight: NExT-GPT's decoding-side alignment: the mean squared distance from
            the conditioning to the generator's own text encoding of the sample's caption
            (needs a generator with a text encoder; no UNet in the loop, cheap).
        denoising_weight: the generator's denoising loss on the target image through the
            conditioning (GILL / MiniGPT-5; trains end to end through the frozen UNet, costly).
        pretrained: a ``.safetensors`` file of this projector's weights.
        freeze: keep the projector's weights fixed during instruction tuning.
    """

    kind: Literal["mlp", "transformer"] = "transformer"
    num_signal_tokens: int = 4
    num_layers: int = 1
    num_heads: int = 4
    alignment_weight: float = 1.0
    denoising_weight: float = 0.0
    pretrained: str | None = None
    freeze: bool = False

    def __post_init__(self) -> None:
        check_at_least("model.output_projector.num_signal_tokens", self.num_signal_tokens, 1)
        check_at_least("model.output_projector.alignment_weight", self.alignment_weight, 0.0)
        check_at_least("model.output_projector.denoising_weight", self.denoising_weight, 0.0)


def build_output_projector(
    cfg: OutputProjectorConfig, llm_width: int, conditioning_width: int, caption_length: int | None
) -> nn.Module:
    """The projector from ``llm_width`` states to ``conditioning_width`` vectors; its output is as
    long as the generator's caption encoding (``caption_length``) where alignment needs it."""
    if cfg.alignment_weight > 0 and caption_length is None:
        raise ValueError(
            "model.output_projector.alignment_weight > 0 needs a generator with a text encoder "
            "(its caption encoding is the alignment target); set it to 0 and use denoising_weight"
        )
    if cfg.kind == "mlp":
        if cfg.alignment_weight > 0 and cfg.num_signal_tokens != caption_length:
            raise ValueError(
                f"model.output_projector: the mlp kind gives one vector per signal token, so alignment "
                f"to the generator's {caption_length}-token caption encoding needs num_signal_tokens: "
                f"{caption_length} (not {cfg.num_signal_tokens}), or kind: transformer"
            )
        projector = nn.Sequential(
            nn.Linear(llm_width, llm_width), nn.GELU(), nn.Linear(llm_width, conditioning_width)
        )
    elif cfg.kind == "transformer":
        queries = caption_length or cfg.num_signal_tokens
        projector = Resampler(llm_width, conditioning_width, queries, cfg.num_layers, cfg.num_heads)
    else:
        raise ValueError(f"model.output_projector.kind must be mlp or transformer, not {cfg.kind!r}")
    if cfg.pretrained:
        projector.load_state_dict(load_safetensors(cfg.pretrained, "model.output_projector.pretrained"))
    return projector
