"""MMLLM: the multimodal LLM, composed of its components by their survey names.

Understanding path (arXiv 2401.13601): Modality Encoder -> Input Projector -> LLM Backbone.
The projected image features replace the ``<image>`` placeholder tokens in the backbone's
``inputs_embeds`` (LLaVA style; the collator expands one placeholder into
``num_image_tokens`` copies). Generating path, where the config has it: LLM Backbone (its
signal tokens' hidden states) -> Output Projector -> Modality Generator
(``contmm/model/generating.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch
from PIL import Image
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from contmm.model.backbone import BackboneConfig, LLMBackbone, load_tokenizer
from contmm.model.collate import InstructionCollator
from contmm.model.components import COMPONENTS, GENERATING, ComponentModel
from contmm.model.encoder import EncoderConfig, ModalityEncoder
from contmm.model.generating import generate_images, generation_loss
from contmm.model.generator import GeneratorConfig, ModalityGenerator, to_images
from contmm.model.output_projector import OutputProjectorConfig, build_output_projector, signal_tokens
from contmm.model.projector import ProjectorConfig, build_projector
from contmm.model.tokenizer import IMAGE_TOKEN, build_word_tokenizer


@dataclass
class ModelConfig:
    """The multimodal LLM: one whole checkpoint, or its components assembled one by one.

    Args:
        encoder: the Modality Encoder (a transformers vision model).
        input_projector: the Input Projector from encoder features to LLM embeddings.
        backbone: the LLM Backbone (a transformers causal LM).
        output_projector: the Output Projector from the LLM's signal-token states to the
            generator's conditioning (set it and ``generator`` for a model that draws).
        generator: the Modality Generator (a diffusers model).
        prompt: the instruction template of an assembled model; ``{question}`` holds the
            ``<image>`` placeholder (a whole checkpoint uses its own chat template).
        pretrained: a whole image-text-to-text checkpoint (hub id or directory: LLaVA,
            Qwen2-VL, Qwen2.5-VL); the components then only say what is frozen (their
            ``config`` / ``pretrained`` stay unset).
        dtype: of a whole checkpoint's weights (``auto``: as stored); the trained
            components are kept in float32.
        gradient_checkpointing: recompute a whole checkpoint's activations in the backward
            pass (less memory, more compute).
        attn_implementation: transformers' attention kernel for a whole checkpoint
            (``eager``, ``sdpa``, ``flash_attention_2``; default: transformers' choice).
        trust_remote_code: allow a whole checkpoint's own code (off unless set explicitly).
        quantization: load a whole checkpoint's frozen LLM in ``4bit`` (QLoRA's NF4, bf16
            compute) or ``8bit`` with bitsandbytes (``pip install -e ".[qlora]"``, CUDA GPUs
            only); the vision tower, the projector and the LM head stay unquantised.
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    input_projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    output_projector: OutputProjectorConfig | None = None
    generator: GeneratorConfig | None = None
    prompt: str = "USER: {question} ASSISTANT:"
    pretrained: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    quantization: Literal["4bit", "8bit"] | None = None


