"""PNG files that carry their own recipe, in the format AUTOMATIC1111-style web UIs write and read.

The ``parameters`` text chunk lets a member drop the image into a web UI ("PNG Info") and get the same
prompt, seed, sampler and size back; :func:`parse_parameters` reads it back for "remix"-style features.
"""

from __future__ import annotations

import contextlib
import io
import re
from typing import Any

from PIL import Image, PngImagePlugin

from generation.request import GenerationRequest
from generation.schedulers import SAMPLER_LABELS

PARAMETERS_KEY = "parameters"
_NEGATIVE = "Negative prompt: "
# "Key: value" pairs of the last line; a value may be a quoted string containing commas.
_PAIR = re.compile(r'\s*([\w][\w \-/+.]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def _fmt_number(value: float) -> str:
    return f"{value:g}"


def parameters_text(request: GenerationRequest, seed: int, model_name: str) -> str:
    """``<prompt>\\nNegative prompt: <neg>\\nSteps: N, Sampler: X, CFG scale: G, Seed: S, Size: WxH, Model: M``;
    the negative line is left out when empty, as A1111 does."""
    sampler = SAMPLER_LABELS.get(request.scheduler, request.scheduler)
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(_NEGATIVE + request.negative_prompt)
    model = model_name.replace(",", " ").replace("\n", " ")
    lines.append(
        f"Steps: {request.steps}, Sampler: {sampler}, CFG scale: {_fmt_number(request.guidance)}, Seed: {seed}, "
        f"Size: {request.width}x{request.height}, Model: {model}"
    )
    return "\n".join(lines)


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
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_parameters(text: str) -> dict[str, Any]:
    """Parse web-UI ``parameters`` text: ``prompt``, ``negative_prompt`` and every ``Key: value`` of the last
    line (``Steps``/``Seed`` as int, ``CFG scale`` as float, ``Size`` also as ``width``/``height``)."""
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
    result: dict[str, Any] = {
        "prompt": "\n".join(prompt_lines),
        "negative_prompt": "\n".join(negative_lines) if negative_lines is not None else "",
    }
    if last is None:
        return result
    for key, raw in _PAIR.findall(last):
        value: Any = _unquote(raw)
        if key in ("Steps", "Seed", "Clip skip"):
            with contextlib.suppress(ValueError):
                value = int(value)
        elif key == "CFG scale":
            with contextlib.suppress(ValueError):
                value = float(value)
        elif key == "Size":
            match = re.fullmatch(r"(\d+)x(\d+)", value)
            if match:
                result["width"], result["height"] = int(match.group(1)), int(match.group(2))
        result[key] = value
    return result
