"""LLM Backbone: a transformers causal LM and its tokenizer, with the ``<image>`` token."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from contmm.model.files import check_model_dir, loader_errors
from contmm.model.tokenizer import IMAGE_TOKEN

SETTING = "model.backbone.pretrained"


@dataclass
class BackboneConfig:
    """The LLM Backbone: a transformers causal LM and its tokenizer.

    Args:
        config: transformers config fields, with ``model_type`` (random init; the vocabulary
            size and special-token ids come from the tokenizer).
        pretrained: a hub id or local directory holding the LM and its tokenizer.
        freeze: keep the LM's own weights fixed (adapters added by a strategy still train).
        trust_remote_code: allow a hub repository's own code (off unless set explicitly).
    """

    config: dict | None = None
    pretrained: str | None = None
    freeze: bool = False
    trust_remote_code: bool = False


def load_tokenizer(cfg: BackboneConfig) -> PreTrainedTokenizerBase:
    """The pretrained backbone's tokenizer, with a pad token and the image placeholder."""
    check_model_dir(cfg.pretrained, SETTING)
    with loader_errors(SETTING, cfg.pretrained):
        tokenizer = AutoTokenizer.from_pretrained(cfg.pretrained, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tokenizer


class LLMBackbone(nn.Module):
    def __init__(self, cfg: BackboneConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        self.cfg = cfg
        ids = {
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        if cfg.pretrained:
            check_model_dir(cfg.pretrained, SETTING)
            with loader_errors(SETTING, cfg.pretrained):
                self.lm = AutoModelForCausalLM.from_pretrained(
                    cfg.pretrained, trust_remote_code=cfg.trust_remote_code
                )
        elif cfg.config:
            config = AutoConfig.for_model(**{**cfg.config, "vocab_size": len(tokenizer), **ids})
            self.lm = AutoModelForCausalLM.from_config(config)
        else:
            raise ValueError("model.backbone needs either `config` (random init) or `pretrained`")
        if self.lm.get_input_embeddings().num_embeddings < len(tokenizer):
            self.lm.resize_token_embeddings(len(tokenizer))
        self.lm.generation_config.pad_token_id = tokenizer.pad_token_id
        self.lm.generation_config.eos_token_id = tokenizer.eos_token_id

    @property
    def hidden_size(self) -> int:
        return self.lm.config.get_text_config().hidden_size
