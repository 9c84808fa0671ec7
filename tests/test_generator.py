"""The Modality Generator against diffusers itself."""

import json
import subprocess
import sys

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file, save_file

from contmm.model.generator import GeneratorConfig, ModalityGenerator
from tests.generators import CAPTION_LENGTH, WIDTH, save_latent_generator, save_pixel_generator
from tests.helpers import REPO


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
