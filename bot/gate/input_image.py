"""A picture a member attached to /imagine, checked and normalised before anything else sees it.

Uploaded files are untrusted: the declared content type can lie, a few kilobytes of PNG can declare 20000x20000
pixels (a decompression bomb: gigabytes once decoded), a GIF or an animated WebP has many frames, a phone JPEG
carries its rotation and its GPS position in EXIF. So, in this order:

1. before downloading: the declared content type and size (:func:`check_declared`);
2. after downloading: the magic bytes decide the format (PNG, JPEG or WebP, nothing else), the byte cap again,
   and the pixel count read from the header *before* decoding (:func:`normalize_input_image`); Pillow's own
   decompression-bomb warning is turned into an error on top, and ``Image.MAX_IMAGE_PIXELS`` is set explicitly by
   :func:`configure_pillow` at start;
3. the first frame, turned upright (EXIF), flattened over white, RGB, resized to the size img2img will use
   (:func:`generation.request.fitted_size`: multiples of 8 within the configured bounds) and re-encoded as a PNG
   without metadata. That PNG is what is journalled, stored and generated from.

Every refusal is an :class:`InputImageError` (a :class:`~generation.request.RequestError`), a sentence the member
reads after "That request can't be run:". Decoding is CPU work: call :func:`normalize_input_image` in a thread.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

from bot.config import InputImageSettings
from bot.text import format_size
from generation.png import upright_rgb
from generation.request import RequestError, fitted_size
from generation.settings import GenerationSettings

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
WHAT_WE_TAKE = "a PNG, JPEG or WebP picture"


class InputImageError(RequestError):
    """An attachment that cannot be used; ``message`` says why and what to send instead."""


@dataclass(frozen=True)
class InputImage:
    """The normalised starting image: PNG bytes at the size img2img will use."""

    png: bytes
    width: int
    height: int
    source_format: str  # PNG, JPEG or WEBP
    frames: int  # > 1: an animation, of which the first frame was taken


def configure_pillow(*pixel_limits: int) -> None:
    """Set Pillow's decompression-bomb limit explicitly (it warns above it and refuses above twice it) to the
    largest image this bot legitimately decodes, instead of relying on Pillow's default of about 89 megapixels."""
    Image.MAX_IMAGE_PIXELS = max(pixel_limits)


def sniff_format(data: bytes) -> str | None:
    """PNG, JPEG or WEBP from the magic bytes (what the file is, whatever its name or declared type says)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _kind_of(data: bytes) -> str:
    """A word for what an unusable file looks like, for the refusal."""
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "a GIF"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "a TIFF"
    if data[:2] == b"BM":
        return "a BMP"
    if data[:4] == b"%PDF":
        return "a PDF"
    try:
        data[:512].decode("utf-8")
    except UnicodeDecodeError:
        return "not an image"
    return "text"


def check_declared(filename: str, content_type: str | None, size: int, limits: InputImageSettings) -> None:
    """What Discord says about the attachment, before downloading it: an image type, and not too big."""
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared and declared not in FORMATS.values():
        shown = declared if declared.startswith("image/") else "not an image"
        raise InputImageError(f"the attached file '{filename}' is {shown}; attach {WHAT_WE_TAKE}")
    if size > limits.max_bytes:
        raise too_many_bytes(size, limits)


def too_many_bytes(size: int, limits: InputImageSettings) -> InputImageError:
    return InputImageError(f"the attached image is {format_size(size)}, more than the "
                           f"{format_size(limits.max_bytes)} this bot accepts; attach a smaller picture")


def _pixel_refusal(width: int, height: int, limits: InputImageSettings) -> InputImageError:
    size = f"{width}x{height} = {width * height} pixels" if width and height else "too many pixels"
    return InputImageError(f"the attached image has {size}, more than the {limits.max_pixels} this bot accepts; "
                           "attach a smaller picture")


def normalize_input_image(data: bytes, limits: InputImageSettings, settings: GenerationSettings) -> InputImage:
    """Check and normalise downloaded bytes (see the module docstring). Blocking: run it in a thread."""
    if len(data) > limits.max_bytes:
        raise too_many_bytes(len(data), limits)
    source_format = sniff_format(data)
    if source_format is None:
        raise InputImageError(f"the attached file is {_kind_of(data)}; attach {WHAT_WE_TAKE}")
    width = height = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[source_format]) as opened:
                width, height = opened.size  # from the header: nothing is decoded yet
                if width * height > limits.max_pixels:
                    raise _pixel_refusal(width, height, limits)
                frames = int(getattr(opened, "n_frames", 1) or 1)
                opened.seek(0)
                image = upright_rgb(opened)
    except InputImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _pixel_refusal(width, height, limits) from None
    except (OSError, ValueError, SyntaxError, EOFError):
        raise InputImageError(f"the attached {source_format.replace('WEBP', 'WebP')} file could not be read (it "
                              f"may be damaged or cut short); attach {WHAT_WE_TAKE}") from None
    size = fitted_size(image.width, image.height, settings)
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)  # no pnginfo: EXIF, GPS and text chunks are dropped
    return InputImage(png=buffer.getvalue(), width=size[0], height=size[1], source_format=source_format,
                      frames=frames)
