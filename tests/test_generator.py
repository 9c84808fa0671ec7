"""The Modality Generator against diffusers itself."""

import json
import re
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file, save_file

from contmm.model import MMLLM
from contmm.model.collate import InstructionCollator
from contmm.model.generator import GeneratorConfig, ModalityGenerator
from contmm.model.output_projector import OutputProjectorConfig
from streams.synthetic import SyntheticShapes
from tests.generators import CAPTION_LENGTH, WIDTH, save_latent_generator, save_pixel_generator
from tests.helpers import REPO, tiny_config, train_steps


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_sampling_gives_the_stable_diffusion_pipelines_image(tmp_path, guidance):
    path = save_latent_generator(tmp_path / "sd")
    generator = ModalityGenerator(
        GeneratorConfig(pretrained=str(path), num_inference_steps=4, guidance_scale=guidance)
    )
    conditioning = torch.randn(3, CAPTION_LENGTH, WIDTH, generator=torch.Generator().manual_seed(1))
    ours = generator.sample(conditioning, generators([5, 6, 7]))

    pipeline = StableDiffusionPipeline.from_pretrained(
        path, safety_checker=None, requires_safety_checker=False
    )
    empty = pipeline.encode_prompt([""], "cpu", 1, False)[0].expand(3, -1, -1)
    theirs = pipeline(
        prompt_embeds=conditioning,
        negative_prompt_embeds=empty,
        num_inference_steps=4,
        guidance_scale=guidance,
        generator=generators([5, 6, 7]),
        output_type="pt",
    ).images
    assert ours.shape == (3, 3, 16, 16)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours[0], ours[1], atol=1e-2)  # different seeds, different images


def test_a_samples_image_does_not_depend_on_its_batch(tmp_path):
    generator = ModalityGenerator(
        GeneratorConfig(pretrained=str(save_pixel_generator(tmp_path / "g")), num_inference_steps=3)
    )
    conditioning = torch.randn(4, CAPTION_LENGTH, WIDTH)
    batched = generator.sample(conditioning, generators([0, 1, 2, 3]))
    alone = torch.cat([generator.sample(conditioning[i : i + 1], generators([i])) for i in range(4)])
    assert batched.shape == (4, 3, 16, 16)
    assert torch.allclose(batched, alone, atol=1e-5)


def test_a_weight_missing_from_the_unet_is_an_error(tmp_path):
    path = save_pixel_generator(tmp_path / "g")
    weights = path / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    missing = next(k for k in tensors if "attn" in k)
    del tensors[missing]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="unet/ did not load cleanly"):
        ModalityGenerator(GeneratorConfig(pretrained=str(path)))


def test_a_directory_without_a_unet_is_named(tmp_path):
    with pytest.raises(ValueError, match="needs unet/ and scheduler/"):
        ModalityGenerator(GeneratorConfig(pretrained=str(tmp_path)))


@pytest.mark.slow
def test_the_tiny_generators_pretraining_script_still_runs_and_its_output_loads(tmp_path):
    output = tmp_path / "tiny"
    script = REPO / "experiments" / "generators" / "pretrain_tiny.py"
    args = ["--output", str(output), "--steps", "2", "--batch_size", "4", "--per_caption", "1"]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((output / "pretraining.json").read_text())
    assert report["steps"] == 2 and 0 <= report["colour_accuracy"] <= 1
    generator = ModalityGenerator(GeneratorConfig(pretrained=str(output), num_inference_steps=2))
    assert generator.sample(torch.zeros(1, 8, 32), generators([0])).shape == (1, 3, 16, 16)


def test_the_committed_tiny_generator_loads_as_a_user_would_load_it():
    generator = ModalityGenerator(
        GeneratorConfig(pretrained=str(REPO / "experiments" / "generators" / "tiny_shapes"))
    )
    assert (generator.image_size, generator.conditioning_length, generator.vae) == (16, 8, None)


TINY_UNET = {
    "sample_size": 8,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}


def test_a_random_init_generator_is_trained_by_the_denoising_objective_and_samples():
    stream = SyntheticShapes(tasks=["draw_colour"], train_size=4, test_size=2, pretrain_size=2, image_size=8)
    cfg = replace(
        tiny_config(),
        output_projector=OutputProjectorConfig(num_heads=2, alignment_weight=0.0, denoising_weight=1.0),
        generator=GeneratorConfig(config=TINY_UNET, freeze=False, num_inference_steps=2),
    )
    torch.manual_seed(0)
    model = MMLLM.build(cfg, stream.texts())
    model.set_trainable(["output_projector", "generator"])
    before = {n: p.detach().clone() for n, p in model.generator.unet.named_parameters()}
    batch = InstructionCollator(model, train=True)([stream.tasks[0].train[i] for i in range(4)])
    train_steps(model, batch, steps=2)
    changed = [n for n, p in model.generator.unet.named_parameters() if not torch.equal(before[n], p)]
    assert len(changed) == len(before)  # the whole UNet learns from the denoising loss
    conditioning = torch.randn(2, model.generator.conditioning_length or 4, 32)
    images = model.generator.sample(conditioning, [torch.Generator().manual_seed(s) for s in (0, 1)])
    assert images.shape == (2, 3, 8, 8) and images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"config": TINY_UNET}, "freeze: false"),
        ({"config": TINY_UNET, "freeze": False, "guidance_scale": 2.0}, "needs a text encoder"),
        ({"config": {**TINY_UNET, "colours": 3}, "freeze": False}, "model.generator.config"),
        ({}, "needs one of `pretrained`"),
    ],
)
def test_a_random_init_generator_that_could_not_learn_is_refused(settings, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        ModalityGenerator(GeneratorConfig(**settings))
