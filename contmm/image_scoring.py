"""Image scorers: a generated image and its reference -> a score in [0, 1].

A generation task names one of these as its scorer (``Task.scorer``); a task whose scorer is
here is scored on the image the model generates, every other task on its text. The pixel
scorers need no learned model: they read a drawing of one object on a dark background
(the synthetic stream's scenes) and name its colour from :data:`PALETTE` or its quadrant
from :data:`QUADRANTS`. They do not tell shapes apart.
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

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


def generates_images(scorer: str) -> bool:
    """Whether a task with this scorer is scored on a generated image."""
    return scorer in IMAGE_SCORERS


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
