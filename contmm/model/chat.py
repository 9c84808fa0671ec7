"""Batches built by a checkpoint's own processor from its chat template.

A sample's question holds a placeholder (``<image>``, ``<video>``, ``<audio>``) where each of
its media goes; it becomes one user message (text, image, video and audio parts) and, for
training, the answer one assistant message, followed by the sample's follow-up turns. The
processor renders them with the checkpoint's chat template, expands the media tokens and
preprocesses the media: a clip decoded whole, its frames sampled by the processor (or as the
stream's ``num_frames`` / ``fps`` ask), a sound resampled to the feature extractor's rate
(``contmm/model/media.py``). Decoding happens here, in the DataLoader's workers. Labels cover each
assistant answer up to and including its first end token (an eos of the checkpoint): it
starts where the rendering of the conversation up to its question (with the generation
prompt) ends, which any template gives, with or without ``{% generation %}`` markers.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from transformers.video_utils import VideoMetadata

from contmm.model.collate import IGNORE_INDEX, is_generation, sample_image, sample_sound
from contmm.model.media import Clip, Video, clip_metadata, decode_clip, load_clip
from contmm.model.tokenizer import PLACEHOLDERS

# Inputs a processor still names as transformers has deprecated them for the model's forward,
# by their new names (Video-LLaVA's image processor gives ``pixel_values_images``, which its model
# takes as ``pixel_values``): a batch's images are ``pixel_values`` for the rest of contmm (routing).
RENAMED_INPUTS = {"pixel_values_images": "pixel_values"}
PLACEHOLDER = re.compile("(" + "|".join(map(re.escape, PLACEHOLDERS.values())) + ")")
MODALITY = {token: modality for modality, token in PLACEHOLDERS.items()}


def chat_messages(sample: dict, with_answers: bool) -> list[dict]:
    """The sample as chat messages: the question (text around its media), then with
    ``with_answers`` its answer and the follow-up turns."""
    pieces = PLACEHOLDER.split(sample["question"])  # text, placeholder, text, ...
    if len(pieces) == 1:
        raise ValueError(
            f"sample {sample['id']!r}: the question has no placeholder ({', '.join(PLACEHOLDERS.values())})"
        )
    parts = [
        {"type": MODALITY[piece]} if i % 2 else {"type": "text", "text": piece.strip()}
        for i, piece in enumerate(pieces)
        if i % 2 or piece.strip()
    ]
    messages = [{"role": "user", "content": parts}]
    if with_answers:
        for turn, answer in enumerate(
            [sample["answer"], *(t["answer"] for t in sample.get("followups", []))]
        ):
            if turn:
                question = sample["followups"][turn - 1]["question"]
                messages.append({"role": "user", "content": [{"type": "text", "text": question}]})
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


class ChatCollator:
    """``end_ids``: the tokens that end an answer (the checkpoint's generation eos ids, which
    may differ from the tokenizer's eos: Gemma 3 IT ends a turn with <end_of_turn>); the
    tokenizer's eos by default."""

    def __init__(self, processor, train: bool, end_ids: list[int] | None = None) -> None:
        self.processor, self.train = processor, train
        self.end_ids = set(end_ids or []) | {processor.tokenizer.eos_token_id}

    def render(self, messages: list[dict], prompt: bool) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)

    def media(self, sample: dict) -> dict:
        """The sample's media decoded for the processor: its image, its clip's frames and
        metadata, its sound at the feature extractor's rate."""
        media = {"images": [sample_image(sample)] if "image" in sample else []}
        if "video" in sample:
            frames, metadata, sampled = self.clip(sample["video"])
            media.update(videos=[frames], video_metadata=[metadata], sampled=sampled)
        if "audio" in sample:
            media["audio"] = [self.sound(sample)]
        return media

    def clip(self, video: Video | Clip) -> tuple[np.ndarray, VideoMetadata, bool]:
        """The clip's frames and metadata, and whether they are sampled already. Where the
        stream asks for a sampling (``num_frames`` or ``fps``), the frames the processor's own
        ``sample_frames`` picks from the clip's header, decoded alone, with their indices in the
        metadata: what the processor makes of the whole decoded clip, without decoding the rest
        (a test compares the two)."""
        asked = video.sampling() if isinstance(video, Video) else {}
        if not asked:
            return (*load_clip(video), False)
        metadata = clip_metadata(video.path)
        indices = np.asarray(self.processor.video_processor.sample_frames(metadata, **asked))
        metadata.frames_indices = indices
        return decode_clip(video.path, indices.tolist()), metadata, True

    def sound(self, sample: dict):
        """The sample's sound at the feature extractor's rate, within its window."""
        features = self.processor.feature_extractor
        return sample_sound(sample, features.sampling_rate, getattr(features, "n_samples", None))

    def encode(self, texts: list[str], media: list[dict], padding_side: str) -> dict:
        # As the processor's own apply_chat_template: each sample's images and videos in a list
        # of their own, the sounds in one flat list, and no special tokens added to a rendering
        # that begins with the template's <bos>.
        bos = self.processor.tokenizer.bos_token
        inputs = {}
        for key in ("images", "videos", "video_metadata"):
            if any(row.get(key) for row in media):
                inputs[key] = [row.get(key, []) for row in media]
        if sounds := [sound for row in media for sound in row.get("audio", [])]:
            inputs.update(audio=sounds, sampling_rate=self.processor.feature_extractor.sampling_rate)
        # Clips sampled already (``clip``) are not sampled again; whole clips get the
        # processor's own default.
        sampling = {"do_sample_frames": False} if any(row.get("sampled") for row in media) else {}
        encoded = self.processor(
            text=texts,
            **inputs,
            **sampling,
            padding=True,
            padding_side=padding_side,
            add_special_tokens=not (bos is not None and texts[0].startswith(bos)),
            return_tensors="pt",
        )
        for old, new in RENAMED_INPUTS.items():
            if old in encoded:
                encoded[new] = encoded.pop(old)
        return encoded

    def __call__(self, samples: list[dict]) -> dict:
        if drawn := [s["id"] for s in samples if is_generation(s)]:
            raise ValueError(
                f"sample {drawn[0]!r} asks for an image: a whole checkpoint (model.pretrained) does not "
                "generate images in contmm yet; use an assembled model with model.generator"
            )
        media = [self.media(s) for s in samples]
        if not self.train:
            prompts = [self.render(chat_messages(s, with_answers=False), prompt=True) for s in samples]
            batch = dict(self.encode(prompts, media, "left"))
            batch.update(
                ids=[s["id"] for s in samples],
                questions=[s["question"] for s in samples],
                answers=[s["answer"] for s in samples],
            )
            return batch
        conversations = [chat_messages(s, with_answers=True) for s in samples]
        batch = dict(self.encode([self.render(m, prompt=False) for m in conversations], media, "right"))
        batch["labels"] = self.labels(samples, conversations, media, batch)
        return batch

    def labels(self, samples: list[dict], conversations: list[list[dict]], media: list[dict], batch: dict):
        """``input_ids`` on each assistant answer (to its first end token), -100
        elsewhere. Answer k starts where the rendering of the conversation up to its k-th
        question, with the generation prompt, ends."""
        input_ids, labels = batch["input_ids"], torch.full_like(batch["input_ids"], IGNORE_INDEX)
        lengths = batch["attention_mask"].sum(1).tolist()
        for turn in range(max(len(m) for m in conversations) // 2):
            rows = [row for row, messages in enumerate(conversations) if len(messages) > 2 * turn]
            prefixes = [self.render(conversations[row][: 2 * turn + 1], prompt=True) for row in rows]
            encoded = self.encode(prefixes, [media[row] for row in rows], "right")
            for i, row in enumerate(rows):
                start = int(encoded["attention_mask"][i].sum())
                if not torch.equal(input_ids[row, :start], encoded["input_ids"][i, :start]):
                    raise ValueError(
                        f"sample {samples[row]['id']!r}: the chat template's rendering of the conversation "
                        f"does not begin with that of its prompt {prefixes[i]!r}: answer {turn + 1} "
                        "cannot be located"
                    )
                answer = input_ids[row, start : lengths[row]].tolist()
                ends = [i for i, token in enumerate(answer) if token in self.end_ids]
                end = start + (ends[0] + 1 if ends else len(answer))
                labels[row, start:end] = input_ids[row, start:end]
        return labels
