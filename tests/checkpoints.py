"""Tiny random multimodal checkpoints saved the way transformers saves real ones: LLaVA-1.5's
layout (CLIP tower, penultimate layer, MLP projector, Llama), Qwen2-VL's (images and video),
Qwen2-Audio's and the other families of ``contmm.model.pretrained.FAMILIES``, each with its
processor and a chat template, built with transformers' own classes; and what tests run on
them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    Gemma3TextConfig,
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
    InternVLVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaNextVideoProcessor,
    LlavaNextVideoVideoProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
    SiglipVisionConfig,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
    SmolVLMVisionConfig,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
    VideoLlavaImageProcessor,
    VideoLlavaProcessor,
    VideoLlavaVideoProcessor,
    WhisperFeatureExtractor,
)
from transformers.video_utils import load_video

from contmm.model.chat import chat_messages
from contmm.model.collate import sample_image
from streams.synthetic import SyntheticShapes

# The synthetic stream's words and the templates' own: every word has its own id.
WORDS = " ".join(
    [*SyntheticShapes(train_size=4, test_size=4, pretrain_size=4).texts(), "user assistant system : \n"]
)

# LLaVA-1.5's assistant turn ("ASSISTANT: <answer></s>"; a prompt ends "ASSISTANT:"), the
# answer and its eos wrapped in {% generation %} so return_assistant_tokens_mask works. The
# LLaVA-style templates end with it.
LLAVA_ANSWERS = (
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

# LLaVA-1.5 style ("USER: <image>\n<question> ASSISTANT: <answer></s>USER: ...").

LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ 'USER: ' }}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<image>\n' }}{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}"
    "{{ ' ' }}" + LLAVA_ANSWERS
)

# Qwen2-VL style (ChatML with <|vision_start|><|image_pad|><|vision_end|>, and
# <|vision_start|><|video_pad|><|vision_end|> for a clip).
QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{{ '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif c['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif c['type'] == 'audio' %}{{ '<|audio_bos|><|AUDIO|><|audio_eos|>' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}"
    "{{ '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# Every family's vision tower at the same tiny sizes (its image and patch sizes differ).
TINY_VISION = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}


def llama_text_config(tokenizer, max_position_embeddings: int) -> LlamaConfig:
    """A tiny Llama LM for ``tokenizer``'s vocabulary and special tokens."""
    return LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def word_tokenizer(special: list[str], **kwargs) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([WORDS], trainers.WordLevelTrainer(special_tokens=special))
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def chatml_tokenizer(special: list[str], **media_tokens: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with ChatML's ends (<|im_end|> the eos, no bos), left-padding, and
    the processor's media tokens named (``image_token="<|image_pad|>"``, ...)."""
    return word_tokenizer(
        special,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
        extra_special_tokens=media_tokens,
        padding_side="left",
    )


def llava_tokenizer(video: bool = False) -> PreTrainedTokenizerFast:
    """LLaVA-1.5's word-level tokenizer (<s>, </s>, left padding) with its <image> token, and
    with ``video`` a <video> token beside it."""
    media = {"image_token": "<image>", **({"video_token": "<video>"} if video else {})}
    return word_tokenizer(
        ["<pad>", "<unk>", "<s>", "</s>", *media.values()],
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens=media,
        padding_side="left",
    )


def llava_processor() -> LlavaProcessor:
    tokenizer = llava_tokenizer()
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
        vision_config=CLIPVisionConfig(**TINY_VISION, image_size=28, patch_size=14, projection_dim=16),
        text_config=llama_text_config(tokenizer, max_position_embeddings=128),
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
    tokenizer = chatml_tokenizer(QWEN_SPECIAL, image_token="<|image_pad|>", video_token="<|video_pad|>")
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


def qwen2_text_config(tokenizer, **overrides) -> dict:
    """The same LM as a plain Qwen2 (no M-RoPE sections): InternVL's and LLaVA-OneVision's."""
    plain = {k: v for k, v in qwen_text_config(tokenizer).items() if k != "rope_parameters"}
    return {"model_type": "qwen2", **plain, **overrides}


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


def qwen3vl_processor() -> Qwen3VLProcessor:
    """Qwen3-VL's own processor with Qwen2-VL's tokenizer and ChatML template (Qwen3-VL-Instruct's
    style); its image processor is Qwen2-VL's class, as in Qwen3-VL checkpoints, at patch size 16:
    factor = 16 * merge 2 = 32, so a 64x64 image -> grid (1, 4, 4) -> 16 patches -> 4 tokens."""
    sizes = {
        "size": {"shortest_edge": 64 * 64, "longest_edge": 64 * 64},
        "patch_size": 16,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(**sizes),
        tokenizer=qwen2vl_processor().tokenizer,
        video_processor=Qwen3VLVideoProcessor(**sizes),  # the processor refuses None
        chat_template=QWEN_TEMPLATE,
    )


def qwen3vl_model(tokenizer) -> Qwen3VLForConditionalGeneration:
    """Qwen3-VL: a ViT with learned position embeddings (a 4x4 grid, resampled per image) and
    2D rope, the merger into the LM width, and a deepstack merger on vision layer 0 whose
    features are added to the LM's first layer's output at the image tokens; the LM is Qwen3's
    (q/k norm, explicit head_dim) with interleaved M-RoPE."""
    torch.manual_seed(0)
    vision = {
        "depth": 2,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_heads": 2,
        "out_hidden_size": 32,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 16,
        "deepstack_visual_indexes": [0],
    }
    # head_dim 16 -> 8 rotary frequencies, interleaved t h w t h w t t (Qwen3-VL's 24:20:20 scaled)
    rope = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 2, 2], "mrope_interleaved": True}
    text = {**qwen_text_config(tokenizer), "head_dim": 16, "rope_parameters": rope}
    config = Qwen3VLConfig(vision_config=vision, text_config=text, **qwen_token_ids(tokenizer))
    return with_generation_ids(Qwen3VLForConditionalGeneration(config), tokenizer)


