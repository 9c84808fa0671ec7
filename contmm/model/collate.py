"""From instruction samples to model batches.

Training batches carry labels on the answer tokens only (``-100`` elsewhere); evaluation
batches are left-padded prompts for batched generation, with the samples' ids, questions
and answers beside the model inputs (``contmm.model.components.SAMPLE_FIELDS``).

A generation sample (:func:`is_generation`) has no input image and a ``target`` image; its
answer is the model's signal tokens, and a training batch carries what its Output Projector
objectives need: ``generation_rows``, ``caption_ids`` (the generator's tokens of its
``caption``) and, for the denoising objective, ``target_pixels``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from contmm.model.images import open_rgb, to_rgb
from contmm.model.media import load_waveform
from contmm.model.tokenizer import PLACEHOLDERS

if TYPE_CHECKING:
    from contmm.model.components import ComponentModel

IGNORE_INDEX = -100
# The batch key of each modality's preprocessed media (images keep LLaVA's name).
MEDIA_INPUTS = {"image": "pixel_values", "video": "video_pixel_values", "audio": "audio_features"}


def is_generation(sample: dict) -> bool:
    """A text-to-image sample: an instruction in, its ``target`` image out."""
    return "target" in sample


def sample_image(sample: dict, key: str = "image") -> Image.Image:
    """The sample's image (a PIL image or a path) in RGB, converted as :func:`to_rgb` says;
    ``key="target"``: a generation sample's target image."""
    image = sample[key]
    return to_rgb(image) if isinstance(image, Image.Image) else open_rgb(image)


def sample_sound(sample: dict, sampling_rate: int, window: int | None) -> np.ndarray:
    """The sample's sound at ``sampling_rate``; one longer than an encoder's ``window`` of
    samples (Whisper's 30 s) is an error: the feature extractor would cut the rest off unsaid."""
    waveform = load_waveform(sample["audio"], sampling_rate)
    if window is not None and len(waveform) > window:
        raise ValueError(
            f"sample {sample['id']!r}: the sound {sample['audio']} lasts {len(waveform) / sampling_rate:.1f} s, "
            f"longer than the {window / sampling_rate:.1f} s the model's feature extractor reads "
            "(it would cut the rest off): cut the sound into clips of at most that length"
        )
    return waveform


