"""Projector expansion after EProj (He et al. 2023, arXiv 2311.16206).

Each task gets its own input projector, initialised from the previous task's (task 0
tunes the pre-trained one); the older projectors are frozen. After each task two keys
are stored for it: an image key (from the encoder's features) and an instruction key
(from the backbone's input embeddings of the instruction's words). At evaluation every
sample is sent to the projector whose keys are most similar to its own features, so no
task id is needed; ``oracle: true`` uses the task id instead.

A model that draws (any-to-any) gets a projector *pair* per task: the Output Projector is
expanded the same way and a sample's route picks both. A generation prompt has no image,
so it is routed by its instruction alone, and a generation task's image key is zero (it
adds nothing to any sample's similarity). A model that reads clips and sounds
(``model.encoders``) gets a projector per task *and* modality: its video and audio
projectors are expanded too, and a clip or sound is routed by its sample's instruction
(the keys are the image's and the words'; EProj has no key of other media).

The keys and the similarity are ``strategies/routing.py``'s (shared with routed LoRA): computed
in closed form in one pass over the task's data; the encoder and the backbone's embeddings
should stay frozen during the tasks (as EProj keeps them). Composed with replay, the keys of
a task would also see the replayed samples; put this strategy first or use it alone.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn

from contmm.model.modalities import stream_modalities
from contmm.strategy import Strategy
from strategies.routing import RoutingAccuracy, instruction_features, key_similarity, task_keys


class ProjectorCopies(nn.Module):
    """One projector per task so far: the ``active`` one, or with ``route`` set (a task per
    row of the input) each row's own."""

    def __init__(self, first: nn.Module) -> None:
        super().__init__()
        self.projectors = nn.ModuleList([first])
        self.active = 0
        self.route: torch.Tensor | None = None
        self.last_route: torch.Tensor | None = None  # the route of the latest routed input

    def grow(self, count: int) -> None:
        """Copies of the latest projector until there are ``count``."""
        while len(self.projectors) < count:
            self.projectors.append(copy.deepcopy(self.projectors[-1]))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.route is None:
            return self.projectors[self.active](features)
        self.last_route = self.route
        parts, order = [], []
        for task in self.route.unique().tolist():
            samples = (self.route == task).nonzero().squeeze(1)
            parts.append(self.projectors[task](features[samples]))
            order.append(samples)
        return torch.cat(parts)[torch.argsort(torch.cat(order))]