# InternVL-hf style (ChatML; an image is '<IMG_CONTEXT>\n', which the processor expands into
# <img> + image_seq_length x <IMG_CONTEXT> + </img>; a clip is '<video>\n', which it expands into
# one such block per frame, 'Frame1: <img>...</img>\nFrame2: ...'), with the answer and its
# <|im_end|> in {% generation %}.
INTERNVL_TEMPLATE = QWEN_TEMPLATE.replace(
    "<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>\n"
).replace("<|vision_start|><|video_pad|><|vision_end|>", "<video>\n")
INTERNVL_SPECIAL = [
    "<pad>",
    "<unk>",
    "<|im_start|>",
    "<|im_end|>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<video>",
]


def internvl_processor() -> InternVLProcessor:
    """InternVL's own processor; its tokenizer names the image tokens as InternVL-hf's does. A
    56x56 image is one tile: the processor turns tiling on (``crop_to_patches``) whatever the
    image processor says, so ``max_patches=1`` keeps it to one crop and no thumbnail."""
    tokenizer = chatml_tokenizer(
        INTERNVL_SPECIAL,
        start_image_token="<img>",
        end_image_token="</img>",
        context_image_token="<IMG_CONTEXT>",
        video_token="<video>",
    )
    size = {"height": 56, "width": 56}
    image_processor = GotOcr2ImageProcessor(size=size, crop_to_patches=False, max_patches=1)
    return InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        # A clip: 4 frames sampled (one count across a batch: the processor stacks the clips), each
        # a 56 px image of 4 tokens.
        video_processor=InternVLVideoProcessor(size=size, do_sample_frames=True, num_frames=4),
        image_seq_length=4,
        chat_template=INTERNVL_TEMPLATE,
    )


def internvl_model(tokenizer) -> InternVLForConditionalGeneration:
    """InternVL: an InternViT tower (CLS, layer scale, last layer read, CLS dropped) whose
    (56/14)^2 = 16 patch features are pixel-shuffled (``downsample_ratio`` 0.5) into 4 tokens of
    4 x 16 channels, an MLP projector (LayerNorm, Linear, GELU, Linear) into a Qwen2 LM with tied
    embeddings."""
    torch.manual_seed(0)
    vision = InternVLVisionConfig(**TINY_VISION, image_size=56, patch_size=14)
    text = qwen2_text_config(tokenizer)
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=4,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    return with_generation_ids(InternVLForConditionalGeneration(config), tokenizer)


