"""Input Projector: encoder features -> token embeddings the LLM backbone reads.

Three kinds, after the MM-LLM survey: ``linear`` (LLaVA), ``mlp`` (LLaVA-1.5's two layers
with GELU) and ``resampler`` (learned queries cross-attending to the features, as in the
BLIP-2 Q-Former / Flamingo Perceiver family), which also shortens the image to
``num_queries`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from contmm.model.files import load_safetensors


@dataclass
class ProjectorConfig:
    """The Input Projector: encoder features to the LLM's token embeddings.

    Args:
        kind: ``linear``, ``mlp`` or ``resampler``.
        num_queries: learned query tokens of the resampler (its number of image tokens).
        num_layers: cross-attention blocks of the resampler.
        num_heads: attention heads of the resampler.
        pretrained: a ``.safetensors`` file of this projector's weights (e.g. from alignment).
        freeze: keep the projector's weights fixed during instruction tuning.
    """

    kind: Literal["linear", "mlp", "resampler"] = "mlp"
    num_queries: int = 16
    num_layers: int = 1
    num_heads: int = 4
    pretrained: str | None = None
    freeze: bool = False


class Resampler(nn.Module):
    """Learned queries that cross-attend to the features (and to each other): BLIP-2 / Perceiver
    style for images in, GILL's mapper for the Output Projector."""

    def __init__(self, in_dim: int, out_dim: int, num_queries: int, num_layers: int, num_heads: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, out_dim) * out_dim**-0.5)
        self.features_in = nn.Linear(in_dim, out_dim)
        block = nn.TransformerDecoderLayer(
            out_dim, num_heads, 4 * out_dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerDecoder(block, num_layers, norm=nn.LayerNorm(out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        queries = self.queries.expand(features.shape[0], -1, -1)
        return self.blocks(queries, self.features_in(features))


def build_projector(cfg: ProjectorConfig, in_dim: int, out_dim: int) -> nn.Module:
    if cfg.kind == "linear":
        projector = nn.Linear(in_dim, out_dim)
    elif cfg.kind == "mlp":
        projector = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    elif cfg.kind == "resampler":
        projector = Resampler(in_dim, out_dim, cfg.num_queries, cfg.num_layers, cfg.num_heads)
    else:
        raise ValueError(f"model.input_projector.kind must be linear, mlp or resampler, not {cfg.kind!r}")
    if cfg.pretrained:
        projector.load_state_dict(load_safetensors(cfg.pretrained, "model.input_projector.pretrained"))
    return projector
