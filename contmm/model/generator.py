"""Modality Generator (MG_X of arXiv 2401.13601): a diffusers text-conditioned diffusion model.

It is loaded from a directory (or hub id) in the Stable Diffusion layout: ``unet/`` (a
``UNet2DConditionModel``), ``scheduler/``, and optionally ``vae/`` (latent diffusion; without
it the UNet denoises pixels) and ``text_encoder/`` + ``tokenizer/`` (the generator's own text
encoder, whose encoding of a caption is what the UNet was trained to read, and so the target
the Output Projector is aligned to). The tiny default's weights are made by
``experiments/generators/pretrain_tiny.py``. ``config:`` builds a random-init pixel-space
UNet instead, with no text encoder, to be trained in the run by the denoising objective.

Sampling follows diffusers' ``StableDiffusionPipeline`` step for step (same noise, scheduler
calls, guidance and decoding), so that a conditioning gives the image diffusers gives for it
as ``prompt_embeds``; tests hold it to that.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import nn
from transformers import AutoModel, AutoTokenizer

from contmm.checks import check_at_least
from contmm.model.files import check_model_dir, loader_errors
from contmm.model.images import to_rgb

SETTING = "model.generator.pretrained"
# The parts (subfolders) of a Stable Diffusion layout that are loaded.
PARTS = {"unet", "scheduler", "vae", "text_encoder", "tokenizer"}


@dataclass
class GeneratorConfig:
    """The Modality Generator: a diffusers diffusion model conditioned on the Output Projector.

    Args:
        pretrained: a directory or hub id in the Stable Diffusion layout (``unet/``,
            ``scheduler/``, optional ``vae/``, ``text_encoder/`` and ``tokenizer/``).
        config: instead, the arguments of a random-init pixel-space ``UNet2DConditionModel``
            (no VAE, no text encoder; diffusers' default DDPM noise schedule). It draws nothing
            until trained: it needs ``freeze: false`` and the Output Projector's
            ``denoising_weight`` > 0.
        sampler: the diffusers scheduler class that samples at evaluation, built from the
            directory's scheduler config (default: the directory's own scheduler class).
        num_inference_steps: sampler steps per image.
        guidance_scale: classifier-free guidance; above 1 the unconditional branch reads the
            text encoder's encoding of the empty caption, as Stable Diffusion's does.
        freeze: keep the generator's weights fixed (generators are frozen during instruction
            tuning as a rule).
    """

    pretrained: str | None = None
    config: dict | None = None
    sampler: str | None = None
    num_inference_steps: int = 20
    guidance_scale: float = 1.0
    freeze: bool = True

    def __post_init__(self) -> None:
        check_at_least("model.generator.num_inference_steps", self.num_inference_steps, 1)
        check_at_least("model.generator.guidance_scale", self.guidance_scale, 1.0)


def _load(cls, path: str, subfolder: str):
    """``cls.from_pretrained`` of one part, failing on any weight not loaded from the file."""
    with loader_errors(SETTING, path):
        model, info = cls.from_pretrained(path, subfolder=subfolder, output_loading_info=True)
    problems = {k: v for k, v in info.items() if k != "error_msgs" and v} | (
        {"errors": info["error_msgs"]} if info.get("error_msgs") else {}
    )
    if problems:
        raise ValueError(f"{SETTING} {path!r}: {subfolder}/ did not load cleanly: {problems}")
    return model


def to_pixels(images: list[Image.Image], size: int) -> torch.Tensor:
    """PIL images -> a (B, 3, size, size) batch in [-1, 1], as diffusers' models are trained."""
    pixels = np.stack([np.asarray(to_rgb(im).resize((size, size), Image.BILINEAR)) for im in images])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


def to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """A (B, 3, H, W) batch in [0, 1] (what :meth:`ModalityGenerator.sample` gives) -> PIL images."""
    rows = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(row) for row in rows]


