"""contmm: continual instruction tuning of multimodal LLMs with PyTorch Lightning."""

__version__ = "0.1.0"