class MMLLM(ComponentModel):
    """The components built one by one (random init from configs, or each from its own
    pretrained weights), merged LLaVA-style: projected image features replace the
    ``<image>`` placeholders in the backbone's input embeddings."""

    def __init__(self, cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        whole_only = {
            "dtype": "auto",
            "gradient_checkpointing": False,
            "attn_implementation": None,
            "quantization": None,
        }
        if set_here := [f"model.{k}" for k, default in whole_only.items() if getattr(cfg, k) != default]:
            raise ValueError(f"{', '.join(set_here)} apply to a whole checkpoint (model.pretrained) only")
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.encoder = ModalityEncoder(cfg.encoder)
        self.backbone = LLMBackbone(cfg.backbone, tokenizer)
        self.input_projector = build_projector(
            cfg.input_projector, self.encoder.hidden_size, self.backbone.hidden_size
        )
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if (cfg.output_projector is None) != (cfg.generator is None):
            raise ValueError("model.output_projector and model.generator come together: set both or neither")
        self.generates = cfg.generator is not None
        if self.generates:
            if cfg.generator.config is not None and cfg.output_projector.denoising_weight == 0:
                raise ValueError(
                    "model.generator.config is a random-init UNet: only the denoising objective trains "
                    "it, so set model.output_projector.denoising_weight > 0"
                )
            self.generator = ModalityGenerator(cfg.generator)
            self.output_projector = build_output_projector(
                cfg.output_projector,
                self.backbone.hidden_size,
                self.generator.conditioning_width,
                self.generator.conditioning_length,
            )
            self.signal_token_ids = tokenizer.convert_tokens_to_ids(
                signal_tokens(cfg.output_projector.num_signal_tokens)
            )
            if tokenizer.unk_token_id in self.signal_token_ids:
                raise ValueError("the tokenizer lacks the signal tokens <gen_0>…: build it with MMLLM.build")
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.encoder.image_size, self.encoder.image_size)
            self.num_image_tokens = self.project_images(probe).shape[1]

    @classmethod
    def build(cls, cfg: ModelConfig, texts: Iterable[str]) -> MMLLM:
        """The pretrained backbone's tokenizer, or a word-level one built from ``texts``."""
        signal = signal_tokens(cfg.output_projector.num_signal_tokens) if cfg.output_projector else []
        if cfg.backbone.pretrained:
            tokenizer = load_tokenizer(cfg.backbone)
            tokenizer.add_special_tokens(
                {"additional_special_tokens": signal}, replace_extra_special_tokens=False
            )
        else:
            tokenizer = build_word_tokenizer([cfg.prompt, *texts], signal)
        return cls(cfg, tokenizer)

    def components(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in (*COMPONENTS, *(GENERATING if self.generates else ()))}

    def collator(self, train: bool) -> InstructionCollator:
        return InstructionCollator(self, train)

    def encoder_probe(self) -> torch.Tensor:
        return self.encoder(torch.zeros(1, 3, self.encoder.image_size, self.encoder.image_size))

    def set_input_projector(self, projector: nn.Module) -> None:
        self.input_projector = projector

    def projector_inputs(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values)

    def project_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.input_projector(self.encoder(pixel_values))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Text embeddings with the image placeholders replaced by projected image features."""
        embeds = self.backbone.lm.get_input_embeddings()(input_ids)
        placeholders = input_ids == self.image_token_id
        if len(pixel_values) == 0 and not placeholders.any():  # text only: generation prompts
            return embeds
        image_embeds = self.project_images(pixel_values).to(embeds.dtype)
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
        **generation: torch.Tensor,
    ) -> CausalLMOutputWithPast:
        """The LM loss on the answers; with a batch's generation samples (``generation_rows``,
        ``caption_ids``, ``target_pixels``), plus their Output Projector objectives."""
        outputs = self.backbone.lm(
            inputs_embeds=self.embed(input_ids, pixel_values),
            attention_mask=attention_mask,
            labels=labels,
            output_hidden_states=bool(generation),
        )
        if generation:
            outputs.loss = outputs.loss + generation_loss(
                self, outputs.hidden_states[-1], input_ids, **generation
            )
            outputs.hidden_states = None  # every layer's states: not kept past this point
        return outputs

    @torch.no_grad()
    def generate(self, batch: dict, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding of a left-padded batch with the KV cache; returns the new tokens.
        A batch with ``adapter_names`` (one per row, put there by a routing strategy) is
        decoded with each row's own peft adapter (peft's mixed-adapter batches)."""
        routed = {"adapter_names": batch["adapter_names"]} if "adapter_names" in batch else {}
        return self.backbone.lm.generate(
            inputs_embeds=self.embed(batch["input_ids"], batch["pixel_values"]),
            attention_mask=batch["attention_mask"],
            max_new_tokens=max_new_tokens,
            do_sample=False,
            **routed,
        )

    def draw(
        self, batch: dict, max_new_tokens: int, noise: list[torch.Generator]
    ) -> tuple[torch.Tensor, dict[int, Image.Image]]:
        """Greedy decoding, then the generating half on every row whose answer starts its
        signal tokens, all sampled together (``contmm.model.generating``)."""
        if not self.generates:
            return super().draw(batch, max_new_tokens, noise)
        new_tokens, pixels = generate_images(self, batch, max_new_tokens, noise)
        if not pixels:
            return new_tokens, {}
        return new_tokens, dict(zip(pixels, to_images(torch.stack(list(pixels.values())))))
