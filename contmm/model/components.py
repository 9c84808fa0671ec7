"""What every contmm model offers the rest of the library: the MM-LLM survey's components by
name, and which of them are trained."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from PIL import Image
from torch import nn
from torch.utils._pytree import tree_leaves

COMPONENTS = ("encoder", "input_projector", "backbone")
# The generating half (arXiv 2401.13601's Output Projector and Modality Generator): a model
# that generates images has these components too.
GENERATING = ("output_projector", "generator")
# What an evaluation batch says about its samples beside the model's inputs: the collators
# put them there, ``generate`` and ``draw`` read past them.
SAMPLE_FIELDS = ("ids", "questions", "answers")


def model_inputs(batch: dict) -> dict:
    """The batch without its sample fields: what the model's forward / generate take."""
    return {k: v for k, v in batch.items() if k not in SAMPLE_FIELDS}


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]


def unreached(module: nn.Module, forward: Callable[[], object]) -> frozenset[int]:
    """The ids of ``module``'s parameters that ``forward()``'s tensors do not depend on."""
    params = list(module.parameters())
    trainable = [p.requires_grad for p in params]
    with torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        outputs = [t for t in tree_leaves(forward()) if torch.is_tensor(t) and t.requires_grad]
        grads = torch.autograd.grad(sum(t.float().sum() for t in outputs), params, allow_unused=True)
    for p, flag in zip(params, trainable):
        p.requires_grad_(flag)
    return frozenset(id(p) for p, g in zip(params, grads) if g is None)


class ComponentModel(nn.Module):
    """A multimodal LLM seen as its components (``encoder``, ``input_projector``,
    ``backbone``, and ``output_projector``, ``generator`` where it generates images; the
    config's ``model.<component>.freeze`` says which are trained).

    This is the interface the rest of contmm (the LightningModule, the strategies, the
    commands) is written against; every model implements it: the assembled
    :class:`~contmm.model.MMLLM`, a whole checkpoint (:class:`~contmm.model.PretrainedMMLLM`),
    and the sharded copy a fit trains under ``fsdp2`` (the same class, its weights DTensors).
    Subclasses give ``components()``, ``forward(**batch)`` (its output has the LM ``loss``
    when the batch has ``labels``), ``generate``, ``collator(train)``, ``tokenizer``,
    ``projector_inputs(pixel_values)`` (what the input projector reads, per image) and
    ``set_input_projector(module)``; a model that draws images sets ``generates`` and gives
    ``draw``.
    """

    # Whether the model has the generating half (``output_projector``, ``generator``) and
    # draws images with ``draw``.
    generates = False

    # The modalities the model reads (its samples' media): the assembled model reads images.
    modalities: tuple[str, ...] = ("image",)

    # Whether the input projector maps each image's tokens on their own (a batch of images
    # in, the same batch out), so that a sample's image can be sent to a projector of its own.
    per_image_projector = True

    def components(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def generate(self, batch: dict, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding of an evaluation batch (left-padded prompts; its sample fields are
        read past); the new tokens only."""
        raise NotImplementedError

    def draw(
        self, batch: dict, max_new_tokens: int, noise: list[torch.Generator]
    ) -> tuple[torch.Tensor, dict[int, Image.Image]]:
        """Greedy decoding as ``generate``, then an image for every row whose answer asks for
        one, row ``i`` sampled from ``noise[i]``: the new tokens and ``{row: image}``."""
        raise ValueError(f"{type(self).__name__} draws no images: it has no output projector and generator")

    def component_tensors(self, name: str) -> list[torch.Tensor]:
        """The parameters and buffers of component ``name``, less those of another component
        nested inside it (Qwen2-VL's projector, the patch merger, sits in its vision tower)."""
        modules = self.components()
        own = modules[name]
        inside = [m for other, m in modules.items() if other != name and any(m is s for s in own.modules())]
        nested = {id(t) for m in inside for t in _tensors(m)}
        return [t for t in _tensors(own) if id(t) not in nested]

    def component_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """Component ``name``'s weights by key, as ``load_component_state_dict`` takes them back."""
        return self.components()[name].state_dict()

    def load_component_state_dict(self, name: str, state: dict[str, torch.Tensor]) -> None:
        self.components()[name].load_state_dict(state)

    def component_config(self, name: str):
        """The config section of component ``name`` (its ``freeze`` says whether it is trained)."""
        return getattr(self.cfg, name)

    def configured_trainable(self) -> list[str]:
        """The components the config does not freeze."""
        return [name for name in self.components() if not self.component_config(name).freeze]

    def input_projectors(self) -> list[nn.Module]:
        """Every modality's Input Projector (trained at ``optimizer.projector_lr``)."""
        return [self.input_projector]

    def component_modalities(self) -> dict[str, set[str]]:
        """The components that read media, and which: a component whose modalities are all
        absent from a stage's data is frozen for it (``contmm.model.modalities``)."""
        return {"encoder": set(self.modalities), "input_projector": set(self.modalities)}

    def media_weights_term(self) -> torch.Tensor | None:
        """Zero times the trainable weights of the components that read media, for a model
        that reads several (None otherwise), added to the training loss. A batch without one
        of its media (clips only in a stage that mixes images and clips, a replayed sound
        among them) leaves the weights only that medium reaches (an audio projector,
        Video-LLaVA's image tower, LLaVA-NeXT-Video's image_newline) without a gradient, which
        DDP refuses; this gives them zeros, on one device as on several, and the loss is as
        it was."""
        if len(self.modalities) < 2:
            return None
        weights = [
            tensor
            for name in self.component_modalities()
            for tensor in self.component_tensors(name)
            if isinstance(tensor, nn.Parameter) and tensor.requires_grad
        ]
        return sum(p.sum() for p in weights) * 0.0 if weights else None

    def set_trainable(self, components: Iterable[str]) -> None:
        """Make exactly the named components trainable, and freeze the others."""
        components, known = set(components), list(self.components())
        unknown = components - set(known)
        if unknown:
            raise ValueError(f"unknown model component(s) {sorted(unknown)}; this model has {known}")
        for name in known:
            unreached = self.unreached_parameters(name) if name in components else frozenset()
            for tensor in self.component_tensors(name):
                if isinstance(tensor, nn.Parameter):
                    tensor.requires_grad_(name in components and id(tensor) not in unreached)

    def unreached_parameters(self, name: str) -> frozenset[int]:
        """The ids of component ``name``'s parameters the loss never reaches, kept frozen when
        it is trained: a trainable parameter without a gradient stops DDP at its second step
        ("parameters that were not used in producing the loss") and, in a one-step fit, leaves
        the gradients un-averaged. A vision tower has them: its pooled-output norm, and its
        layers after the one the projector reads (``encoder_probes``)."""
        probes = self.encoder_probes()
        if name not in probes:
            return frozenset()
        if self._unreached is None:
            self._unreached = {}
        if name not in self._unreached:
            self._unreached[name] = unreached(self.components()[name], probes[name])
        return self._unreached[name]

    def encoder_probes(self) -> dict[str, Callable[[], object]]:
        """Per Modality Encoder component, a call giving its features of one blank input."""
        return {"encoder": self.encoder_probe}

    def encoder_probe(self) -> object:
        """The encoder's features of one blank image, as the model reads them (with gradients)."""
        raise NotImplementedError

    _unreached: dict[str, frozenset[int]] | None = None
