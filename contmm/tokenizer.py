"""Word-level tokenizer built from a stream's own text, for the tiny random-init backbone."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


def build_word_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """One token per lower-cased word or punctuation mark seen in ``texts``.

    The special tokens (and the ``<image>`` placeholder) are added tokens, so they are
    matched whole before the text is split into words. Decoding joins words with spaces.
    """
    tokenizer = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    special = [*SPECIAL_TOKENS.values(), IMAGE_TOKEN]
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=special))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)
