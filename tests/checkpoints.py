"""Tiny random image-text-to-text checkpoints saved the way transformers saves real ones:
LLaVA-1.5's layout (CLIP tower, penultimate layer, MLP projector, Llama), Qwen2-VL's and
Qwen2.5-VL's, each with its processor and a chat template, built with transformers' own
classes; and what tests run on them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from contmm.model.chat import chat_messages
from contmm.model.collate import sample_image
from streams.synthetic import SyntheticShapes

# The synthetic stream's words and the templates' own: every word has its own id.
WORDS = " ".join(
    [*SyntheticShapes(train_size=4, test_size=4, pretrain_size=4).texts(), "user assistant system : \n"]
)

# LLaVA-1.5 style ("USER: <image>\n<question> ASSISTANT: <answer></s>USER: ..."); the assistant
# answer and its eos are wrapped in {% generation %} so return_assistant_tokens_mask works.
LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ 'USER: ' }}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<image>\n' }}{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}"
    "{{ ' ' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ 'ASSISTANT: ' }}"
    "{% generation %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{{ eos_token }}"
    "{% endgeneration %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# Qwen2-VL style (ChatML with <|vision_start|><|image_pad|><|vision_end|>).
QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{{ '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}"
    "{{ '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def word_tokenizer(special: list[str], **kwargs) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([WORDS], trainers.WordLevelTrainer(special_tokens=special))
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def llava_processor() -> LlavaProcessor:
    tokenizer = word_tokenizer(
        ["<pad>", "<unk>", "<s>", "</s>", "<image>"],
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS; 'default' drops it again -> (28/14)^2 = 4 tokens
        chat_template=LLAVA_TEMPLATE,
    )


def llava_model(tokenizer) -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            projection_dim=16,
        ),
        text_config=LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=4,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    return with_generation_ids(LlavaForConditionalGeneration(config), tokenizer)


QWEN_SPECIAL = [
    "<pad>",
    "<unk>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|image_pad|>",
    "<|vision_end|>",
    "<|video_pad|>",
]


def qwen2vl_processor() -> Qwen2VLProcessor:
    tokenizer = word_tokenizer(
        QWEN_SPECIAL,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        padding_side="left",
    )
    # factor = patch_size * merge_size = 28: a 56x56 image -> grid (1, 4, 4) -> 16 patches -> 4 tokens
    image_processor = Qwen2VLImageProcessor(
        min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    # Qwen2VLProcessor refuses video_processor=None (TypeError: ... a VideoProcessorMixin was expected)
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    return Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN_TEMPLATE,
    )


def qwen_text_config(tokenizer) -> dict:
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 256,
        # head_dim 16 -> 8 rotary frequencies split over (t, h, w)
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": None,
    }


def qwen_token_ids(tokenizer) -> dict:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def with_generation_ids(model, tokenizer):
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def qwen2vl_model(tokenizer) -> Qwen2VLForConditionalGeneration:
    torch.manual_seed(0)
    vision = {
        "depth": 2,
        "embed_dim": 16,
        "hidden_size": 32,
        "num_heads": 2,
        "mlp_ratio": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "in_channels": 3,
    }
    config = Qwen2VLConfig(
        vision_config=vision, text_config=qwen_text_config(tokenizer), **qwen_token_ids(tokenizer)
    )
    return with_generation_ids(Qwen2VLForConditionalGeneration(config), tokenizer)


def qwen25vl_processor() -> Qwen2_5_VLProcessor:
    """Same tokenizer / image and video processors as Qwen2-VL; only the processor class differs."""
    p = qwen2vl_processor()
    return Qwen2_5_VLProcessor(
        image_processor=p.image_processor,
        tokenizer=p.tokenizer,
        video_processor=p.video_processor,
        chat_template=QWEN_TEMPLATE,
    )


def qwen25vl_model(tokenizer) -> Qwen2_5_VLForConditionalGeneration:
    """Qwen2.5-VL: vision `hidden_size` is the ViT width, `out_hidden_size` the LM width,
    plus window attention (`window_size`, `fullatt_block_indexes`), SwiGLU vision MLP
    (`intermediate_size`), RMSNorm."""
    torch.manual_seed(0)
    vision = {
        "depth": 2,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_heads": 2,
        "out_hidden_size": 32,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,
        "fullatt_block_indexes": [1],
    }
    config = Qwen2_5_VLConfig(
        vision_config=vision, text_config=qwen_text_config(tokenizer), **qwen_token_ids(tokenizer)
    )
    return with_generation_ids(Qwen2_5_VLForConditionalGeneration(config), tokenizer)


def save_checkpoint(kind: str, directory: Path) -> Path:
    """Build the tiny ``llava``, ``qwen2_vl`` or ``qwen2_5_vl`` checkpoint; save model and processor."""
    processor = {"llava": llava_processor, "qwen2_vl": qwen2vl_processor, "qwen2_5_vl": qwen25vl_processor}[
        kind
    ]()
    model = {"llava": llava_model, "qwen2_vl": qwen2vl_model, "qwen2_5_vl": qwen25vl_model}[kind](
        processor.tokenizer
    )
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def with_images(messages: list[dict], sample: dict) -> list[dict]:
    for message in messages:
        for part in message["content"]:
            if part["type"] == "image":
                part["image"] = sample_image(sample)
    return messages


def fit_config(checkpoint, tmp_path, **sections) -> str:
    """A tiny two-task run of the whole checkpoint, written as a config file."""
    config = {
        "model": {"pretrained": str(checkpoint)},
        "stream": {
            "class_path": "streams.synthetic.SyntheticShapes",
            "init_args": {"tasks": ["colour", "shape"], "train_size": 16, "test_size": 6},
        },
        "data": {"batch_size": 8},
        "eval": {"batch_size": 4, "max_new_tokens": 4},
        "trainer": {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))
    return str(path)


def reference_answer(model, processor, sample: dict, max_new_tokens: int) -> str:
    """The greedy answer of transformers alone to a test sample: the processor's chat-template
    inputs and the model's own ``generate``."""
    inputs = processor.apply_chat_template(
        with_images(chat_messages(sample, with_answers=False), sample),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        tokens = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.batch_decode(tokens[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
