"""Pre-train the tiny default's Modality Generator on the synthetic stream's scenes, once.

Real generators (Stable Diffusion) arrive pre-trained and stay frozen during instruction
tuning; this makes the tiny default's generator the same kind of thing. It trains a
pixel-space diffusers ``UNet2DConditionModel`` and a CLIP text encoder (transformers'
``CLIPTextModel``) together on the denoising loss, conditioned on captions of rendered
scenes that name some of the object's attributes ("a red circle in the top left", "a red
shape", "a shape in the top left", ...; a tenth have the empty caption, for guidance).
It saves them in the Stable Diffusion layout that ``model.generator.pretrained`` reads,
then samples one image per caption kind and colour / quadrant and prints how often the
pixel scorers find what the caption asked for.

    python experiments/generators/pretrain_tiny.py --output experiments/generators/tiny_shapes
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from jsonargparse import CLI
from tqdm import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from contmm.model.generator import GeneratorConfig, ModalityGenerator, to_images, to_pixels
from contmm.model.tokenizer import build_word_tokenizer
from contmm.scoring.images import QUADRANTS, colour_match, quadrant_match
from streams.synthetic import COLOURS, SHAPES, Obj, render

CAPTION_LENGTH = 8  # "a red circle in the top left" is 7 words
WIDTH = 32  # the text encoder's width = the UNet's cross_attention_dim = the conditioning width


def caption(obj: Obj, rng: random.Random) -> str:
    """A caption naming a random subset of the object's colour, shape and quadrant."""
    colour, shape, where = rng.choice(
        [(1, 1, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
    )
    noun = f"{obj.colour + ' ' if colour else ''}{obj.shape if shape else 'shape'}"
    return f"a {noun}" + (f" in the {QUADRANTS[obj.quadrant]}" if where else "")


def scenes(rng: random.Random, image_size: int, count: int) -> tuple[list, list[str]]:
    objs = [Obj(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.randrange(4)) for _ in range(count)]
    images = [render([obj], image_size, rng.getrandbits(32)) for obj in objs]
    captions = ["" if rng.random() < 0.1 else caption(obj, rng) for obj in objs]
    return images, captions


def build(tokenizer) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        # Down to 4x4, so that every pixel's features see the borders (where it is: with two
        # levels the quadrant was at chance); cross-attention at 8x8 and 4x4 only, a fraction
        # of its cost at 16x16.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=WIDTH,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
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
    )
    # CLIP initialises word embeddings at std 0.02; from there joint training separated "top"
    # from "bottom" but left "left" and "right" almost equal (distance 0.36 against 6.1 in
    # the encoder's output after 3000 steps), so the UNet drew the asked row in a random
    # column. Unit-scale embeddings start every word distinct.
    torch.nn.init.normal_(text_encoder.get_input_embeddings().weight, std=1.0)
    return unet, text_encoder


def pretrain(
    output: Path = Path("experiments/generators/tiny_shapes"),
    steps: int = 3000,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    per_caption: int = 4,
) -> dict:
    """Train the tiny generator and its text encoder, save them to ``output``, report scores.

    Args:
        output: the generator directory to write (Stable Diffusion layout).
        steps: optimizer steps.
        batch_size: scenes per step.
        lr: AdamW learning rate (cosine decay to 0).
        seed: seeds scenes, captions, weights and noise.
        per_caption: images sampled per caption for the report.
    """
    torch.manual_seed(seed)
    rng = random.Random(seed)
    words = [f"a {c} {s} in the {q}" for c in COLOURS for s in SHAPES for q in QUADRANTS] + ["a shape"]
    tokenizer = build_word_tokenizer(words)
    tokenizer.model_max_length = CAPTION_LENGTH
    unet, text_encoder = build(tokenizer)
    # v-prediction: with epsilon-prediction the high-noise steps, where the layout (the
    # quadrant) is decided, weigh little, and the quadrant stayed at chance after 3000 steps.
    noise_scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    parameters = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    started = time.perf_counter()
    for _ in (bar := tqdm(range(steps), desc="generator pre-training")):
        images, captions = scenes(rng, 32, batch_size)
        pixels = to_pixels(images, 16)
        ids = tokenizer(
            captions, padding="max_length", max_length=CAPTION_LENGTH, return_tensors="pt"
        ).input_ids
        noise = torch.randn_like(pixels)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,))
        prediction = unet(noise_scheduler.add_noise(pixels, noise, t), t, text_encoder(ids)[0]).sample
        target = noise_scheduler.get_velocity(pixels, noise, t)
        loss = torch.nn.functional.mse_loss(prediction, target)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    minutes = (time.perf_counter() - started) / 60

    output.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(output / "unet")
    text_encoder.save_pretrained(output / "text_encoder")
    tokenizer.save_pretrained(output / "tokenizer")
    DDIMScheduler.from_config(noise_scheduler.config).save_pretrained(output / "scheduler")
    report = {
        "steps": steps,
        "batch_size": batch_size,
        "minutes": round(minutes, 1),
        **evaluate(output, seed),
    }
    (output / "pretraining.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


def evaluate(path: Path, seed: int, per_caption: int = 4) -> dict:
    """How often the saved generator draws what a caption asks, by the pixel scorers."""
    generator = ModalityGenerator(GeneratorConfig(pretrained=str(path)))
    asks = [(f"a {c} shape", "colour", c) for c in COLOURS] + [
        (f"a shape in the {q}", "quadrant", q) for q in QUADRANTS
    ]
    asks += [(f"a {c} circle in the {q}", "both", (c, q)) for c in COLOURS for q in QUADRANTS]
    captions = [text for text, _, _ in asks for _ in range(per_caption)]
    with torch.no_grad():
        conditioning = generator.encode_captions(generator.caption_ids(captions))
    seeds = [torch.Generator().manual_seed(seed * 100_000 + i) for i in range(len(captions))]
    images = to_images(generator.sample(conditioning, seeds))
    scores = {"colour": [], "quadrant": [], "both": []}
    for (_, kind, reference), image in zip([a for a in asks for _ in range(per_caption)], images):
        if kind == "both":
            scores[kind].append(colour_match(image, reference[0]) * quadrant_match(image, reference[1]))
        else:
            scores[kind].append((colour_match if kind == "colour" else quadrant_match)(image, reference))
    return {f"{kind}_accuracy": round(sum(v) / len(v), 3) for kind, v in scores.items()}


if __name__ == "__main__":
    CLI(pretrain)
