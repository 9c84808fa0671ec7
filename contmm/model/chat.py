"""Batches built by a checkpoint's own processor from its chat template.

A sample's question holds the ``<image>`` placeholder where the image goes; it becomes one
user message (text and image parts) and, for training, the answer one assistant message.
The processor renders them with the checkpoint's chat template, expands the image tokens
and preprocesses the images. Labels cover the assistant's answer up to and including the
first end-of-sequence token after the prompt: the tokens the rendering of the whole
conversation adds to the rendering of its prompt (which any template gives, with or
without ``{% generation %}`` markers).
"""

from __future__ import annotations

import torch

from contmm.model.collate import IGNORE_INDEX, sample_image
from contmm.tokenizer import IMAGE_TOKEN


def chat_messages(sample: dict, with_answer: bool) -> list[dict]:
    """The sample as chat messages: the question (text around its image) and the answer."""
    before, placeholder, after = sample["question"].partition(IMAGE_TOKEN)
    if not placeholder:
        raise ValueError(f"sample {sample['id']!r}: the question has no {IMAGE_TOKEN} placeholder")
    parts = [{"type": "text", "text": before.strip()}] if before.strip() else []
    parts.append({"type": "image"})
    if after.strip():
        parts.append({"type": "text", "text": after.strip()})
    messages = [{"role": "user", "content": parts}]
    if with_answer:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": sample["answer"]}]})
    return messages


class ChatCollator:
    def __init__(self, processor, train: bool) -> None:
        self.processor, self.train = processor, train

    def render(self, messages: list[dict], prompt: bool) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)

    def encode(self, texts: list[str], images: list, padding_side: str) -> dict:
        return self.processor(
            text=texts, images=images, padding=True, padding_side=padding_side, return_tensors="pt"
        )

    def __call__(self, samples: list[dict]) -> dict:
        images = [sample_image(s) for s in samples]
        prompts = [self.render(chat_messages(s, with_answer=False), prompt=True) for s in samples]
        if not self.train:
            batch = dict(self.encode(prompts, images, "left"))
            batch.update(
                ids=[s["id"] for s in samples],
                questions=[s["question"] for s in samples],
                answers=[s["answer"] for s in samples],
            )
            return batch
        texts = [self.render(chat_messages(s, with_answer=True), prompt=False) for s in samples]
        for sample, prompt, text in zip(samples, prompts, texts):
            if not text.startswith(prompt):
                raise ValueError(
                    f"sample {sample['id']!r}: the chat template renders the conversation {text!r}, "
                    f"which does not start with its prompt {prompt!r}: the answer cannot be located"
                )
        batch = dict(self.encode(texts, images, "right"))
        batch["labels"] = self.labels(samples, batch, self.encode(prompts, images, "right"))
        return batch

    def labels(self, samples: list[dict], batch: dict, prompts: dict) -> torch.Tensor:
        """``input_ids`` on each answer (to its first end-of-sequence token), -100 elsewhere."""
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        eos = self.processor.tokenizer.eos_token_id
        lengths = batch["attention_mask"].sum(1).tolist()
        for row, start in enumerate(prompts["attention_mask"].sum(1).tolist()):
            if not torch.equal(batch["input_ids"][row, :start], prompts["input_ids"][row, :start]):
                raise ValueError(
                    f"sample {samples[row]['id']!r}: the tokens of the conversation do not start with "
                    "the tokens of its prompt: the answer cannot be located"
                )
            answer = batch["input_ids"][row, start : lengths[row]].tolist()
            end = start + (answer.index(eos) + 1 if eos in answer else len(answer))
            labels[row, start:end] = batch["input_ids"][row, start:end]
        return labels