class InstructionCollator:
    """Tokenise prompts (and answers), expand each medium's placeholder into its tokens,
    preprocess the media (``MMLLM.preprocess_media``; a batch key per modality, ``MEDIA_INPUTS``)."""

    def __init__(self, model: ComponentModel, train: bool) -> None:
        self.tokenizer = model.tokenizer
        self.prompt = model.cfg.prompt
        self.preprocess = model.preprocess_media
        self.image_size = model.encoder.image_size
        self.placeholder_ids = model.placeholder_ids
        self.num_tokens = model.num_media_tokens
        self.train = train
        self.generator = model.generator if model.generates else None
        if self.generator is not None:
            self.signal_ids = model.signal_token_ids
            self.aligning = model.cfg.output_projector.alignment_weight > 0
            self.denoising = model.cfg.output_projector.denoising_weight > 0

    def _prompt_ids(self, sample: dict) -> list[int]:
        """The prompt's tokens, each medium's placeholder expanded to the medium's tokens: one
        placeholder per medium the sample carries, none for those it lacks."""
        text = self.prompt.format(question=sample["question"])
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        carried = [] if is_generation(sample) else [m for m in self.placeholder_ids if m in sample]
        for modality, token_id in self.placeholder_ids.items():
            found, expected = ids.count(token_id), int(modality in carried)
            if found != expected:
                must = f"exactly one {PLACEHOLDERS[modality]}" if expected else f"no {PLACEHOLDERS[modality]}"
                why = " (it asks for an image)" if is_generation(sample) else ""
                raise ValueError(
                    f"sample {sample['id']!r}: the prompt must hold {must} placeholder{why}, found {found}: {text!r}"
                )
        if not carried and not is_generation(sample):
            raise ValueError(
                f"sample {sample['id']!r}: the prompt must hold exactly one <image> placeholder (or a "
                f"<video> / <audio> one, with its medium), found none: {text!r}"
            )
        expanded = {token_id: [token_id] * self.num_tokens[m] for m, token_id in self.placeholder_ids.items()}
        return bos + [token for token_id in ids for token in expanded.get(token_id, [token_id])]

    def _answer_ids(self, answer: str) -> list[int]:
        ids = self.tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
        return ids + [self.tokenizer.eos_token_id]

    def _conversation(self, sample: dict) -> tuple[list[int], list[int]]:
        """The tokens of every turn's prompt and answer, and their labels (the answers only).
        A follow-up question is put in the prompt template too; the image was in the first."""
        turns = [(self._prompt_ids(sample), sample["answer"])] + [
            (
                self.tokenizer(" " + self.prompt.format(question=turn["question"]), add_special_tokens=False)[
                    "input_ids"
                ],
                turn["answer"],
            )
            for turn in sample.get("followups", [])
        ]
        tokens, labels = [], []
        for prompt, answer in turns:
            # A generation sample answers with the signal tokens, whose states condition the generator.
            answer_ids = (
                self.signal_ids + [self.tokenizer.eos_token_id]
                if is_generation(sample)
                else self._answer_ids(answer)
            )
            tokens += prompt + answer_ids
            labels += [IGNORE_INDEX] * len(prompt) + answer_ids
        return tokens, labels

    def __call__(self, samples: list[dict]) -> dict:
        drawn = [i for i, s in enumerate(samples) if is_generation(s)]
        if drawn and self.generator is None:
            raise ValueError(
                f"sample {samples[drawn[0]]['id']!r} asks for an image (it has a target) but the model "
                "generates none: give it model.output_projector and model.generator"
            )
        size = self.image_size
        batch = {"pixel_values": torch.zeros(0, 3, size, size)}
        for modality in self.placeholder_ids:
            if carrying := [s for s in samples if modality in s and not is_generation(s)]:
                batch[MEDIA_INPUTS[modality]] = self.preprocess(modality, carrying)
        if self.train:
            sequences, labels = zip(*(self._conversation(s) for s in samples))
            batch.update(self._pad(sequences, left=False))
            batch["labels"] = self._pad_to(labels, IGNORE_INDEX, left=False)
            if drawn:
                batch["generation_rows"] = torch.tensor(drawn)
                if self.aligning:
                    batch["caption_ids"] = self.generator.caption_ids([samples[i]["caption"] for i in drawn])
                if self.denoising:
                    targets = [sample_image(samples[i], "target") for i in drawn]
                    batch["target_pixels"] = self.generator.preprocess(targets)
        else:
            batch.update(self._pad([self._prompt_ids(s) for s in samples], left=True))
            batch["ids"] = [s["id"] for s in samples]
            batch["questions"] = [s["question"] for s in samples]
            batch["answers"] = [s["answer"] for s in samples]
        return batch

    def _pad(self, sequences: list[list[int]], left: bool) -> dict:
        return pad_tokens(sequences, self.tokenizer.pad_token_id, left)

    @staticmethod
    def _pad_to(sequences: list[list[int]], value: int, left: bool) -> torch.Tensor:
        width = max(len(s) for s in sequences)
        rows = [[value] * (width - len(s)) + s if left else s + [value] * (width - len(s)) for s in sequences]
        return torch.tensor(rows, dtype=torch.long)


def pad_tokens(sequences: list[list[int]], pad_token_id: int, left: bool) -> dict:
    """``input_ids`` and ``attention_mask`` of token sequences padded to one width (left: for
    generation, so that every prompt ends where the new tokens begin)."""
    pad_to = InstructionCollator._pad_to
    return {
        "input_ids": pad_to(sequences, pad_token_id, left),
        "attention_mask": pad_to([[1] * len(s) for s in sequences], 0, left),
    }