# Gemma 3 (IT) style: '<bos>' opens the conversation (and the tokenizer adds one too, as
# Gemma's does: the processor then adds no special tokens); the assistant is 'model'; an
# image is '<start_of_image>', which the processor expands into '\n\n<start_of_image>' +
# image_seq_length x '<image_soft_token>' + '<end_of_image>\n\n'. The answer and its
# <end_of_turn> are in {% generation %}.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<start_of_turn>model\n' }}{% generation %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] | trim }}{% endif %}{% endfor %}"
    "{{ '<end_of_turn>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<start_of_turn>' + message['role'] + '\n' }}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] | trim }}{% endif %}"
    "{% endfor %}"
    "{{ '<end_of_turn>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# Gemma's own order: <pad> 0, <eos> 1, <bos> 2, <unk> 3.
GEMMA3_SPECIAL = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
]


def gemma3_processor() -> Gemma3Processor:
    """Gemma 3's own processor; its tokenizer names the image tokens as Gemma 3's does, adds
    <bos>, and has <eos> as its eos while an IT model ends a turn with <end_of_turn> (both
    are the generation config's eos, as in Gemma 3 IT checkpoints). A 32x32 image, no
    pan-and-scan crops."""
    tokenizer = word_tokenizer(
        GEMMA3_SPECIAL,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
        add_bos_token=True,
        padding_side="left",
    )
    tokenizer.add_tokens(["model"])  # the template's role word
    return Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": 32, "width": 32}, do_pan_and_scan=False),
        tokenizer=tokenizer,
        image_seq_length=4,
        chat_template=GEMMA3_TEMPLATE,
    )


def gemma3_model(tokenizer) -> Gemma3ForConditionalGeneration:
    """Gemma 3: a SigLIP tower without its pooling head, last layer read ((32/8)^2 = 16
    patches), the projector (average-pooled 2x2 -> 4 tokens, RMSNorm, a matrix into the LM
    width) and Gemma 3's LM (scaled, tied embeddings; q/k norm; a sliding-window layer of
    window 16 then a global one, shorter than a conversation)."""
    torch.manual_seed(0)
    vision = SiglipVisionConfig(**TINY_VISION, image_size=32, patch_size=8, vision_use_head=False)
    text = Gemma3TextConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = Gemma3Config(
        vision_config=vision,
        text_config=text,
        mm_tokens_per_image=4,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
    )
    model = Gemma3ForConditionalGeneration(config)
    # transformers initialises the projection to zeros: random, as a trained one, so images count.
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.05)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end_of_turn]
    return model


