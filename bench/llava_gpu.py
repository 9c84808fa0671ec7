"""A 7B-class LLaVA run through contmm on one GPU: training throughput against a hand-written
loop, model FLOP utilisation, peak memory, and batched evaluation against one sample at a time.

The model is LLaVA-1.5's shape with random weights (nothing is downloaded): a CLIP
ViT-L/14-336 tower, the 2-layer MLP projector, a Llama-7B-shaped LLM, saved as a LLaVA
checkpoint with its processor and loaded the way a user's is (``model.pretrained``): bf16
weights, LoRA (r 128) on the frozen LLM with the projector trained, gradient checkpointing,
sequences of LLaVA-1.5's length (576 image tokens and about 130 text tokens).

Training, side by side on the same model and the same collated batches (alternating
rounds): contmm's ``ContinualModule`` under a Lightning ``Trainer`` (bf16-mixed) against a
plain PyTorch loop (the same optimizer and schedule, bf16 autocast). MFU counts the model's
FLOPs per step: the frozen tower's forward, the trained projector's forward and backward,
the LLM's forward and its backward through the activations (the frozen weights get no
gradient; recomputation is not counted), attention included.

Evaluation: contmm's batched left-padded greedy decoding against ``generate`` on one
sample at a time, on the same prompts (predictions compared).

``--tiny`` runs the same code on the CPU with tiny shapes (the test suite does).

Run: ``python bench/llava_gpu.py [--steps 20 --rounds 2]`` or ``python bench/llava_gpu.py --tiny``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from common import alternating_rounds, quiet_lightning
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from train_throughput import synchronize, train_lightning, train_plain
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from contmm.model import (
    BackboneConfig,
    EncoderConfig,
    ModelConfig,
    PretrainedMMLLM,
    ProjectorConfig,
    model_inputs,
)
from strategies.lora import LoRA

SHAPES = {
    "llava-1.5-7b": {
        "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                   "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "projection_dim": 768},
        "text": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096},
        "vocab": 32000, "question_words": 100, "answer_words": 24, "lora_r": 128,
    },
    "tiny": {
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 2, "image_size": 28, "patch_size": 14, "projection_dim": 32},
        "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256},
        "vocab": 500, "question_words": 20, "answer_words": 5, "lora_r": 8,
    },
}  # fmt: skip
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
# LLaVA-1.5's conversation format (vicuna_v1 without a system prompt).
TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ 'USER: ' }}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{{ ' ' }}"
    "{% else %}{{ 'ASSISTANT: ' }}{% for c in message['content'] %}{{ c['text'] }}{% endfor %}"
    "{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, per the vendors' sheets


def save_checkpoint(shape: dict, directory: Path, device: torch.device, dtype: torch.dtype) -> None:
    """LLaVA-1.5's layout with random weights and a word-level processor, saved as transformers does."""
    words = [f"w{i}" for i in range(shape["vocab"] - len(SPECIAL))]
    tokenizer = Tokenizer(
        models.WordLevel({w: i for i, w in enumerate([*SPECIAL, *words])}, unk_token="<unk>")
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
        eos_token="</s>", extra_special_tokens={"image_token": "<image>"}, padding_side="left",
    )  # fmt: skip
    side = shape["vision"]["image_size"]
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}),
        tokenizer=tokenizer, patch_size=shape["vision"]["patch_size"], vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=TEMPLATE,
    )  # fmt: skip
    ids = {
        f"{k}_token_id": tokenizer.convert_tokens_to_ids(t)
        for k, t in [("pad", "<pad>"), ("bos", "<s>"), ("eos", "</s>")]
    }
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**shape["vision"]),
        text_config=LlamaConfig(**shape["text"], vocab_size=shape["vocab"], **ids),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(side // shape["vision"]["patch_size"]) ** 2,
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config.update(**ids)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


def samples(shape: dict, count: int, seed: int) -> list[dict]:
    """Samples in contmm's form: a question with its image placeholder, an answer, an image."""
    rng = np.random.default_rng(seed)
    side, vocab = shape["vision"]["image_size"], shape["vocab"] - len(SPECIAL)

    def text(n: int) -> str:
        return " ".join(f"w{i}" for i in rng.integers(0, vocab, n))

    return [
        {
            "id": i,
            "question": "<image>\n" + text(shape["question_words"]),
            "answer": text(shape["answer_words"]),
            "image": Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)),
        }
        for i in range(count)
    ]


