"""Modality Encoder: raw images -> a sequence of patch features (a transformers vision model)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModel, CLIPImageProcessor

from contmm.model.files import check_model_dir, loader_errors


@dataclass
class EncoderConfig:
    """Where the vision tower comes from and which of its features the projector reads.

    Args:
        config: transformers config fields, with ``model_type`` (random init).
        pretrained: a hub id or local directory for ``from_pretrained`` (wins over ``config``).
        feature_layer: hidden-state index read (LLaVA-1.5 reads the penultimate layer, -2).
        drop_cls: drop the first (CLS) token, as LLaVA does; false for towers without one.
        freeze: keep the tower's weights fixed during instruction tuning.
        trust_remote_code: allow a hub repository's own code (off unless set explicitly).
        feature_extractor: an audio encoder's only (``model.encoders.audio.encoder``):
            keyword arguments of the Whisper feature extractor built for a random-init tower
            (``sampling_rate``, ``chunk_length``, ``hop_length``, ``n_fft``).
    """

    config: dict | None = None
    pretrained: str | None = None
    feature_layer: int = -2
    drop_cls: bool = True
    freeze: bool = True
    trust_remote_code: bool = False
    feature_extractor: dict | None = None


class ModalityEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.feature_extractor is not None:
            raise ValueError(
                "model.encoder.feature_extractor: an image encoder has none (it is an audio encoder's)"
            )
        if cfg.pretrained:
            check_model_dir(cfg.pretrained, "model.encoder.pretrained")
            with loader_errors("model.encoder.pretrained", cfg.pretrained):
                self._load(cfg)
        elif cfg.config:
            self.tower = AutoModel.from_config(AutoConfig.for_model(**cfg.config))
            size = self.tower.config.image_size
            # Random-init towers have no processor on disk: CLIP's resize / crop / normalise.
            self.processor = CLIPImageProcessor(
                size={"shortest_edge": size}, crop_size={"height": size, "width": size}
            )
        else:
            raise ValueError("model.encoder needs either `config` (random init) or `pretrained`")

    def _load(self, cfg: EncoderConfig) -> None:
        config = AutoConfig.from_pretrained(cfg.pretrained, trust_remote_code=cfg.trust_remote_code)
        # A dual-encoder checkpoint (CLIP, SigLIP) holds text and vision towers; load the
        # vision tower alone, as LLaVA does with CLIPVisionModel.
        config = getattr(config, "vision_config", config)
        self.tower = AutoModel.from_pretrained(
            cfg.pretrained, config=config, trust_remote_code=cfg.trust_remote_code
        )
        self.processor = AutoImageProcessor.from_pretrained(cfg.pretrained)

    @property
    def hidden_size(self) -> int:
        return self.tower.config.hidden_size

    @property
    def image_size(self) -> int:
        return self.tower.config.image_size

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(self.tower.dtype)
        outputs = self.tower(pixel_values=pixel_values, output_hidden_states=True)
        features = outputs.hidden_states[self.cfg.feature_layer]
        return features[:, 1:] if self.cfg.drop_cls else features