# SmolVLM (Instruct) style: '<|im_start|>' opens the conversation, then 'User:<image>...<end_of_utterance>\n'
# and 'Assistant: <answer><end_of_utterance>\n' ('User:' before an image, 'User: ' before text);
# the processor expands '<image>' into '<fake_token_around_image><global-img>' + image_seq_len x
# '<image>' + '<fake_token_around_image>' (one image, not split into tiles); a clip is '<video>',
# which it expands into an intro naming the frame count and the clip's length, then for each frame
# '\nFrame from MM:SS:' and the frame's image block as a single image's, then '\n\n'. The answer
# and its <end_of_utterance> are in {% generation %}. A conversation with a clip is rendered with
# the processor's own built-in template (DEFAULT_CHAT_TEMPLATE in processing_smolvlm.py) unless a
# template is named: it renders what this one does, without the {% generation %} marks.
SMOLVLM_TEMPLATE = (
    "<|im_start|>"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{{ '<end_of_utterance>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<image>' }}{% elif c['type'] == 'video' %}{{ '<video>' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}"
    "{{ '<end_of_utterance>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
SMOLVLM_SPECIAL = [
    "<unk>",  # word_tokenizer's unknown word (SmolVLM's is <|endoftext|>)
    "<|im_start|>",
    "<|im_end|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<global-img>",
    "<image>",
    "<video>",
]


def smolvlm_processor() -> SmolVLMProcessor:
    """SmolVLM's own processor (it needs num2words); its tokenizer names the image tokens as
    SmolVLM's does, with <end_of_utterance> as eos. A 32x32 image, not split into tiles
    (``do_image_splitting`` off): one global view of (32/8)^2 / 2^2 = 4 tokens."""
    tokenizer = word_tokenizer(
        SMOLVLM_SPECIAL,
        pad_token="<|im_end|>",
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        extra_special_tokens={
            "fake_image_token": "<fake_token_around_image>",
            "global_image_token": "<global-img>",
            "image_token": "<image>",
            "end_of_utterance_token": "<end_of_utterance>",
            "video_token": "<video>",
        },
        padding_side="left",
    )
    sizes = {"size": {"longest_edge": 32}, "max_image_size": {"longest_edge": 32}}
    return SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(**sizes, do_image_splitting=False),
        tokenizer=tokenizer,
        # A clip: up to 4 frames at 2 per second, each a global view of 4 tokens; the processor
        # pads a batch's clips to one frame count and the model drops the padding frames.
        # apply_chat_template samples with these whenever they are set, so the processor samples
        # by default too.
        video_processor=SmolVLMVideoProcessor(**sizes, do_sample_frames=True, num_frames=4, fps=2),
        image_seq_len=4,
        chat_template=SMOLVLM_TEMPLATE,
    )


def smolvlm_model(tokenizer) -> SmolVLMForConditionalGeneration:
    """SmolVLM: a SigLIP-like tower (last layer and post-layernorm read; (32/8)^2 = 16 patches),
    the connector (pixel shuffle by 2 -> 4 tokens of 4 x 16 channels, a matrix into the LM
    width) and a Llama LM (SmolLM2's) with untied embeddings; the LLM is ``model.text_model``."""
    torch.manual_seed(0)
    vision = SmolVLMVisionConfig(**TINY_VISION, image_size=32, patch_size=8)
    text = llama_text_config(tokenizer, max_position_embeddings=256)
    config = SmolVLMConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    return with_generation_ids(SmolVLMForConditionalGeneration(config), tokenizer)


# LLaVA-OneVision (llava-hf) style: ChatML, each message's images first ('<image>\n', which the
# processor expands into the image's base-tile, grid-tile and row-newline tokens), then its
# videos ('<video>\n': the clip's pooled frames and one newline token), then its text; the
# answer and its <|im_end|> in {% generation %}.
LLAVA_ONEVISION_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'video' %}{{ '<video>\n' }}{% endif %}{% endfor %}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{{ '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{{ '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Tiles of 16 px in grids up to 2x2, as OneVision's 384 px tiles in grids up to 6x6.
LLAVA_ONEVISION_PINPOINTS = [[16, 16], [16, 32], [32, 16], [32, 32]]


def llava_onevision_processor() -> LlavaOnevisionProcessor:
    """LLaVA-OneVision's own processor (anyres): a 32x32 image is its 16 px base tile and the
    2x2 grid of 16 px tiles it fills, 5 tiles of (16/8)^2 = 4 patches: 4 base tokens, 16 grid
    tokens and a newline token after each of the grid's 4 rows, 24 image tokens."""
    tokenizer = chatml_tokenizer(
        ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
        image_token="<image>",
        video_token="<video>",
    )
    size = {"height": 16, "width": 16}
    image_processor = LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=LLAVA_ONEVISION_PINPOINTS)
    return LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        # A clip: 4 frames sampled (one count across a batch: the model stacks the clips), each a
        # 16 px tile pooled to 1 token, and a newline token: 5 video tokens.
        video_processor=LlavaOnevisionVideoProcessor(size=size, do_sample_frames=True, num_frames=4),
        num_image_tokens=4,  # per tile: SigLIP has no CLS
        vision_feature_select_strategy="full",
        chat_template=LLAVA_ONEVISION_TEMPLATE,
    )


def llava_onevision_model(tokenizer) -> LlavaOnevisionForConditionalGeneration:
    """LLaVA-OneVision: a SigLIP tower without its pooling head whose last layer is read (its
    post-layernorm is not: a trained tower keeps it frozen), the MLP projector (Linear, GELU,
    Linear) applied to every tile, the anyres packing (base tile, unpadded grid, image_newline
    after each row) and a Qwen2 LM with tied embeddings (as llava-onevision-qwen2-0.5b's)."""
    torch.manual_seed(0)
    vision = SiglipVisionConfig(**TINY_VISION, image_size=16, patch_size=8, vision_use_head=False)
    text = qwen2_text_config(tokenizer, tie_word_embeddings=True)
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.image_token_id,
        video_token_index=tokenizer.video_token_id,
        image_grid_pinpoints=LLAVA_ONEVISION_PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    return with_generation_ids(LlavaOnevisionForConditionalGeneration(config), tokenizer)


QWEN_AUDIO_SPECIAL = [
    "<pad>",
    "<unk>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
]


