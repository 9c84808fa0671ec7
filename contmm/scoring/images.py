"""Image scorers: a generated image and its reference -> a score in [0, 1].

A generation task names one of these as its scorer (``Task.scorer``); a task whose scorer is
here is scored on the image the model generates, every other task on its text. The pixel
scorers need no learned model: they read a drawing of one object on a dark background
(the synthetic stream's scenes) and name its colour from :data:`PALETTE` or its quadrant
from :data:`QUADRANTS`. They do not tell shapes apart. For real drawings, :class:`ClipScore`
scores the image against its reference text with a CLIP model the config names
(``eval.clip_model``).
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchmetrics.functional.multimodal import clip_score
from transformers import CLIPModel, CLIPProcessor

from contmm.model.files import check_model_dir, loader_errors
from contmm.scoring.text import SCORERS

PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "white": (245, 245, 245),
}
BACKGROUND = (30, 30, 30)
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
# A pixel this far (largest channel difference) from the background belongs to the object.
_FOREGROUND = 60


def foreground(image: Image.Image) -> np.ndarray:
    """The object's pixels: a boolean (H, W) mask of those unlike the background."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return np.abs(pixels - np.array(BACKGROUND)).max(axis=-1) > _FOREGROUND


def object_colour(image: Image.Image) -> str | None:
    """The palette colour nearest the object's median colour (None: nothing drawn)."""
    mask = foreground(image)
    if not mask.any():
        return None
    median = np.median(np.asarray(image.convert("RGB"), dtype=np.float64)[mask], axis=0)
    return min(PALETTE, key=lambda name: float(np.sum((median - PALETTE[name]) ** 2)))


def object_quadrant(image: Image.Image) -> str | None:
    """The quadrant holding most of the object's pixels (None: nothing drawn)."""
    mask = foreground(image)
    if not mask.any():
        return None
    h, w = mask.shape
    counts = [mask[: h // 2, : w // 2].sum(), mask[: h // 2, w // 2 :].sum()]
    counts += [mask[h // 2 :, : w // 2].sum(), mask[h // 2 :, w // 2 :].sum()]
    return QUADRANTS[int(np.argmax(counts))]


def colour_match(image: Image.Image, reference: str) -> float:
    """1 if the drawn object has the reference colour."""
    return float(object_colour(image) == reference)


def quadrant_match(image: Image.Image, reference: str) -> float:
    """1 if the drawn object sits in the reference quadrant."""
    return float(object_quadrant(image) == reference)


IMAGE_SCORERS: dict[str, Callable[[Image.Image, str], float]] = {
    "colour_match": colour_match,
    "quadrant_match": quadrant_match,
}


# Image scorers that need a learned model, built from the evaluation config.
MODEL_SCORERS = ("clip_score",)


def generates_images(scorer: str) -> bool:
    """Whether a task with this scorer is scored on a generated image."""
    return scorer in IMAGE_SCORERS or scorer in MODEL_SCORERS


def check_drawing(tasks: list, model, clip_model: str | None) -> None:
    """Refuse, before any training, tasks whose images the run cannot draw or score."""
    drawn = [task.name for task in tasks if generates_images(task.scorer)]
    if drawn and not model.generates:
        raise ValueError(
            f"task(s) {drawn} ask for images but the model generates none: "
            "give it model.output_projector and model.generator"
        )
    clip = [task.name for task in tasks if task.scorer == "clip_score"]
    if clip and clip_model is None:
        raise ValueError(
            f"task(s) {clip} are scored by clip_score: set eval.clip_model (a CLIP directory or hub id)"
        )


def check_scorer(name: str) -> None:
    """Refuse a scorer name that is neither a text nor an image scorer, listing both."""
    if name not in SCORERS and not generates_images(name):
        raise ValueError(
            f"unknown scorer {name!r}; text scorers: {sorted(SCORERS)}, "
            f"image scorers: {sorted([*IMAGE_SCORERS, *MODEL_SCORERS])}"
        )


class _TensorFeatures(torch.nn.Module):
    """A CLIP model whose ``get_*_features`` give the projected features as a tensor.

    torchmetrics 1.9 reads them as tensors; transformers 5 returns them inside an output
    object (``pooler_output``), and ``clip_score`` fails on it (fixed in torchmetrics after
    1.9: Lightning-AI/torchmetrics#3408)."""

    def __init__(self, clip: CLIPModel) -> None:
        super().__init__()
        self.clip = clip
        self.config = clip.config

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return _features(self.clip.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return _features(self.clip.get_text_features(*args, **kwargs))


def _features(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipScore:
    """CLIP score (Hessel et al. 2021, arXiv 2104.08718) of a drawing against its reference
    text, by torchmetrics' ``clip_score``: max(cos(E_image, E_text), 0), in [0, 1]
    (torchmetrics' 0-100 scale divided by 100, so it sits in the matrix beside accuracies).

    Args:
        model: a transformers CLIP model and processor: a local directory or a hub id.
    """

    def __init__(self, model: str) -> None:
        check_model_dir(model, "eval.clip_model")
        with loader_errors("eval.clip_model", model):
            self.model = _TensorFeatures(CLIPModel.from_pretrained(model).eval())
            self.processor = CLIPProcessor.from_pretrained(model)

    def to(self, device: torch.device) -> ClipScore:
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, image: Image.Image, reference: str) -> float:
        # The checkpoint's own model and processor, not the hub's default (it is never fetched).
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
        value = clip_score(pixels, reference, model_name_or_path=lambda: (self.model, self.processor))
        return float(value) / 100


def image_noise(seed: int, sample_id: str) -> torch.Generator:
    """The noise source of one sample's image: the same for that sample at every stage."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{sample_id}".encode()))


def image_path(task: str, sample_id: str) -> str:
    """Where a generated image is kept, relative to its stage's predictions folder. An id with
    characters unsafe in a file name has them replaced and a hash of the id added, so that two
    ids never share a file ("a/b" and "a_b" would)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(sample_id))
    if name != str(sample_id):
        name += f"-{zlib.crc32(str(sample_id).encode()):08x}"
    return f"{task}/{name}.png"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
