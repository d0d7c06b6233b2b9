"""Aspect ratios instead of pixel sizes, and what a member typed turned into image options.

``aspect: 16:9`` (or ``--ar 16:9`` at the end of the prompt) picks width x height with about the configured pixel
budget (``default_width * default_height``: the size the model and the rate limits are tuned for), sides rounded
to multiples of 64 (what SD checkpoints were trained on) within ``min_size``/``max_size``/``max_pixels``.
:func:`member_values` applies the prompt's trailing flags (:mod:`bot.gate.prompt_flags`) and the aspect to the
options of an /imagine; a rerun or a button passes stored parameters, which never go through it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from bot.gate.prompt_flags import parse_prompt_flags
from generation.request import RequestError
from generation.settings import GenerationSettings

ASPECT_PRESETS = ("1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "21:9")
ASPECT_MULTIPLE = 64
MAX_RATIO = 4.0  # wider than 4:1 leaves one side below any useful size


def parse_ratio(text: str) -> tuple[int, int]:
    """``(16, 9)`` from ``"16:9"``; :class:`RequestError` for anything else or a ratio beyond 4:1."""
    parts = text.strip().split(":")
    if len(parts) != 2 or not all(part.isdigit() and 0 < int(part) <= 100 for part in parts):
        raise RequestError(f"the aspect ratio must look like 16:9, two whole numbers from 1 to 100 (got '{text}')")
    across, down = int(parts[0]), int(parts[1])
    if max(across / down, down / across) > MAX_RATIO:
        raise RequestError(f"the aspect ratio may be at most 4:1 either way (got {text})")
    return across, down


def _round_side(value: float, settings: GenerationSettings) -> int:
    side = max(ASPECT_MULTIPLE, round(value / ASPECT_MULTIPLE) * ASPECT_MULTIPLE)
    return max(settings.min_size, min(settings.max_size, side))


def aspect_size(ratio: str, settings: GenerationSettings) -> tuple[int, int]:
    """Width and height for ``ratio`` at about ``default_width * default_height`` pixels (see the docstring)."""
    across, down = parse_ratio(ratio)
    budget = min(settings.default_width * settings.default_height, settings.max_pixels)
    width = _round_side(math.sqrt(budget * across / down), settings)
    height = _round_side(math.sqrt(budget * down / across), settings)
    while width * height > settings.max_pixels:  # rounding up may cross the cap: take from the longer side
        if width >= height and width - ASPECT_MULTIPLE >= settings.min_size:
            width -= ASPECT_MULTIPLE
        elif height - ASPECT_MULTIPLE >= settings.min_size:
            height -= ASPECT_MULTIPLE
        else:
            break
    return width, height


def _same_or_refuse(name: str, given: Any, flagged: Any, flag: str) -> Any:
    if given is not None and flagged is not None and given != flagged:
        raise RequestError(f"{name} is given twice ({name}: {given} and {flag} {flagged}); keep one")
    return flagged if flagged is not None else given


def member_values(settings: GenerationSettings, values: Mapping[str, Any]) -> dict[str, Any]:
    """/imagine's options as :func:`~generation.request.validate_request` takes them: trailing prompt flags read,
    ``aspect`` turned into width and height. :class:`RequestError` for a bad flag or a contradiction."""
    result = dict(values)
    flags = parse_prompt_flags(str(result.get("prompt") or ""))
    result["prompt"] = flags.prompt
    result["seed"] = _same_or_refuse("seed", result.get("seed"), flags.seed, "--seed")
    result["steps"] = _same_or_refuse("steps", result.get("steps"), flags.steps, "--steps")
    if flags.negative:
        result["negative_prompt"] = ", ".join(part for part in (result.get("negative_prompt"), flags.negative)
                                              if part)
    aspect = _same_or_refuse("aspect", result.pop("aspect", None), flags.aspect, "--ar")
    if aspect is not None:
        if result.get("width") is not None or result.get("height") is not None:
            raise RequestError("give either an aspect ratio or width/height, not both")
        result["width"], result["height"] = aspect_size(str(aspect), settings)
    return {name: value for name, value in result.items() if value is not None}