def qwen2_audio_processor() -> Qwen2AudioProcessor:
    tokenizer = chatml_tokenizer(
        QWEN_AUDIO_SPECIAL,
        audio_token="<|AUDIO|>",
        audio_bos_token="<|audio_bos|>",
        audio_eos_token="<|audio_eos|>",
    )
    # 16 mel bins over 2 s windows (Whisper's are 128 over 30 s): 200 feature frames -> 50 tokens.
    features = WhisperFeatureExtractor(feature_size=16, chunk_length=2, sampling_rate=16000)
    return Qwen2AudioProcessor(feature_extractor=features, tokenizer=tokenizer, chat_template=QWEN_TEMPLATE)


def qwen2_audio_model(tokenizer) -> Qwen2AudioForConditionalGeneration:
    torch.manual_seed(0)
    encoder = {
        "num_mel_bins": 16,
        "encoder_layers": 2,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 32,
        "d_model": 16,
        "max_source_positions": 100,  # the 200 feature frames, halved by the encoder's stride
    }
    config = Qwen2AudioConfig(
        audio_config=encoder,
        text_config=qwen2_text_config(tokenizer),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    return with_generation_ids(Qwen2AudioForConditionalGeneration(config), tokenizer)


# LLaVA-NeXT-Video and Video-LLaVA (llava-hf, Vicuna) style: 'USER: ', each message's images
# ('<image>\n') then its videos ('<video>\n'), its text, ' ASSISTANT: <answer></s>'; the
# processor expands each placeholder into the medium's tokens. The answer and its eos are in
# {% generation %} (the hub templates mark the answer alone and end no turn with the eos).
LLAVA_VIDEO_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ 'USER: ' }}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'video' %}{{ '<video>\n' }}{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] + ' ' }}{% endif %}{% endfor %}"
    + LLAVA_ANSWERS
)


def llava_next_video_processor() -> LlavaNextVideoProcessor:
    """LLaVA-NeXT-Video's own processor: images anyres as LLaVA-OneVision's (16 px tiles in grids
    up to 2x2; a 32x32 image: 4 base tokens, 16 grid tokens, 4 row newlines), a clip's frames
    cropped to one 16 px tile each and sampled to 4 (the frame count must be one across a batch:
    the model stacks the clips), (16/8)^2 / 2^2 = 1 pooled token per frame."""
    size, crop = {"shortest_edge": 16}, {"height": 16, "width": 16}
    image_processor = LlavaNextImageProcessor(
        size=size, crop_size=crop, image_grid_pinpoints=LLAVA_ONEVISION_PINPOINTS
    )
    video_processor = LlavaNextVideoVideoProcessor(
        size=size, crop_size=crop, do_sample_frames=True, num_frames=4
    )
    return LlavaNextVideoProcessor(
        video_processor=video_processor,
        image_processor=image_processor,
        tokenizer=llava_tokenizer(video=True),
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS; 'default' drops it again
        chat_template=LLAVA_VIDEO_TEMPLATE,
    )


def llava_next_video_model(tokenizer) -> LlavaNextVideoForConditionalGeneration:
    """LLaVA-NeXT-Video: a CLIP tower whose penultimate layer is read (CLS dropped), LLaVA-NeXT's
    anyres packing for images (image_newline after each grid row), a clip's frames average-pooled
    2x2 (``vision_resampler``, no weights) before the same MLP projector, and a Llama LM (Vicuna's)."""
    # Seed 1: after test_export's one-epoch fit, seed 0's model answers every colour question with
    # its eos alone (the export test wants words, so that its comparison can fail).
    torch.manual_seed(1)
    config = LlavaNextVideoConfig(
        vision_config=CLIPVisionConfig(**TINY_VISION, image_size=16, patch_size=8, projection_dim=16),
        text_config=llama_text_config(tokenizer, max_position_embeddings=256),
        image_token_index=tokenizer.image_token_id,
        video_token_index=tokenizer.video_token_id,
        image_grid_pinpoints=LLAVA_ONEVISION_PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        spatial_pool_mode="average",
        spatial_pool_stride=2,
        image_seq_length=4,
        video_seq_length=4,
    )
    return with_generation_ids(LlavaNextVideoForConditionalGeneration(config), tokenizer)


