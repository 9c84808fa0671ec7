"""Modality Encoder for sound: a Whisper-style transformers audio encoder on the log-mel
features its own feature extractor computes from a fixed window of samples.

Whisper's encoder (and those built on it: Qwen2-Audio's, ``qwen2_audio_encoder``) reads a
window of exactly ``2 * max_source_positions`` feature frames; its feature extractor pads or
cuts every sound to that window. A sound longer than the window is refused where it is met
(``contmm.model.collate``), never cut silently. Encoders without such a window (wav2vec 2,
HuBERT: raw samples of any length) are not supported: their token count would vary per sound.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, WhisperFeatureExtractor

from contmm.model.encoder import EncoderConfig
from contmm.model.files import check_model_dir, loader_errors

SETTING = "model.encoders.audio.encoder"


class AudioEncoder(nn.Module):
    """A sound's window -> a sequence of features (the hidden states at ``feature_layer``)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        if cfg.drop_cls:
            raise ValueError(
                f"{SETTING}.drop_cls: an audio encoder's features have no CLS token; set it false"
            )
        self.cfg = cfg
        if cfg.pretrained:
            check_model_dir(cfg.pretrained, f"{SETTING}.pretrained")
            with loader_errors(f"{SETTING}.pretrained", cfg.pretrained):
                model = AutoModel.from_pretrained(cfg.pretrained, trust_remote_code=cfg.trust_remote_code)
                self.feature_extractor = AutoFeatureExtractor.from_pretrained(cfg.pretrained)
        elif cfg.config:
            config = AutoConfig.for_model(**cfg.config)
            model = AutoModel.from_config(config)
            # Random-init towers have no extractor on disk: Whisper's log-mel features, over a
            # window that fills the encoder's positions (two feature frames per position).
            self.feature_extractor = WhisperFeatureExtractor(
                feature_size=config.num_mel_bins, **(cfg.feature_extractor or {})
            )
        else:
            raise ValueError(f"{SETTING} needs either `config` (random init) or `pretrained`")
        # A whole Whisper (encoder and decoder): its encoder alone reads the sound.
        self.tower = model.get_encoder() if model.config.is_encoder_decoder else model
        self.window = getattr(self.feature_extractor, "n_samples", None)
        frames = getattr(self.feature_extractor, "nb_max_frames", None)
        wanted = 2 * getattr(self.tower.config, "max_source_positions", 0)
        if self.window is None or frames != wanted:
            raise ValueError(
                f"{SETTING}: a Whisper-style encoder with a fixed window is needed: the encoder reads "
                f"{wanted} feature frames, its feature extractor gives {frames} (set "
                f"{SETTING}.feature_extractor's chunk_length / hop_length so that they agree)"
            )

    @property
    def hidden_size(self) -> int:
        return self.tower.config.d_model

    @property
    def sampling_rate(self) -> int:
        return self.feature_extractor.sampling_rate

    def preprocess(self, waveforms: list[np.ndarray]) -> torch.Tensor:
        """Log-mel features of sounds at :attr:`sampling_rate`, each padded to the window."""
        return self.feature_extractor(waveforms, sampling_rate=self.sampling_rate, return_tensors="pt")[
            "input_features"
        ]

    def blank(self) -> torch.Tensor:
        """The features of one silent window (a probe of the encoder's shapes)."""
        return self.preprocess([np.zeros(self.window, dtype=np.float32)])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = features.to(self.tower.dtype)
        outputs = self.tower(features, output_hidden_states=True)
        return outputs.hidden_states[self.cfg.feature_layer]
