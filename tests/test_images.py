"""Every image mode becomes the RGB a viewer shows, wherever a sample's image is opened."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image
from transformers.image_utils import load_image

from contmm.model.collate import sample_image
from contmm.model.images import open_rgb, to_rgb
from streams.llava import LLaVADataset, Sample


def rgb_of(image: Image.Image) -> tuple[int, int, int]:
    return to_rgb(image).getpixel((0, 0))


def test_a_16_bit_grey_png_of_half_the_range_is_mid_grey_not_white(tmp_path):
    Image.new("I;16", (4, 4), 32768).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as image:
        assert image.mode == "I;16"  # as Pillow opens a 16-bit PNG
    assert open_rgb(tmp_path / "grey16.png").getpixel((0, 0)) == (128, 128, 128)


def test_32_bit_grey_is_read_as_16_bit_and_clipped_beyond():
    image = Image.fromarray(np.array([[0, 65535, 100000]], dtype=np.int32), "I")
    assert [to_rgb(image).getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (255,) * 3, (255,) * 3]


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("RGBA", (1, 1), (0, 0, 0, 0)), (255, 255, 255)),  # transparent black shows white
        (Image.new("RGBA", (1, 1), (200, 0, 0, 255)), (200, 0, 0)),
        (Image.new("RGBA", (1, 1), (0, 0, 0, 128)), (127, 127, 127)),  # half black over white
        (Image.new("LA", (1, 1), (0, 0)), (255, 255, 255)),
        (Image.new("LA", (1, 1), (60, 255)), (60, 60, 60)),
        (Image.new("CMYK", (1, 1), (0, 0, 0, 0)), (255, 255, 255)),
        (Image.new("CMYK", (1, 1), (255, 0, 0, 0)), (0, 255, 255)),  # pure cyan
        (Image.new("CMYK", (1, 1), (0, 0, 0, 128)), (127, 127, 127)),
        (Image.new("L", (1, 1), 90), (90, 90, 90)),
    ],
    ids=[
        "rgba clear",
        "rgba opaque",
        "rgba half",
        "la clear",
        "la opaque",
        "cmyk white",
        "cmyk cyan",
        "cmyk k",
        "l",
    ],
)
def test_each_mode_gives_the_rgb_a_viewer_shows(image, expected):
    assert rgb_of(image) == expected


def test_a_palette_image_gives_its_colours_and_its_transparent_index_shows_white(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 30, 120, 200] + [0] * 762)
    image.putpixel((1, 0), 1)
    assert to_rgb(image).getpixel((1, 0)) == (30, 120, 200)
    image.save(tmp_path / "clear.png", transparency=0)
    converted = open_rgb(tmp_path / "clear.png")
    assert [converted.getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (30, 120, 200)]


def test_the_collator_and_the_llava_dataset_convert_with_to_rgb(tmp_path):
    path = tmp_path / "grey16.png"
    Image.new("I;16", (4, 4), 32768).save(path)
    assert sample_image({"image": path}).getpixel((0, 0)) == (128, 128, 128)
    with Image.open(path) as image:
        assert sample_image({"image": image}).getpixel((0, 0)) == (128, 128, 128)
    dataset = LLaVADataset([Sample(id="g", media=(("image", path),), question="<image>\nq", answer="a")], {})
    assert dataset[0]["image"].getpixel((0, 0)) == (128, 128, 128)


def sideways(path: Path) -> None:
    """A 16x8 image, red left and blue right, stored with EXIF orientation 6: shown turned a
    quarter clockwise (as a phone stores a portrait photo), 8x16, red on top and blue below."""
    image = Image.new("RGB", (16, 8), (220, 40, 40))
    image.paste((50, 90, 230), (8, 0, 16, 8))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    image.save(path, exif=exif)


@pytest.mark.parametrize("name", ["photo.jpg", "photo.png"])
def test_an_image_is_turned_upright_by_its_exif_orientation_as_transformers_load_image_does(tmp_path, name):
    path = tmp_path / name
    sideways(path)
    dataset = LLaVADataset([Sample(id="p", media=(("image", path),), question="<image>\nq", answer="a")], {})
    for image in (open_rgb(path), sample_image({"image": path}), dataset[0]["image"]):
        assert image.size == (8, 16)
        top, bottom = image.getpixel((4, 2)), image.getpixel((4, 13))
        assert top[0] > 180 > top[2] and bottom[2] > 180 > bottom[0]  # red above blue (JPEG is near)
        assert np.array_equal(np.asarray(image), np.asarray(load_image(str(path))))
