"""Word-level tokenizer built from a stream's own text, for the tiny random-init backbone."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

IMAGE_TOKEN = "<image>"
# Where a record's media go in its first question, LLaVA-style: one placeholder per modality.
PLACEHOLDERS = {"image": IMAGE_TOKEN, "video": "<video>", "audio": "<audio>"}
SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


def build_word_tokenizer(texts: Iterable[str], extra_special: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """One token per lower-cased word or punctuation mark seen in ``texts``.

    The special tokens (the ``<image>`` placeholder, and ``extra_special`` such as the signal
    tokens of a model that generates) are added tokens, so they are matched whole before the
    text is split into words, and decoding with ``skip_special_tokens`` drops them. Decoding
    joins words with spaces.
    """
    tokenizer = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    special = [*SPECIAL_TOKENS.values(), IMAGE_TOKEN, *extra_special]
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=special))
    extra = {"additional_special_tokens": list(extra_special)} if extra_special else {}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS, **extra)