def _parts(path: str) -> set[str]:
    """The parts a generator directory has (its folders), or a hub pipeline's model_index.json names."""
    local = Path(path)
    if local.is_dir():
        return {p.name for p in local.iterdir() if p.is_dir()}
    index = DiffusionPipeline.load_config(path)
    return {name for name, value in index.items() if isinstance(value, list) and value[0]}


class ModalityGenerator(nn.Module):
    """A conditional UNet (+ optional VAE and text encoder) with its training noise schedule
    and its inference sampler."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        if (cfg.pretrained is None) == (cfg.config is None):
            raise ValueError(
                "model.generator needs one of `pretrained` (a diffusers directory in the Stable Diffusion "
                "layout; the tiny default's is experiments/generators/tiny_shapes) or `config` (a random-init UNet)"
            )
        self.cfg = cfg
        if cfg.config is not None:
            self._random_init(cfg)
            return
        path = cfg.pretrained
        parts = _parts(path)
        if not {"unet", "scheduler"} <= parts:
            raise ValueError(
                f"model.generator.pretrained {path!r} needs unet/ and scheduler/ (Stable Diffusion layout); "
                f"it has {sorted(parts)}"
            )
        check_model_dir(path, SETTING, parts & PARTS)
        self.unet = _load(UNet2DConditionModel, path, "unet")
        self.vae = _load(AutoencoderKL, path, "vae") if "vae" in parts else None
        self.text_encoder = _load(AutoModel, path, "text_encoder") if "text_encoder" in parts else None
        self.tokenizer = None
        if self.text_encoder is not None:
            with loader_errors(SETTING, path):
                self.tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
        # Training noise as diffusers' own training scripts add it; sampling with the sampler.
        schedule = DDPMScheduler.load_config(path, subfolder="scheduler")
        self.noise_scheduler = DDPMScheduler.from_config(schedule)
        sampler_name = cfg.sampler or schedule["_class_name"]
        sampler_cls = getattr(diffusers, sampler_name, None)
        if not (isinstance(sampler_cls, type) and hasattr(sampler_cls, "set_timesteps")):
            raise ValueError(f"model.generator.sampler {sampler_name!r} is not a diffusers scheduler class")
        self.sampler = sampler_cls.from_config(schedule)
        if self.text_encoder is not None and self.text_encoder.config.hidden_size != self.conditioning_width:
            raise ValueError(
                f"model.generator.pretrained {path!r}: the text encoder's width "
                f"{self.text_encoder.config.hidden_size} is not the UNet's cross_attention_dim "
                f"{self.conditioning_width}"
            )
        if cfg.guidance_scale > 1 and self.text_encoder is None:
            raise ValueError(
                f"model.generator.guidance_scale > 1 needs a text encoder (the empty caption's encoding); "
                f"{path!r} has none"
            )

    def _random_init(self, cfg: GeneratorConfig) -> None:
        if cfg.freeze:
            raise ValueError(
                "model.generator.config builds an untrained UNet, which a frozen run never teaches to "
                "draw: set model.generator.freeze: false (and output_projector.denoising_weight > 0)"
            )
        if cfg.guidance_scale > 1:
            raise ValueError(
                "model.generator.guidance_scale > 1 needs a text encoder (the empty caption's encoding); "
                "a config: generator has none"
            )
        try:
            self.unet = UNet2DConditionModel(**cfg.config)
        except TypeError as error:
            raise ValueError(f"model.generator.config: {error}") from None
        self.vae = self.text_encoder = self.tokenizer = None
        schedule = DDPMScheduler().config
        self.noise_scheduler = DDPMScheduler.from_config(schedule)
        sampler_cls = getattr(diffusers, cfg.sampler or "DDPMScheduler", None)
        if not (isinstance(sampler_cls, type) and hasattr(sampler_cls, "set_timesteps")):
            raise ValueError(f"model.generator.sampler {cfg.sampler!r} is not a diffusers scheduler class")
        self.sampler = sampler_cls.from_config(schedule)

    @property
    def conditioning_width(self) -> int:
        return self.unet.config.cross_attention_dim

    @property
    def conditioning_length(self) -> int | None:
        """Tokens of the text encoder's encoding of a caption (None without a text encoder)."""
        return self.tokenizer.model_max_length if self.tokenizer is not None else None

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1

    @property
    def image_size(self) -> int:
        return self.unet.config.sample_size * self.vae_scale_factor

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """Target images as the generator is trained on them: in [-1, 1], at its resolution."""
        return to_pixels(images, self.image_size)

    def caption_ids(self, captions: list[str]) -> torch.Tensor:
        """Captions tokenised as Stable Diffusion does: padded and cut to the tokenizer's length."""
        if self.tokenizer is None:
            raise ValueError("the generator has no text encoder: captions cannot be encoded")
        return self.tokenizer(
            captions,
            padding="max_length",
            max_length=self.conditioning_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    def encode_captions(self, caption_ids: torch.Tensor) -> torch.Tensor:
        """The text encoder's last hidden states: what the UNet reads for these captions."""
        return self.text_encoder(caption_ids.to(self.text_encoder.device))[0]

    def denoising_loss(self, conditioning: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The diffusion training loss of ``images`` ([-1, 1]) under ``conditioning``: gradients
        reach the conditioning (and so the Output Projector) whether or not the UNet trains."""
        targets = images.to(self.unet.device, self.unet.dtype)
        if self.vae is not None:
            targets = self.vae.encode(targets).latent_dist.sample() * self.vae.config.scaling_factor
        noise = torch.randn_like(targets)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (targets.shape[0],), device=targets.device)
        noisy = self.noise_scheduler.add_noise(targets, noise, timesteps)
        prediction = self.unet(
            noisy, timesteps, encoder_hidden_states=conditioning.to(self.unet.dtype)
        ).sample
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            noise = self.noise_scheduler.get_velocity(targets, noise, timesteps)
        return F.mse_loss(prediction.float(), noise.float())

    @torch.no_grad()
    def sample(self, conditioning: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """Images in [0, 1], shape (B, C, H, W), for a batch of conditionings, all denoised
        together; sample ``i`` draws its noise from ``generators[i]`` only, so its image does
        not depend on the rest of the batch."""
        unet, sampler, guidance = self.unet, self.sampler, self.cfg.guidance_scale
        conditioning = conditioning.to(unet.device, unet.dtype)
        if guidance > 1:
            empty = self.encode_captions(self.caption_ids([""])).to(conditioning.dtype)
            conditioning = torch.cat([empty.expand(len(conditioning), -1, -1), conditioning])
        side = unet.config.sample_size
        shape = (len(generators), unet.config.in_channels, side, side)
        latents = randn_tensor(shape, generator=generators, device=unet.device, dtype=unet.dtype)
        latents = latents * sampler.init_noise_sigma
        sampler.set_timesteps(self.cfg.num_inference_steps, device=unet.device)
        step_kwargs = (
            {"generator": generators} if "generator" in inspect.signature(sampler.step).parameters else {}
        )
        if "eta" in inspect.signature(sampler.step).parameters:
            step_kwargs["eta"] = 0.0
        for t in sampler.timesteps:
            model_input = torch.cat([latents] * 2) if guidance > 1 else latents
            model_input = sampler.scale_model_input(model_input, t)
            noise = unet(model_input, t, encoder_hidden_states=conditioning).sample
            if guidance > 1:
                unconditional, conditional = noise.chunk(2)
                noise = unconditional + guidance * (conditional - unconditional)
            latents = sampler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
        if self.vae is not None:
            scaled = latents / self.vae.config.scaling_factor
            latents = self.vae.decode(scaled, return_dict=False, generator=generators)[0]
        return (latents.float() / 2 + 0.5).clamp(0, 1)
