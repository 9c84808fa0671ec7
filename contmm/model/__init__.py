"""The multimodal LLM and its components."""

from contmm.model.backbone import BackboneConfig, LLMBackbone
from contmm.model.encoder import EncoderConfig, ModalityEncoder
from contmm.model.mmllm import COMPONENTS, MMLLM, ModelConfig
from contmm.model.projector import ProjectorConfig, build_projector

__all__ = [
    "COMPONENTS",
    "MMLLM",
    "BackboneConfig",
    "EncoderConfig",
    "LLMBackbone",
    "ModalityEncoder",
    "ModelConfig",
    "ProjectorConfig",
    "build_projector",
]
