"""Attached pictures: what is refused (with a sentence) and what an accepted one becomes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bot.config import InputImageSettings
from bot.gate.input_image import (
    InputImageError,
    check_declared,
    configure_pillow,
    normalize_input_image,
    sniff_format,
)
from generation.settings import GenerationSettings
from tests.helpers import bomb_png

LIMITS = InputImageSettings(max_bytes=200 * 1024, max_pixels=2048 * 2048)
SETTINGS = GenerationSettings(model="tiny", min_size=64, max_size=256, max_pixels=256 * 256)


def encoded(size: tuple[int, int] = (100, 60), fmt: str = "PNG", mode: str = "RGB", **save: object) -> bytes:
    rng = np.random.default_rng(1)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def refusal(data: bytes, limits: InputImageSettings = LIMITS) -> str:
    with pytest.raises(InputImageError) as caught:
        normalize_input_image(data, limits, SETTINGS)
    return caught.value.message


@pytest.mark.parametrize(("fmt", "expected"), [("PNG", "PNG"), ("JPEG", "JPEG"), ("WEBP", "WEBP"), ("GIF", None),
                                               ("BMP", None), ("TIFF", None)])
def test_the_magic_bytes_decide_the_format(fmt: str, expected: str | None) -> None:
    assert sniff_format(encoded((16, 16), fmt)) == expected


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_an_accepted_picture_becomes_an_rgb_png_fitted_to_the_bounds(fmt: str) -> None:
    result = normalize_input_image(encoded((300, 150), fmt), LIMITS, SETTINGS)
    assert (result.source_format, result.frames) == (fmt, 1)
    with Image.open(io.BytesIO(result.png)) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.size == (result.width, result.height)
    # 300x150 is over max_pixels (256*256): scaled down, same shape, multiples of 8
    assert (result.width, result.height) == (256, 128)


def test_small_pictures_grow_to_the_minimum_and_transparency_is_flattened_over_white() -> None:
    clear = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    buffer = io.BytesIO()
    clear.save(buffer, format="PNG")
    result = normalize_input_image(buffer.getvalue(), LIMITS, SETTINGS)
    assert (result.width, result.height) == (64, 64)
    with Image.open(io.BytesIO(result.png)) as image:
        assert image.getpixel((10, 10)) == (255, 255, 255)


def test_exif_rotation_is_applied_and_metadata_dropped() -> None:
    image = Image.new("RGB", (128, 64), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    exif[0x010F] = "PhoneMaker"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    result = normalize_input_image(buffer.getvalue(), LIMITS, SETTINGS)
    assert (result.width, result.height) == (64, 128)  # upright, as the phone showed it
    with Image.open(io.BytesIO(result.png)) as png:
        assert not png.getexif() and not getattr(png, "text", {})


def test_an_animation_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (64, 64), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)
    result = normalize_input_image(buffer.getvalue(), LIMITS, SETTINGS)
    assert result.frames == 3
    with Image.open(io.BytesIO(result.png)) as png:
        assert png.getpixel((32, 32)) == (255, 0, 0)


@pytest.mark.parametrize(("data", "message"), [
    (b"hello, this is a text file\n", "the attached file is text; attach a PNG, JPEG or WebP picture"),
    (encoded((16, 16), "GIF"), "the attached file is a GIF; attach a PNG, JPEG or WebP picture"),
    (encoded((16, 16), "BMP"), "the attached file is a BMP"),
    (bytes(range(256)) * 4, "the attached file is not an image"),
    (encoded((64, 64), "PNG")[:60], "the attached PNG file could not be read"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "the attached JPEG file could not be read"),
])
def test_what_is_not_a_usable_picture_is_refused(data: bytes, message: str) -> None:
    assert message in refusal(data)


def test_too_many_bytes_are_refused_before_decoding() -> None:
    big = encoded((300, 300), "PNG")  # random pixels: about 270 KB
    assert len(big) > LIMITS.max_bytes
    assert "more than the 200 KB this bot accepts" in refusal(big)


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    bomb = bomb_png()
    assert len(bomb) < 100 * 1024  # small on the wire, 256 megapixels decoded
    assert "pixels, more than the 4194304 this bot accepts; attach a smaller picture" in refusal(bomb)
    # Under Pillow's own limit the header check alone refuses it, naming the size.
    assert "has 3000x3000 = 9000000 pixels, more than the 4194304" in refusal(bomb_png(3000))


def test_pillows_own_bomb_limit_is_an_error_not_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below the configured cap but above Pillow's limit: Pillow's warning is turned into a refusal."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    configure_pillow(1000, 50 * 50)
    assert Image.MAX_IMAGE_PIXELS == 2500
    message = refusal(encoded((64, 64), "PNG"), InputImageSettings(max_pixels=10_000))
    assert "more than the 10000 this bot accepts" in message


@pytest.mark.parametrize(("content_type", "size", "message"), [
    ("text/plain; charset=utf-8", 10, "the attached file 'x' is not an image; attach a PNG, JPEG or WebP picture"),
    ("image/gif", 10, "the attached file 'x' is image/gif; attach"),
    ("image/png", 300 * 1024, "the attached image is 300 KB, more than the 200 KB this bot accepts"),
])
def test_what_discord_declares_is_checked_before_downloading(content_type: str, size: int, message: str) -> None:
    with pytest.raises(InputImageError) as caught:
        check_declared("x", content_type, size, LIMITS)
    assert message in caught.value.message


@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg", "IMAGE/WEBP", None])
def test_image_types_and_unknown_types_may_be_downloaded(content_type: str | None) -> None:
    check_declared("x.png", content_type, 1000, LIMITS)  # no refusal: the magic bytes decide later