def model_flops(model: PretrainedMMLLM, batch: dict) -> float:
    """The model FLOPs of one training step on ``batch`` (see the module docstring)."""
    hf = model.hf

    def weights(module: torch.nn.Module) -> int:
        return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))

    text = hf.config.text_config
    images, tokens, length = (
        batch["pixel_values"].shape[0],
        int(batch["attention_mask"].sum()),
        batch["input_ids"].shape[1],
    )
    patches = (hf.config.vision_config.image_size // hf.config.vision_config.patch_size) ** 2 + 1
    tower = 2 * weights(model.encoder) * patches * images
    projector = 3 * 2 * weights(model.input_projector) * (patches - 1) * images
    llm_forward = 2 * (weights(model.backbone.lm) + hf.lm_head.weight.numel()) * tokens
    attention_forward = 4 * text.num_hidden_layers * text.hidden_size * length * tokens
    return tower + projector + 2 * (llm_forward + attention_forward)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (what CI runs)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per side and round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps at the start of each side")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-samples", type=int, default=64)
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--output", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    quiet_lightning()
    shape = SHAPES["tiny" if args.tiny else "llava-1.5-7b"]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    on_gpu = device.type == "cuda"
    if not on_gpu and not args.tiny:
        parser.error("the 7B-class run needs a CUDA GPU; --tiny runs the same code on the CPU")
    dtype = torch.bfloat16 if on_gpu else torch.float32

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else nullcontext()

    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        save_checkpoint(shape, Path(directory), device, dtype)
        cfg = ModelConfig(
            pretrained=directory, dtype="bfloat16" if on_gpu else "float32", gradient_checkpointing=True,
            encoder=EncoderConfig(freeze=True), input_projector=ProjectorConfig(freeze=False),
            backbone=BackboneConfig(freeze=True),
        )  # fmt: skip
        model = PretrainedMMLLM(cfg)
        model.set_trainable(model.configured_trainable())
        LoRA(r=shape["lora_r"], alpha=2 * shape["lora_r"]).before_task(model, 0)  # LoRA on the LLM
        print(f"checkpoint built, saved and loaded in {time.perf_counter() - start:.0f} s on {device}")

    train_samples = samples(shape, args.batch_size * args.steps, seed=0)
    collate = model.collator(train=True)
    batches = [
        collate(train_samples[i : i + args.batch_size]) for i in range(0, len(train_samples), args.batch_size)
    ]
    flops = statistics.fmean(model_flops(model, batch) for batch in batches[args.warmup :])
    peak = next(
        (v for k, v in PEAK_BF16_TFLOPS.items() if on_gpu and k in torch.cuda.get_device_name()), None
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    sequence = statistics.fmean(b["input_ids"].shape[1] for b in batches)
    print(
        f"{total:,} parameters, {trainable:,} trainable; batches of {args.batch_size}, "
        f"{sequence:.0f} tokens each (padded); {flops:.3g} model FLOPs a step"
    )

    timed = (args.steps - args.warmup) * args.batch_size
    precision = "bf16-mixed" if on_gpu else "32-true"
    sides = {
        "contmm": lambda: measure(device, lambda: train_lightning(model, batches, args.warmup, None, "auto", precision)),
        "plain": lambda: measure(device, lambda: train_plain(model, batches, args.warmup, device, autocast)),
    }  # fmt: skip
    rates, peaks = {name: [] for name in sides}, {name: 0.0 for name in sides}
    for results in alternating_rounds(args.rounds, sides):
        for name, (seconds, peak_bytes) in results.items():
            rates[name].append(timed / seconds)
            peaks[name] = max(peaks[name], peak_bytes)
    figures = {
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "shape": "tiny" if args.tiny else "llava-1.5-7b",
    }
    for name in sides:
        rate = statistics.median(rates[name])
        achieved = rate / args.batch_size * flops / 1e12
        figures[f"train_{name}_samples_per_s"] = rate
        figures[f"train_{name}_mfu"] = achieved / peak if peak else None
        figures[f"train_{name}_peak_memory_gib"] = peaks[name] / 2**30 if on_gpu else None
    figures["train_ratio"] = figures["train_contmm_samples_per_s"] / figures["train_plain_samples_per_s"]

    eval_samples = samples(shape, args.eval_samples, seed=1)
    figures |= evaluation(model, eval_samples, args, device, autocast)
    for name in sides:
        mfu = figures[f"train_{name}_mfu"]
        memory = figures[f"train_{name}_peak_memory_gib"]
        print(f"train {name}: {figures[f'train_{name}_samples_per_s']:.2f} samples/s, MFU "
              f"{'n/a (no GPU peak known)' if mfu is None else f'{100 * mfu:.1f}%'}, peak memory "
              f"{'n/a (CPU)' if memory is None else f'{memory:.1f} GiB'}")  # fmt: skip
    print(f"train ratio contmm / plain loop: {figures['train_ratio']:.3f} (target >= 0.95)")
    print(f"eval: batched {figures['eval_batched_samples_per_s']:.2f} samples/s, one at a time "
          f"{figures['eval_single_samples_per_s']:.2f} samples/s, ratio {figures['eval_ratio']:.1f}x "
          f"(target >= 10x); {figures['eval_predictions_differing']} of {args.eval_samples} predictions differ")  # fmt: skip
    if args.output:
        args.output.write_text(json.dumps(figures, indent=1))


def measure(device: torch.device, run) -> tuple[float, int]:
    """Seconds of ``run`` and the peak GPU memory it allocated (0 on the CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = run()
    return seconds, torch.cuda.max_memory_allocated() if device.type == "cuda" else 0


@torch.no_grad()
def evaluation(model, eval_samples, args, device, autocast) -> dict:
    """contmm's batched decoding against one sample at a time, on the same prompts."""
    model.to(device).eval()
    collate = model.collator(train=False)

    def decode(batch_size: int) -> tuple[float, list]:
        predictions = []
        synchronize(device)
        start = time.perf_counter()
        for i in range(0, len(eval_samples), batch_size):
            batch = {
                k: v.to(device) for k, v in model_inputs(collate(eval_samples[i : i + batch_size])).items()
            }
            with autocast():
                predictions += model.generate(batch, args.max_new_tokens).tolist()
        synchronize(device)
        return time.perf_counter() - start, predictions

    decode(args.eval_batch_size)  # warm-up (kernels, caches)
    batched_seconds, batched = decode(args.eval_batch_size)
    single_seconds, single = decode(1)
    pad = model.tokenizer.pad_token_id

    def strip(tokens: list[int]) -> list[int]:
        return [t for t in tokens if t != pad]

    return {
        "eval_batched_samples_per_s": len(eval_samples) / batched_seconds,
        "eval_single_samples_per_s": len(eval_samples) / single_seconds,
        "eval_ratio": single_seconds / batched_seconds,
        "eval_predictions_differing": sum(strip(a) != strip(b) for a, b in zip(batched, single)),
    }


if __name__ == "__main__":
    main()
