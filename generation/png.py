"""PNG files that carry their own recipe, in the format AUTOMATIC1111-style web UIs write and read.

The ``parameters`` text chunk lets a member drop the image into a web UI ("PNG Info") and get the same
prompt, seed, sampler and size back; :func:`parse_parameters` reads it back for "remix"-style features.
Web-UI keys are used where they exist: ``Denoising strength`` (img2img), ``Hires upscale`` (the upscale factor),
``Model``, LoRAs as ``<lora:name:weight>`` after the prompt. The seed of the image a job varies or upscales is
written as ``Parent seed``: the web UI's ``Variation seed`` means something else (noise blended from a second
seed), so a web UI would reproduce the wrong image from it; an unknown key is kept and ignored there.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from typing import Any

from PIL import Image, ImageOps, PngImagePlugin

from generation.request import ImageParams
from generation.schedulers import SAMPLER_LABELS

PARAMETERS_KEY = "parameters"
_NEGATIVE = "Negative prompt: "
# "Key: value" pairs of the last line; a value may be a quoted string containing commas.
_PAIR = re.compile(r'\s*([\w][\w \-/+.]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
_TRAILING_LORAS = re.compile(r"(?:\s*<lora:[^:<>]+:[-+0-9.eE]+>)+\s*$")
_LORA = re.compile(r"<lora:([^:<>]+):([-+0-9.eE]+)>")
_INT_KEYS = ("Steps", "Seed", "Clip skip", "Parent seed")
_FLOAT_KEYS = ("CFG scale", "Denoising strength", "Hires upscale")


def _fmt_number(value: float) -> str:
    return f"{value:g}"


def _quote(value: str) -> str:
    """A1111's rule: a value with a comma, colon or newline is written as a JSON string."""
    if not any(c in value for c in ",:\n\""):
        return value
    return json.dumps(value, ensure_ascii=False)


def parameters_text(params: ImageParams, seed: int, model_name: str) -> str:
    """``<prompt> <lora:n:w>\\nNegative prompt: <neg>\\nSteps: N, Sampler: X, CFG scale: G, Seed: S, Size: WxH,
    Model: M[, Denoising strength: D][, Hires upscale: F][, Parent seed: P][, Style: name]``; the negative line is
    left out when empty, as A1111 does. ``seed`` is this image's seed (``params.seed + index``)."""
    sampler = SAMPLER_LABELS.get(params.scheduler, params.scheduler)
    prompt = " ".join([params.prompt, *(f"<lora:{name}:{_fmt_number(w)}>" for name, w in params.loras)])
    lines = [prompt]
    if params.negative_prompt:
        lines.append(_NEGATIVE + params.negative_prompt)
    pairs = [("Steps", str(params.steps)), ("Sampler", sampler), ("CFG scale", _fmt_number(params.guidance)),
             ("Seed", str(seed)), ("Size", f"{params.width}x{params.height}"), ("Model", _quote(model_name))]
    if params.strength is not None:
        pairs.append(("Denoising strength", _fmt_number(params.strength)))
    if params.upscale is not None:
        pairs.append(("Hires upscale", _fmt_number(params.upscale)))
    if params.parent_seed is not None:
        pairs.append(("Parent seed", str(params.parent_seed)))
    if params.style:
        pairs.append(("Style", _quote(params.style)))
    lines.append(", ".join(f"{key}: {value}" for key, value in pairs))
    return "\n".join(lines)


def upright_rgb(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says, in RGB, any transparency laid over white: what a picture a
    member sends (or a starting image read back) must be before it enters a pipeline."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, (255, 255, 255))
        image.paste(rgba, mask=rgba.getchannel("A"))
    return image.convert("RGB")


def encode_png(image: Image.Image, parameters: str) -> bytes:
    """The image as PNG bytes with *parameters* in a ``parameters`` text chunk (iTXt when not Latin-1)."""
    info = PngImagePlugin.PngInfo()
    try:
        parameters.encode("latin-1")
        info.add_text(PARAMETERS_KEY, parameters)  # tEXt, what most readers expect
    except UnicodeEncodeError:
        info.add_itxt(PARAMETERS_KEY, parameters)  # tEXt is Latin-1 only; iTXt is UTF-8 (A1111 does the same)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_parameters(png_bytes: bytes) -> str | None:
    """The ``parameters`` text of a PNG, or None when there is none (or the bytes are not a PNG)."""
    try:
        with Image.open(io.BytesIO(png_bytes)) as image:
            image.load()
            text = getattr(image, "text", {}) or {}
            value = text.get(PARAMETERS_KEY, image.info.get(PARAMETERS_KEY))
    except (OSError, ValueError, SyntaxError):
        return None
    return str(value) if value is not None else None


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return str(json.loads(value))
        except ValueError:
            return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_parameters(text: str) -> dict[str, Any]:
    """Parse web-UI ``parameters`` text: ``prompt``, ``negative_prompt``, ``loras`` and every ``Key: value`` of the
    last line (``Steps``/``Seed``/``Parent seed`` as int, ``CFG scale``/``Denoising strength``/``Hires upscale``
    as float, ``Size`` also as ``width``/``height``). ``<lora:name:weight>`` tags at the end of the prompt are
    taken out of ``prompt`` into ``loras`` as ``[(name, weight), ...]``."""
    lines = text.split("\n")
    last = lines[-1] if lines and re.match(r"\s*Steps:\s*\d", lines[-1]) else None
    body = lines[:-1] if last is not None else lines
    prompt_lines: list[str] = []
    negative_lines: list[str] | None = None
    for line in body:
        if negative_lines is None and line.startswith(_NEGATIVE):
            negative_lines = [line[len(_NEGATIVE):]]
        elif negative_lines is not None:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    prompt = "\n".join(prompt_lines)
    loras: list[tuple[str, float]] = []
    tags = _TRAILING_LORAS.search(prompt)
    if tags is not None and tags.start() > 0:
        loras = [(name, float(weight)) for name, weight in _LORA.findall(tags.group())]
        prompt = prompt[: tags.start()]
    result: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": "\n".join(negative_lines) if negative_lines is not None else "",
        "loras": loras,
    }
    if last is None:
        return result
    for key, raw in _PAIR.findall(last):
        value: Any = _unquote(raw)
        if key in _INT_KEYS:
            with contextlib.suppress(ValueError):
                value = int(value)
        elif key in _FLOAT_KEYS:
            with contextlib.suppress(ValueError):
                value = float(value)
        elif key == "Size":
            match = re.fullmatch(r"(\d+)x(\d+)", value)
            if match:
                result["width"], result["height"] = int(match.group(1)), int(match.group(2))
        result[key] = value
    return result
