"""Tiny random diffusers generators in the Stable Diffusion layout, saved the way a user's
would be, for tests (no weights can be downloaded here)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers import processors
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTextModel,
)

from contmm.model.tokenizer import build_word_tokenizer
from streams.synthetic import COLOURS, QUADRANTS, SHAPES

# Every word the synthetic stream's captions use.
CAPTIONS = [f"a {c} {s} in the {q}" for c in COLOURS for s in (*SHAPES, "shape") for q in QUADRANTS]
CAPTION_LENGTH = 8
WIDTH = 32


def text_encoder_and_tokenizer():
    tokenizer = build_word_tokenizer(CAPTIONS)
    tokenizer.model_max_length = CAPTION_LENGTH
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CAPTION_LENGTH,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return CLIPTextModel(config).eval(), tokenizer


def unet(channels: int, sample_size: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=WIDTH,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )


def save_latent_generator(path: Path, seed: int = 0) -> Path:
    """A Stable-Diffusion pipeline (VAE, text encoder, tokenizer, UNet, DDIM) saved by diffusers."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    text_encoder, tokenizer = text_encoder_and_tokenizer()
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet(4, 8),
        scheduler=scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(path)
    return path


def save_pixel_generator(path: Path, seed: int = 0, text_encoder: bool = True) -> Path:
    """A pixel-space generator (no VAE), its parts saved one by one in the same layout."""
    torch.manual_seed(seed)
    unet(3, 16).save_pretrained(path / "unet")
    scheduler().save_pretrained(path / "scheduler")
    if text_encoder:
        encoder, tokenizer = text_encoder_and_tokenizer()
        encoder.save_pretrained(path / "text_encoder")
        tokenizer.save_pretrained(path / "tokenizer")
    return path


def save_tiny_clip(path: Path, seed: int = 0) -> Path:
    """A tiny random CLIP model and processor (for ``clip_score``) saved by transformers; its
    word tokenizer appends the end token CLIP pools its text features at."""
    tokenizer = build_word_tokenizer(CAPTIONS + ["draw paint make picture of something ."])
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        special_tokens=[(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)],
    )
    torch.manual_seed(seed)
    model = CLIPModel(
        CLIPConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
                "max_position_embeddings": 16,
                "pad_token_id": tokenizer.pad_token_id,
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
            },
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
                "image_size": 28,
                "patch_size": 14,
            },
            projection_dim=16,
        )
    )
    model.save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path
