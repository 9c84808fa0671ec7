"""What every contmm model offers the rest of the library: the MM-LLM survey's components by
name, and which of them are trained."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

COMPONENTS = ("encoder", "input_projector", "backbone")
# The generating half (arXiv 2401.13601's Output Projector and Modality Generator): a model
# that generates images has these components too.
GENERATING = ("output_projector", "generator")


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]


class ComponentModel(nn.Module):
    """A multimodal LLM seen as its components (``encoder``, ``input_projector``,
    ``backbone``, and ``output_projector``, ``generator`` where it generates images; the
    config's ``model.<component>.freeze`` says which are trained).

    Subclasses give ``components()``, ``forward(**batch)`` (its output has the LM ``loss``
    when the batch has ``labels``), ``generate(batch, max_new_tokens)`` (the new tokens
    only), ``collator(train)``, ``tokenizer``, ``projector_inputs(pixel_values)`` (what the
    input projector reads, per image) and ``set_input_projector(module)``.
    """

    # Whether the input projector maps each image's tokens on their own (a batch of images
    # in, the same batch out), so that a sample's image can be sent to a projector of its own.
    per_image_projector = True
    # Parameters the loss never reaches (ids), kept frozen whatever is trained: a trainable
    # parameter without a gradient stops DDP at its second step ("parameters that were not
    # used in producing the loss") and, in a one-step fit, leaves gradients unreduced.
    unused_parameters: frozenset[int] = frozenset()

    def components(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def component_tensors(self, name: str) -> list[torch.Tensor]:
        """The parameters and buffers of component ``name``, less those of another component
        nested inside it (Qwen2-VL's projector, the patch merger, sits in its vision tower)."""
        modules = self.components()
        own = modules[name]
        inside = [m for other, m in modules.items() if other != name and any(m is s for s in own.modules())]
        nested = {id(t) for m in inside for t in _tensors(m)}
        return [t for t in _tensors(own) if id(t) not in nested]

    def configured_trainable(self) -> list[str]:
        """The components the config does not freeze."""
        return [name for name in self.components() if not getattr(self.cfg, name).freeze]

    def set_trainable(self, components: Iterable[str]) -> None:
        """Make exactly the named components trainable, and freeze the others."""
        components, known = set(components), list(self.components())
        unknown = components - set(known)
        if unknown:
            raise ValueError(f"unknown model component(s) {sorted(unknown)}; this model has {known}")
        for name in known:
            for tensor in self.component_tensors(name):
                if isinstance(tensor, nn.Parameter):
                    tensor.requires_grad_(name in components and id(tensor) not in self.unused_parameters)