class ExpandedProjector(ProjectorCopies):
    """The input projectors of all tasks so far and their keys.

    With ``instruction`` unset it applies the ``active`` projector (training, oracle
    routing). With ``instruction`` set to the batch's instruction features it routes each
    sample by key similarity and keeps the choices in ``last_route``.
    """

    def __init__(self, first: nn.Module, image_weight: float) -> None:
        super().__init__(first)
        self.image_weight = image_weight
        # One row per task; the widths are the first keys'.
        self.register_buffer("image_keys", torch.zeros(0, 0))
        self.register_buffer("instruction_keys", torch.zeros(0, 0))
        self.instruction: torch.Tensor | None = None

    def add_keys(self, image_key: torch.Tensor, instruction_key: torch.Tensor) -> None:
        self.image_keys = torch.cat(
            [self.image_keys.reshape(-1, len(image_key)), image_key[None].to(self.image_keys)]
        )
        self.instruction_keys = torch.cat(
            [
                self.instruction_keys.reshape(-1, len(instruction_key)),
                instruction_key[None].to(self.instruction_keys),
            ]
        )

    def similarity(self, instruction: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Each sample's similarity to every task's keys: instruction, plus image where it has one."""
        image = None if features is None else features.mean(1)
        return key_similarity(self.image_keys, self.instruction_keys, instruction, image, self.image_weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.instruction is not None:
            self.route = self.similarity(self.instruction, features).argmax(1)
        return super().forward(features)


class ProjectorExpansion(Strategy):
    """EProj: an input projector per task (a projector pair, for a model that draws), picked
    per sample by task keys.

    Args:
        oracle: route by the task id instead of the keys (task-incremental evaluation).
        image_weight: weight of the image similarity against the instruction similarity's 1
            (EProj sums the two). Tasks whose images come from one distribution give the image
            keys nothing to tell apart: 0 routes by the instruction alone.
        key_batches: training batches (per rank) the task's keys are computed from; None: all.
    """

    def __init__(
        self, oracle: bool = False, image_weight: float = 1.0, key_batches: int | None = None
    ) -> None:
        self.oracle, self.image_weight, self.key_batches = oracle, image_weight, key_batches
        self.accuracy: RoutingAccuracy | None = None

    def setup(self, model, stream) -> None:
        if getattr(model.cfg, "pretrained", None) and (
            other := sorted(stream_modalities(stream) - {"image"})
        ):
            # A whole checkpoint's clips go through the image's projector (Video-LLaVA), by
            # frame: its rows are not the batch's samples, which the routing needs.
            raise ValueError(
                f"ProjectorExpansion routes a whole checkpoint's images only; the stream has samples "
                f"with {', '.join(other)}"
            )
        if not model.per_image_projector:
            raise ValueError(
                "ProjectorExpansion sends each sample's image to a projector of its own; this model's "
                f"input projector ({type(model.input_projector).__name__}) does not map each image on "
                "its own (a Qwen-VL patch merger reads all images of a batch as one sequence, "
                "InternVL's projector reads the tiles an image is cut into)"
            )
        media = [f"{m}_projector" for m in getattr(model, "placeholder_ids", {}) if m != "image"]
        for name in ("input_projector", *(["output_projector"] if model.generates else []), *media):
            if model.component_config(name).freeze:
                key = f"encoders.{name.split('_')[0]}.input_projector" if name in media else name
                raise ValueError(
                    f"ProjectorExpansion trains one {name.replace('_', ' ')} per task: set "
                    f"`model.{key}.freeze: false`"
                )
        self.accuracy = RoutingAccuracy(stream.task_names)
        model.set_input_projector(ExpandedProjector(model.input_projector, self.image_weight))
        if model.generates:
            model.output_projector = ProjectorCopies(model.output_projector)
        for name in media:
            setattr(model, name, ProjectorCopies(getattr(model, name)))

    def media_copies(self, model) -> dict[str, ProjectorCopies]:
        """The expanded projectors of clips and sounds, by modality."""
        return {
            m: getattr(model, f"{m}_projector") for m in getattr(model, "placeholder_ids", {}) if m != "image"
        }

    def copies(self, model) -> list[ProjectorCopies]:
        """The expanded projectors: the input one, the output one of a model that draws, and
        those of clips and sounds."""
        return [
            model.input_projector,
            *([model.output_projector] if model.generates else []),
            *self.media_copies(model).values(),
        ]

    def before_task(self, model, task_id) -> None:
        for expanded in self.copies(model):
            expanded.grow(task_id + 1)
            for task, projector in enumerate(expanded.projectors):
                projector.requires_grad_(task == task_id)
            expanded.active = task_id

    def after_task(self, model, task_id, dataloader) -> None:
        expanded = model.input_projector
        if len(expanded.image_keys) != task_id:
            raise RuntimeError(
                f"keys of task {task_id} computed after {len(expanded.image_keys)} tasks' keys"
            )
        expanded.add_keys(*task_keys(model, dataloader, self.key_batches, expanded.image_keys.device))

    @contextmanager
    def eval_context(self, model, task_id, batch=None):
        expanded = model.input_projector
        copies = self.copies(model)
        seen = len(expanded.image_keys)
        if seen == 0 or self.oracle or batch is None:
            # Before any task there is one projector; the oracle takes the task's own, or
            # for a task not tuned yet the latest one.
            active = [c.active for c in copies]
            for c in copies:
                c.active = min(task_id, len(c.projectors) - 1) if self.oracle else c.active
            try:
                yield
            finally:
                for c, a in zip(copies, active):
                    c.active = a
            return
        instruction = instruction_features(model, batch)
        # The image projector's rows are the samples with an image.
        expanded.instruction = instruction[(batch["input_ids"] == model.image_token_id).any(1)]
        expanded.last_route = None
        # The Output Projector's route: a generation prompt has no image, only its words; a
        # clip's or a sound's projector gets the route of the rows that carry one, in order.
        words_route = expanded.similarity(instruction).argmax(1)
        if model.generates:
            model.output_projector.route = words_route
        for modality, media_copies in self.media_copies(model).items():
            media_copies.route = words_route[(batch["input_ids"] == model.placeholder_ids[modality]).any(1)]
        try:
            yield
        finally:
            expanded.instruction = None
            for c in copies:
                c.route = None
        route = expanded.last_route if expanded.last_route is not None else words_route
        if task_id < seen:  # a task not tuned yet has no right projector to be routed to
            self.accuracy.update(task_id, route)

    def state_dict(self, model) -> dict:
        expanded = model.input_projector
        return {
            "projectors": len(expanded.projectors),
            "image_keys": expanded.image_keys.cpu(),
            "instruction_keys": expanded.instruction_keys.cpu(),
        }

    def load_state_dict(self, state: dict, model) -> None:
        """Give ``model`` as many projectors (pairs) and keys as the saved run had (after
        ``setup``, which expanded them); their weights come with the model's state dict."""
        for expanded in self.copies(model):
            expanded.grow(state["projectors"])
            expanded.active = state["projectors"] - 1
        expanded = model.input_projector
        expanded.image_keys = state["image_keys"].to(expanded.image_keys)
        expanded.instruction_keys = state["instruction_keys"].to(expanded.instruction_keys)

    def evaluation_report(self, model) -> dict:
        """Routing accuracy per tuned task in the evaluation just finished, summed over ranks."""
        if self.oracle:
            return {"routing": "oracle"}
        return self.accuracy.report(model.input_projector.image_keys.device) if self.accuracy else {}
