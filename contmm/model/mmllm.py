"""MMLLM: the multimodal LLM, composed of its components by their survey names.

Understanding path (arXiv 2401.13601): Modality Encoder -> Input Projector -> LLM Backbone,
per modality. The projected image features replace the ``<image>`` placeholder tokens in the
backbone's ``inputs_embeds`` (LLaVA style; the collator expands one placeholder into
``num_image_tokens`` copies); a model with ``model.encoders`` does the same with ``<video>``
(the image encoder over sampled frames, pooled in time: ``contmm/model/video_frames.py``) and
``<audio>`` (an audio encoder: ``contmm/model/audio_encoder.py``), each through a projector
of its own. Generating path, where the config has it: LLM Backbone (its signal tokens'
hidden states) -> Output Projector -> Modality Generator (``contmm/model/generating.py``).
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

from contmm.model.audio_encoder import AudioEncoder
from contmm.model.backbone import BackboneConfig, LLMBackbone, load_tokenizer
from contmm.model.collate import MEDIA_INPUTS, InstructionCollator, sample_image, sample_sound
from contmm.model.components import COMPONENTS, GENERATING, ComponentModel
from contmm.model.encoder import EncoderConfig, ModalityEncoder
from contmm.model.generating import generate_images, generation_loss
from contmm.model.generator import GeneratorConfig, ModalityGenerator, to_images
from contmm.model.output_projector import OutputProjectorConfig, build_output_projector, signal_tokens
from contmm.model.projector import ProjectorConfig, build_projector
from contmm.model.tokenizer import PLACEHOLDERS, build_word_tokenizer
from contmm.model.video_frames import VideoProjector, sampled_frames, temporal_pool

# The components each extra modality adds (images: ``encoder`` and ``input_projector``; video
# frames are read by ``encoder`` too).
MODALITY_COMPONENTS = {"video": ("video_projector",), "audio": ("audio_encoder", "audio_projector")}


@dataclass
class ModalityConfig:
    """The Modality Encoder and Input Projector of video or sound (``model.encoders.<modality>``).

    Args:
        encoder: sound's: a Whisper-style transformers audio encoder (``config`` with
            ``model_type: whisper`` or ``qwen2_audio_encoder`` and ``feature_extractor``, or
            ``pretrained``); video's: unset (its frames are read by ``model.encoder``).
        input_projector: the modality's own projector to the LLM's embeddings.
        num_frames: video only: frames sampled evenly from each clip (a stream's
            ``num_frames`` wins where it sets one).
        pooled_frames: video only: the frames' features are averaged in time into this many
            groups, in order, each with a learned embedding of its place; a clip is
            ``pooled_frames`` times an image's tokens.
    """

    encoder: EncoderConfig | None = None
    input_projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    num_frames: int = 8
    pooled_frames: int = 4


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
        encoders: the assembled model's encoders of other media, by modality (``video``,
            ``audio``); ``encoder`` and ``input_projector`` are the image's. A sample with a
            medium the model has no encoder for is refused before training.
        prompt: the instruction template of an assembled model; ``{question}`` holds the
            media's placeholders (``<image>``, ``<video>``, ``<audio>``; a whole checkpoint uses
            its own chat template).
        pretrained: a whole checkpoint (hub id or directory) of a family in
            ``contmm.model.pretrained.FAMILIES`` (LLaVA, the Qwen-VLs, LLaVA-OneVision, ...,
            Qwen2-Audio); the components then only say what is frozen (their ``config`` /
            ``pretrained`` stay unset).
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
    encoders: dict[str, ModalityConfig] = field(default_factory=dict)
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
        self._build_media_encoders(cfg.encoders)
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
            self.num_media_tokens = {m: self.project(m, self.blank(m)).shape[1] for m in self.modalities}
        self.num_image_tokens = self.num_media_tokens["image"]

    def _build_media_encoders(self, encoders: dict[str, ModalityConfig]) -> None:
        """The video and audio components ``model.encoders`` asks for."""
        if unknown := sorted(set(encoders) - set(MODALITY_COMPONENTS)):
            raise ValueError(
                f"model.encoders: {unknown}: the assembled model reads {', '.join(MODALITY_COMPONENTS)} "
                "besides images (model.encoder)"
            )
        width = self.backbone.hidden_size
        if video := encoders.get("video"):
            if video.encoder is not None:
                raise ValueError(
                    "model.encoders.video.encoder: video frames are read by model.encoder; leave it unset"
                )
            if not 1 <= video.pooled_frames <= video.num_frames:
                raise ValueError(
                    f"model.encoders.video: pooled_frames ({video.pooled_frames}) must be between 1 "
                    f"and num_frames ({video.num_frames})"
                )
            self.video_projector = VideoProjector(
                build_projector(video.input_projector, self.encoder.hidden_size, width),
                video.pooled_frames,
                self.encoder.hidden_size,
            )
        if audio := encoders.get("audio"):
            if (audio.num_frames, audio.pooled_frames) != (
                ModalityConfig.num_frames,
                ModalityConfig.pooled_frames,
            ):
                raise ValueError("model.encoders.audio: num_frames and pooled_frames are video settings")
            if audio.encoder is None:
                raise ValueError(
                    "model.encoders.audio.encoder: sound needs an audio encoder (config or pretrained)"
                )
            self.audio_encoder = AudioEncoder(audio.encoder)
            self.audio_projector = build_projector(
                audio.input_projector, self.audio_encoder.hidden_size, width
            )
        self.modalities = tuple(m for m in PLACEHOLDERS if m == "image" or m in encoders)
        self.placeholder_ids = {
            m: self.tokenizer.convert_tokens_to_ids(PLACEHOLDERS[m]) for m in self.modalities
        }
        self.image_token_id = self.placeholder_ids["image"]

    @classmethod
    def build(cls, cfg: ModelConfig, texts: Iterable[str]) -> MMLLM:
        """The pretrained backbone's tokenizer, or a word-level one built from ``texts``."""
        signal = signal_tokens(cfg.output_projector.num_signal_tokens) if cfg.output_projector else []
        # The placeholders of the extra media the model reads (the image's is always there).
        placeholders = [PLACEHOLDERS[m] for m in PLACEHOLDERS if m in cfg.encoders]
        if cfg.backbone.pretrained:
            tokenizer = load_tokenizer(cfg.backbone)
            tokenizer.add_special_tokens(
                {"additional_special_tokens": [*placeholders, *signal]}, replace_extra_special_tokens=False
            )
        else:
            tokenizer = build_word_tokenizer([cfg.prompt, *texts], [*signal, *placeholders])
        return cls(cfg, tokenizer)

    def components(self) -> dict[str, nn.Module]:
        media = [name for m in self.modalities[1:] for name in MODALITY_COMPONENTS[m]]
        return {
            name: getattr(self, name)
            for name in (*COMPONENTS, *media, *(GENERATING if self.generates else ()))
        }

    def component_config(self, name: str):
        modality, _, part = name.partition("_")
        if modality in MODALITY_COMPONENTS and part:
            section = self.cfg.encoders[modality]
            return section.encoder if part == "encoder" else section.input_projector
        return getattr(self.cfg, name)

    def input_projectors(self) -> list[nn.Module]:
        return [self.input_projector, *(getattr(self, f"{m}_projector") for m in self.modalities[1:])]

    def component_modalities(self) -> dict[str, set[str]]:
        readers = {"encoder": {"image", "video"} if "video" in self.modalities else {"image"}}
        readers["input_projector"] = {"image"}
        return readers | {name: {m} for m in self.modalities[1:] for name in MODALITY_COMPONENTS[m]}

    def collator(self, train: bool) -> InstructionCollator:
        return InstructionCollator(self, train)

    def encoder_probe(self) -> torch.Tensor:
        return self.encoder(self.blank("image"))

    def encoder_probes(self) -> dict:
        probes = super().encoder_probes()
        if "audio" in self.modalities:
            probes["audio_encoder"] = lambda: self.audio_encoder(self.blank("audio"))
        return probes

    def blank(self, modality: str) -> torch.Tensor:
        """The preprocessed input of one blank medium (a probe of the model's shapes)."""
        size = self.encoder.image_size
        if modality == "audio":
            return self.audio_encoder.blank()
        if modality == "video":
            return torch.zeros(1, self.cfg.encoders["video"].num_frames, 3, size, size)
        return torch.zeros(1, 3, size, size)

    def preprocess_media(self, modality: str, samples: list[dict]) -> torch.Tensor:
        """The batch input of ``modality`` for the samples that carry it: images (samples, 3,
        size, size), clips (samples, frames, 3, size, size), sounds' log-mel features."""
        if modality == "image":
            return self.encoder.preprocess([sample_image(s) for s in samples])
        if modality == "video":
            frames = self.cfg.encoders["video"].num_frames
            return torch.stack([self.encoder.preprocess(sampled_frames(s["video"], frames)) for s in samples])
        audio = self.audio_encoder
        return audio.preprocess([sample_sound(s, audio.sampling_rate, audio.window) for s in samples])

    def project(self, modality: str, inputs: torch.Tensor) -> torch.Tensor:
        """A batch of one modality's preprocessed media -> its token embeddings."""
        if modality == "image":
            return self.project_images(inputs)
        if modality == "video":
            videos, frames = inputs.shape[:2]
            features = self.encoder(inputs.flatten(0, 1)).unflatten(0, (videos, frames))
            return self.video_projector(temporal_pool(features, self.cfg.encoders["video"].pooled_frames))
        return self.audio_projector(self.audio_encoder(inputs))

    def set_input_projector(self, projector: nn.Module) -> None:
        self.input_projector = projector

    def projector_inputs(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values)

    def project_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.input_projector(self.encoder(pixel_values))

    def embed(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor, **media: torch.Tensor
    ) -> torch.Tensor:
        """Text embeddings with each medium's placeholders replaced by its projected features
        (``media``: the other modalities' batch inputs, by ``MEDIA_INPUTS`` key)."""
        embeds = self.backbone.lm.get_input_embeddings()(input_ids)
        for modality, token_id in self.placeholder_ids.items():
            inputs = pixel_values if modality == "image" else media.get(MEDIA_INPUTS[modality])
            placeholders = input_ids == token_id
            if (inputs is None or len(inputs) == 0) and not placeholders.any():  # none in this batch
                continue
            if inputs is None:
                raise ValueError(
                    f"{int(placeholders.sum())} {modality} placeholder tokens and no {modality} input"
                )
            projected = self.project(modality, inputs).to(embeds.dtype)
            if int(placeholders.sum()) != projected.shape[0] * projected.shape[1]:
                raise ValueError(
                    f"{int(placeholders.sum())} {modality} placeholder tokens for {projected.shape[0]} "
                    f"{modality} inputs of {projected.shape[1]} tokens each"
                )
            embeds = embeds.masked_scatter(placeholders.unsqueeze(-1), projected)
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        **inputs: torch.Tensor,
    ) -> CausalLMOutputWithPast:
        """The LM loss on the answers; with a batch's generation samples (``generation_rows``,
        ``caption_ids``, ``target_pixels``), plus their Output Projector objectives. ``inputs``:
        the other media's batch inputs, and the generation samples' fields."""
        media = {key: inputs.pop(key) for key in list(inputs) if key in MEDIA_INPUTS.values()}
        generation = inputs
        outputs = self.backbone.lm(
            inputs_embeds=self.embed(input_ids, pixel_values, **media),
            attention_mask=attention_mask,
            labels=labels,
            output_hidden_states=bool(generation),
        )
        if generation:
            outputs.loss = outputs.loss + generation_loss(
                self, outputs.hidden_states[-1], input_ids, **generation
            )
            outputs.hidden_states = None  # every layer's states: not kept past this point
        if labels is not None and (unreached := self.media_weights_term()) is not None:
            outputs.loss = outputs.loss + unreached
        return outputs

    @torch.no_grad()
    def generate(self, batch: dict, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding of a left-padded batch with the KV cache; returns the new tokens.
        A batch with ``adapter_names`` (one per row, put there by a routing strategy) is
        decoded with each row's own peft adapter (peft's mixed-adapter batches)."""
        routed = {"adapter_names": batch["adapter_names"]} if "adapter_names" in batch else {}
        media = {key: batch[key] for key in MEDIA_INPUTS.values() if key in batch and key != "pixel_values"}
        return self.backbone.lm.generate(
            inputs_embeds=self.embed(batch["input_ids"], batch["pixel_values"], **media),
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
