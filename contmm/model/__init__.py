"""The multimodal LLM and its components."""

from collections.abc import Iterable

from contmm.model.backbone import BackboneConfig, LLMBackbone
from contmm.model.components import COMPONENTS, ComponentModel, model_inputs
from contmm.model.encoder import EncoderConfig, ModalityEncoder
from contmm.model.mmllm import MMLLM, ModelConfig
from contmm.model.pretrained import PretrainedMMLLM
from contmm.model.projector import ProjectorConfig, build_projector


def build_model(cfg: ModelConfig, texts: Iterable[str]) -> ComponentModel:
    """The whole checkpoint ``cfg.pretrained`` names, or the components assembled (a
    random-init backbone gets a word-level tokenizer built from ``texts``)."""
    if not cfg.pretrained:
        return MMLLM.build(cfg, texts)
    assembled = [
        f"model.{name}.{key}"
        for name in COMPONENTS
        for key in ("config", "pretrained")
        if getattr(getattr(cfg, name), key, None)
    ]
    if assembled or cfg.encoders:
        unset = [*assembled, *(["model.encoders"] if cfg.encoders else [])]
        raise ValueError(f"model.pretrained is a whole checkpoint: leave {', '.join(unset)} unset")
    if cfg.output_projector is not None or cfg.generator is not None:
        raise ValueError(
            "model.output_projector / model.generator: a whole checkpoint (model.pretrained) does not "
            "generate images in contmm yet; the assembled model does"
        )
    return PretrainedMMLLM(cfg)


__all__ = [
    "COMPONENTS",
    "MMLLM",
    "BackboneConfig",
    "ComponentModel",
    "EncoderConfig",
    "LLMBackbone",
    "ModalityEncoder",
    "ModelConfig",
    "PretrainedMMLLM",
    "ProjectorConfig",
    "build_model",
    "build_projector",
    "model_inputs",
]