def video_llava_processor() -> VideoLlavaProcessor:
    """Video-LLaVA's own processor: an image resized and cropped to 16 px, (16/8)^2 = 4 tokens
    (CLS dropped); a clip's frames likewise, sampled to 4, 4 + 1 tokens per frame (its CLS kept)."""
    size, crop = {"shortest_edge": 16}, {"height": 16, "width": 16}
    return VideoLlavaProcessor(
        image_processor=VideoLlavaImageProcessor(size=size, crop_size=crop),
        video_processor=VideoLlavaVideoProcessor(
            size=size, crop_size=crop, do_sample_frames=True, num_frames=4
        ),
        tokenizer=llava_tokenizer(video=True),
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_VIDEO_TEMPLATE,
    )


def video_llava_model(tokenizer) -> VideoLlavaForConditionalGeneration:
    """Video-LLaVA: two CLIP towers of one config (LanguageBind's image and video encoders),
    ``image_tower`` and ``video_tower``, each read at its penultimate layer (an image's CLS
    dropped, a frame's kept), one MLP projector for both, and a Llama LM (Vicuna's)."""
    # Seed 1: after test_export's one-epoch fit, seed 0's model answers every colour question with
    # its eos alone (the export test wants words, so that its comparison can fail).
    torch.manual_seed(1)
    config = VideoLlavaConfig(
        vision_config=CLIPVisionConfig(**TINY_VISION, image_size=16, patch_size=8, projection_dim=16),
        text_config=llama_text_config(tokenizer, max_position_embeddings=256),
        image_token_index=tokenizer.image_token_id,
        video_token_index=tokenizer.video_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=4,
        video_seq_length=20,
    )
    return with_generation_ids(VideoLlavaForConditionalGeneration(config), tokenizer)


# Every family of contmm.model.pretrained.FAMILIES: how its tiny checkpoint is built (the
# processor, then the model for the processor's tokenizer). The fidelity tests run on each.
BUILDERS = {
    "llava": (llava_processor, llava_model),
    "qwen2_vl": (qwen2vl_processor, qwen2vl_model),
    "qwen2_5_vl": (qwen25vl_processor, qwen25vl_model),
    "qwen3_vl": (qwen3vl_processor, qwen3vl_model),
    "internvl": (internvl_processor, internvl_model),
    "gemma3": (gemma3_processor, gemma3_model),
    "smolvlm": (smolvlm_processor, smolvlm_model),
    "llava_onevision": (llava_onevision_processor, llava_onevision_model),
    "qwen2_audio": (qwen2_audio_processor, qwen2_audio_model),
    "llava_next_video": (llava_next_video_processor, llava_next_video_model),
    "video_llava": (video_llava_processor, video_llava_model),
}


def save_checkpoint(kind: str, directory: Path) -> Path:
    """Build the tiny checkpoint of family ``kind`` (a key of ``BUILDERS``); save model and processor."""
    build_processor, build_model = BUILDERS[kind]
    processor = build_processor()
    model = build_model(processor.tokenizer)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def oracle_inputs(processor, samples: list[dict], with_answers: bool, **kwargs) -> dict:
    """transformers' own inputs for the samples: each sample's chat messages with its media in
    their parts, through the processor's ``apply_chat_template``. An image as it is; a clip
    decoded by transformers' own PyAV reader, with its metadata (its frame rate, which
    Qwen2.5-VL's and Qwen3-VL's positions read); a sound by its path (transformers loads and
    resamples it). The checkpoint's template is named, as SmolVLM's processor would otherwise
    render a conversation with a clip with its built-in one, which has no {% generation %} marks
    for the assistant mask (contmm's collator gets the built-in one: the renderings are equal)."""
    conversations, metadata = [], []
    for sample in samples:
        messages = chat_messages(sample, with_answers)
        for part in messages[0]["content"]:
            if part["type"] == "image":
                part["image"] = sample_image(sample)
            elif part["type"] == "video":
                part["video"], clip = load_video(str(sample["video"].path), backend="pyav")
                metadata.append([clip])
            elif part["type"] == "audio":
                part["path"] = str(sample["audio"])
        conversations.append(messages)
    processor_kwargs = {
        **kwargs.pop("processor_kwargs", {}),
        **({"video_metadata": metadata} if metadata else {}),
    }
    return processor.apply_chat_template(
        conversations,
        chat_template=processor.chat_template,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs=processor_kwargs,
        **kwargs,
    )


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
    inputs = oracle_inputs(processor, [sample], with_answers=False, add_generation_prompt=True)
    with torch.no_grad():
        tokens = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.batch_decode(tokens[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
