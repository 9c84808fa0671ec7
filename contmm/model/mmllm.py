"""MMLLM: the multimodal LLM, composed of its components by their survey names.

Understanding path (arXiv 2401.13601): Modality Encoder -> Input Projector -> LLM Backbone.
The projected image features replace the ``<image>`` placeholder tokens in the backbone's
``inputs_embeds`` (LLaVA style; the collator expands one placeholder into
``num_image_tokens`` copies). An Output Projector and a Modality Generator would be two
more attributes here, fed from the backbone's hidden states; they are not built yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from contmm.model.backbone import BackboneConfig, LLMBackbone, load_tokenizer
from contmm.model.encoder import EncoderConfig, ModalityEncoder
from contmm.model.projector import ProjectorConfig, build_projector
from contmm.tokenizer import IMAGE_TOKEN, build_word_tokenizer

COMPONENTS = ("encoder", "input_projector", "backbone")


@dataclass
class ModelConfig:
    """The multimodal LLM: its components and the instruction template.

    Args:
        encoder: the Modality Encoder (a transformers vision model).
        input_projector: the Input Projector from encoder features to LLM embeddings.
        backbone: the LLM Backbone (a transformers causal LM).
        prompt: the instruction template; ``{question}`` holds the ``<image>`` placeholder.
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    input_projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    prompt: str = "USER: {question} ASSISTANT:"


class MMLLM(nn.Module):
    def __init__(self, cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.encoder = ModalityEncoder(cfg.encoder)
        self.backbone = LLMBackbone(cfg.backbone, tokenizer)
        self.input_projector = build_projector(
            cfg.input_projector, self.encoder.hidden_size, self.backbone.hidden_size
        )
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.encoder.image_size, self.encoder.image_size)
            self.num_image_tokens = self.project_images(probe).shape[1]

    @classmethod
    def build(cls, cfg: ModelConfig, texts: Iterable[str]) -> MMLLM:
        """The pretrained backbone's tokenizer, or a word-level one built from ``texts``."""
        if cfg.backbone.pretrained:
            tokenizer = load_tokenizer(cfg.backbone)
        else:
            tokenizer = build_word_tokenizer([cfg.prompt, *texts])
        return cls(cfg, tokenizer)

    def configured_trainable(self) -> list[str]:
        """The components the config does not freeze."""
        return [name for name in COMPONENTS if not getattr(self.cfg, name).freeze]

    def set_trainable(self, components: Iterable[str]) -> None:
        """Make exactly the named components trainable, and freeze the others."""
        components = set(components)
        unknown = components - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown model component(s) {sorted(unknown)}; known: {list(COMPONENTS)}")
        for name in COMPONENTS:
            getattr(self, name).requires_grad_(name in components)

    def project_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.input_projector(self.encoder(pixel_values))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Text embeddings with the image placeholders replaced by projected image features."""
        embeds = self.backbone.lm.get_input_embeddings()(input_ids)
        image_embeds = self.project_images(pixel_values).to(embeds.dtype)
        placeholders = input_ids == self.image_token_id
        if int(placeholders.sum()) != image_embeds.shape[0] * image_embeds.shape[1]:
            raise ValueError(
                f"{int(placeholders.sum())} image placeholder tokens for {image_embeds.shape[0]} "
                f"images of {image_embeds.shape[1]} tokens each"
            )
        return embeds.masked_scatter(placeholders.unsqueeze(-1), image_embeds)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> CausalLMOutputWithPast:
        return self.backbone.lm(
            inputs_embeds=self.embed(input_ids, pixel_values),
            attention_mask=attention_mask,
            labels=labels,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        max_new_tokens: int,
    ) -> torch.Tensor:
        """Greedy decoding of a left-padded batch with the KV cache; returns the new tokens."""
        return self.backbone.lm.generate(
            inputs_embeds=self.embed(input_ids, pixel_values),
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
