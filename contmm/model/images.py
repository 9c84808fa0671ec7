"""Images as the model sees them: 8-bit RGB, whatever mode the file was stored in.

Pillow's ``convert("RGB")`` is right for most modes (``L``, ``1``, ``P`` without
transparency, ``CMYK``, ``YCbCr``) but not for three kinds of image:

- 16- and 32-bit greyscale (``I;16``, ``I``: 16-bit PNG): Pillow clips the values to 255,
  so everything above 255 of 65535 comes out white. Here they are scaled to 8 bits.
- transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent colour): Pillow drops
  the alpha and shows whatever colour the transparent pixels hold (often black). Here the
  image is composited on white, as image viewers and browsers show it.

A file is also turned upright by its EXIF orientation (a phone's photo is stored sideways
with a tag saying so), as Pillow's ``ImageOps.exif_transpose`` and transformers'
``load_image`` do: contmm trains on the pixels a checkpoint's processor, given the same file,
would see.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Integer greyscale modes; their values are read as 16-bit (0 .. 65535), PNG's deepest.
WIDE_GREY = {"I", "I;16", "I;16L", "I;16B", "I;16N"}
ALPHA = {"RGBA", "RGBa", "LA", "La", "PA"}
BACKGROUND = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """A new, fully decoded 8-bit RGB copy of ``image`` (see the module's docstring)."""
    if image.mode in WIDE_GREY:
        # 257 maps 65535 to 255 exactly; values beyond 16 bits (32-bit "I") are clipped.
        grey = np.clip(np.rint(np.asarray(image, dtype=np.float64) / 257), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode in ALPHA or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGBA", image.size, BACKGROUND)
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    # convert returns a copy even for an RGB image, so it outlives the file it came from.
    return image.convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """The image file at ``path`` decoded in full, turned by its EXIF orientation and
    converted with :func:`to_rgb`; a truncated or corrupt file raises here (OSError,
    SyntaxError or ValueError)."""
    with Image.open(path) as image:
        # In place: the file's image is thrown away after, and a copy would cost a frame.
        ImageOps.exif_transpose(image, in_place=True)
        return to_rgb(image)
