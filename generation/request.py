"""What a member asked for, checked once at the edge so the worker and the engine can trust every field.

:class:`ImageParams` is the one value that decides the pixels: the bot, the journal, the worker and the PNG carry
it unchanged (a new parameter is one field here, one check in :func:`validate_request` and a migration in the
bot). :func:`validate_request` is the only way the bot and the CLI build a :class:`GenerationRequest`: it fills
the configured defaults, draws a seed when none was given (so the seed is recorded and the image reproducible),
applies the style, and refuses out-of-range values with a sentence a Discord member can read.

Validation is idempotent: ``validate_request(settings, **params.to_dict(), init_image=...)`` gives ``params``
back (a style's template is not applied twice, see :func:`_unstyle`), so a stored value can be re-checked
against today's settings. Sizes are always the *output* size; for an upscale without width/height the size is
computed from the image (:func:`upscaled_size`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config

from generation.schedulers import SCHEDULER_NAMES, UnknownSchedulerError, resolve_scheduler_name
from generation.settings import GenerationSettings, StyleSettings

MAX_PROMPT_CHARS = 1000
MAX_COUNT = 4
MIN_GUIDANCE = 0.0
MAX_GUIDANCE = 30.0
MAX_SEED = 2**32 - 1
MIN_STRENGTH = 0.05
MAX_STRENGTH = 1.0
MAX_UPSCALE = 4.0
UPSCALE_MULTIPLE = 64  # upscaled sides: multiples of 64 also suit the x4 (/4) and latent (/2) upscalers' inputs
INIT_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")


# Read by from_dict: an unknown key is an error, never dropped; no coercion ("5" stays a wrong seed, not 5).
@with_config(ConfigDict(extra="forbid", strict=True))
@dataclass(frozen=True)
class ImageParams:
    """Everything that decides the pixels; carried unchanged by the bot, the journal, the worker and the PNG."""

    prompt: str  # with the style's template applied (the member's words are inside it)
    negative_prompt: str = ""  # with the style's extra negative words appended
    seed: int = 0  # image i of the job uses seed + i
    steps: int = 20  # as requested; img2img runs int(steps * strength) of them (see denoising_steps)
    guidance: float = 7.0
    width: int = 512  # the output size (for an upscale: the upscaled size)
    height: int = 512
    count: int = 1
    scheduler: str = "euler_a"
    model: str = ""  # a name from generation.models; "" = the default model
    strength: float | None = None  # img2img denoising strength; None = text-to-image
    upscale: float | None = None  # hires-fix factor when this job upscales its init image
    style: str = ""  # a name from generation.styles ("" = none)
    loras: tuple[tuple[str, float], ...] = ()  # (adapter name, weight), resolved from the style
    parent_seed: int | None = None  # the seed of the image this job varies/upscales (for the PNG chunk)

    @property
    def denoising_steps(self) -> int:
        """Steps the sampler really runs, as diffusers counts them: img2img skips the first ``1 - strength``."""
        if self.strength is None:
            return self.steps
        return min(int(self.steps * self.strength), self.steps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: plain str/int/float/None, ``loras`` as ``[[name, weight], ...]``."""
        data = dataclasses.asdict(self)
        data["loras"] = [[name, weight] for name, weight in self.loras]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageParams:
        """The inverse of :meth:`to_dict`; unknown keys, missing ``prompt`` or wrong types raise ``ValueError``.

        Types are checked, bounds are not: that is :func:`validate_request`'s job against the current settings.
        """
        try:  # through JSON: strict mode there still takes objects for the dataclass and arrays for tuples
            return _PARAMS_ADAPTER.validate_json(json.dumps(dict(data)))
        except TypeError as exc:
            raise ValueError(f"not an ImageParams dict: {exc}") from None
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(value)'}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"not an ImageParams dict: {problems}") from None


_PARAMS_ADAPTER = TypeAdapter(ImageParams)


@dataclass(frozen=True)
class GenerationRequest:
    """One validated job: immutable so it can be shared with the worker thread and journalled as is."""

    params: ImageParams
    requester_id: str
    init_image: bytes | None = field(default=None, repr=False, compare=False)  # PNG/JPEG/WebP bytes for img2img


class RequestError(ValueError):
    """A refused option; ``message`` names the option, the value and what is allowed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------- sizes


def _round_down(value: float, multiple: int) -> int:
    return max(multiple, int(value // multiple) * multiple)


def upscaled_size(width: int, height: int, factor: float, max_pixels: int,
                  multiple: int = UPSCALE_MULTIPLE) -> tuple[int, int]:
    """``width x height`` scaled by ``factor``, shrunk (same aspect) to at most ``max_pixels``, sides rounded down
    to ``multiple``. May be no bigger than the input when the input is already at the cap."""
    factor = min(factor, math.sqrt(max_pixels / (width * height)))
    return _round_down(width * factor, multiple), _round_down(height * factor, multiple)


def fitted_size(width: int, height: int, settings: GenerationSettings) -> tuple[int, int]:
    """An image's size brought within the request bounds (same aspect as far as the bounds allow), multiples of 8:
    the default output size of img2img from that image."""
    scale = min(1.0, math.sqrt(settings.max_pixels / (width * height)), settings.max_size / max(width, height))
    scale = max(scale, settings.min_size / min(width, height))
    return tuple(  # type: ignore[return-value]
        min(settings.max_size, max(settings.min_size, int(side * scale) // 8 * 8)) for side in (width, height)
    )


def min_steps_for(strength: float) -> int:
    """The fewest steps for which img2img at ``strength`` still runs one denoising step."""
    steps = max(1, math.ceil(1 / strength))
    while int(steps * strength) < 1:  # float rounding (e.g. 3 * 0.3 = 0.8999...)
        steps += 1
    return steps


def image_size(data: bytes) -> tuple[int, int]:
    """Width and height of PNG/JPEG/WebP bytes (header only); :class:`RequestError` for anything else."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in INIT_IMAGE_FORMATS:
                raise RequestError(f"the image must be a PNG, JPEG or WebP file (got {image.format}).")
            return image.size
    except RequestError:
        raise
    except Image.DecompressionBombError:
        raise RequestError("the image has too many pixels to be used.") from None
    except (OSError, ValueError, SyntaxError):
        raise RequestError("the image could not be read; send a PNG, JPEG or WebP file.") from None


# --------------------------------------------------------------------------- styles


def _split_template(style: StyleSettings) -> tuple[str, str]:
    before, after = style.prompt.split("{prompt}", 1)
    return before, after


def _unstyle(prompt: str, negative: str, style: StyleSettings) -> tuple[str, str]:
    """The member's words back from an already styled prompt (A1111 reads styles back from prompts the same way),
    so validating stored params again does not apply the template twice."""
    before, after = _split_template(style)
    if (before or after) and prompt.startswith(before) and prompt.endswith(after) \
            and len(prompt) >= len(before) + len(after):
        prompt = prompt[len(before):len(prompt) - len(after)]
    if style.negative and negative.endswith(style.negative):
        negative = negative[: len(negative) - len(style.negative)].rstrip().removesuffix(",").rstrip()
    return prompt, negative


def _apply_style(prompt: str, negative: str, style: StyleSettings) -> tuple[str, str]:
    before, after = _split_template(style)  # no str.format: braces in a member's prompt stay literal
    styled_negative = ", ".join(part for part in (negative, style.negative) if part)
    return f"{before}{prompt}{after}", styled_negative


# --------------------------------------------------------------------------- checks


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if not _is_int(value) or not low <= value <= high:  # type: ignore[operator]
        raise RequestError(f"{name} must be a whole number between {low} and {high} (got {value}).")
    return value  # type: ignore[return-value]


def _check_number(name: str, value: object, low: float, high: float) -> float:
    if not _is_number(value) or not low <= value <= high:  # type: ignore[operator]
        raise RequestError(f"{name} must be a number between {low:g} and {high:g} (got {value}).")
    return float(value)  # type: ignore[arg-type]


def _check_size(name: str, value: object, settings: GenerationSettings) -> int:
    low, high = settings.min_size, settings.max_size
    if not _is_int(value) or value % 8 or not low <= value <= high:  # type: ignore[operator]
        raise RequestError(f"{name} must be a multiple of 8 between {low} and {high} (got {value}).")
    return value  # type: ignore[return-value]


def _check_prompts(prompt: str, negative_prompt: str) -> None:
    if not prompt:
        raise RequestError("prompt must not be empty.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise RequestError(f"prompt must be at most {MAX_PROMPT_CHARS} characters (got {len(prompt)}).")
    if len(negative_prompt) > MAX_PROMPT_CHARS:
        raise RequestError(
            f"negative prompt must be at most {MAX_PROMPT_CHARS} characters (got {len(negative_prompt)})."
        )


def _sizes(settings: GenerationSettings, width: object, height: object, init_image: bytes | None,
           upscale: float | None) -> tuple[int, int]:
    """The output size: given, or derived from the init image (fitted, or upscaled), or the defaults."""
    if upscale is not None:
        if width is None and height is None and init_image is not None:
            source = image_size(init_image)
            width, height = upscaled_size(*source, upscale, settings.max_upscale_pixels)
            if width * height <= source[0] * source[1]:
                raise RequestError(f"this image is already as large as an upscale may be "
                                   f"({settings.max_upscale_pixels} pixels).")
        for name, value in (("width", width), ("height", height)):
            if not _is_int(value) or value % UPSCALE_MULTIPLE or value < settings.min_size:  # type: ignore[operator]
                raise RequestError(f"the upscaled {name} must be a multiple of {UPSCALE_MULTIPLE} of at least "
                                   f"{settings.min_size} (got {value}).")
        if width * height > settings.max_upscale_pixels:  # type: ignore[operator]
            raise RequestError(f"an upscale must be at most {settings.max_upscale_pixels} pixels "
                               f"(got {width}x{height} = {width * height}).")  # type: ignore[operator]
        return width, height  # type: ignore[return-value]
    if width is None and height is None and init_image is not None:
        width, height = fitted_size(*image_size(init_image), settings)
    width = _check_size("width", settings.default_width if width is None else width, settings)
    height = _check_size("height", settings.default_height if height is None else height, settings)
    if width * height > settings.max_pixels:
        raise RequestError(
            f"width x height must be at most {settings.max_pixels} pixels (got {width}x{height} = {width * height})."
        )
    return width, height


def _loras(style_name: str, style: StyleSettings | None,
           loras: Sequence[Sequence[Any]] | None) -> tuple[tuple[str, float], ...]:
    """The style's (adapter name, weight) pairs; ``loras`` given too must say the same (they come from the style)."""
    resolved = tuple((lora.name, float(lora.weight)) for lora in style.loras) if style else ()
    if loras is None:
        return resolved
    try:
        given = tuple((str(name), float(weight)) for name, weight in loras)
    except (TypeError, ValueError):
        raise RequestError(f"loras must be [name, weight] pairs (got {loras}).") from None
    if given != resolved:
        if style is None:
            raise RequestError(f"loras come from a style; choose a style instead (got {list(given)}).")
        raise RequestError(f"loras come from the style; style {style_name} has {list(resolved)}, "
                           f"not {list(given)}.")
    return resolved


def validate_request(
    settings: GenerationSettings,
    *,
    prompt: str,
    negative_prompt: str = "",
    seed: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    width: int | None = None,
    height: int | None = None,
    count: int = 1,
    scheduler: str | None = None,
    model: str | None = None,
    strength: float | None = None,
    upscale: float | None = None,
    style: str | None = None,
    loras: Sequence[Sequence[Any]] | None = None,
    parent_seed: int | None = None,
    requester_id: str = "cli",
    init_image: bytes | None = None,
) -> GenerationRequest:
    """Fill defaults from ``settings`` and check every bound; raises :class:`RequestError` on the first refusal.

    ``init_image`` (PNG/JPEG/WebP bytes) makes it img2img at ``strength`` (default ``settings.default_strength``);
    ``upscale`` makes it an upscale of that image at ``settings.upscale_strength``. ``loras`` may only repeat
    what the style resolves to (so ``params.to_dict()`` validates again).
    """
    style = style or ""
    style_settings: StyleSettings | None = None
    if style:
        style_settings = settings.styles.get(style)
        if style_settings is None:
            choices = ", ".join(settings.styles) or "none are configured"
            raise RequestError(f"style must be one of: {choices} (got {style}).")
    prompt = (prompt or "").strip()
    negative_prompt = (negative_prompt or "").strip()
    if style_settings is not None:
        prompt, negative_prompt = _unstyle(prompt, negative_prompt, style_settings)
    _check_prompts(prompt, negative_prompt)

    sources = settings.model_sources()
    model = model or settings.default_model_name
    if model not in sources:
        raise RequestError(f"model must be one of: {', '.join(sources)} (got {model}).")

    if upscale is not None:
        upscale = _check_number("upscale", upscale, 1.0, MAX_UPSCALE)
        if upscale == 1.0:
            raise RequestError("upscale must be more than 1 (got 1).")
        if init_image is None:
            raise RequestError("upscale needs the image to upscale.")
        if strength is None:
            strength = settings.upscale_strength
    if init_image is not None and strength is None:
        strength = settings.default_strength
    if strength is not None:
        strength = _check_number("strength", strength, MIN_STRENGTH, MAX_STRENGTH)
        if init_image is None:
            raise RequestError("strength needs an image to start from; attach one.")
    width, height = _sizes(settings, width, height, init_image, upscale)

    steps = _check_int("steps", settings.default_steps if steps is None else steps, 1, settings.max_steps)
    if strength is not None and int(steps * strength) < 1:
        raise RequestError(f"steps x strength must leave at least one step (got {steps} x {strength:g}); "
                           f"use at least {min_steps_for(strength)} steps or a higher strength.")
    count = _check_int("count", count, 1, MAX_COUNT)
    guidance = _check_number("guidance", settings.default_guidance if guidance is None else guidance,
                             MIN_GUIDANCE, MAX_GUIDANCE)

    if seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)
    seed = _check_int("seed", seed, 0, MAX_SEED)
    if parent_seed is not None:
        parent_seed = _check_int("parent seed", parent_seed, 0, MAX_SEED)

    scheduler = settings.default_scheduler if scheduler is None else scheduler
    try:  # short names (euler_a) and web-UI labels (Euler a) are both accepted; the short name is kept
        scheduler = resolve_scheduler_name(str(scheduler))
    except UnknownSchedulerError:
        raise RequestError(f"scheduler must be one of {', '.join(SCHEDULER_NAMES)} (got {scheduler}).") from None

    resolved_loras = _loras(style, style_settings, loras)
    if style_settings is not None:
        prompt, negative_prompt = _apply_style(prompt, negative_prompt, style_settings)

    params = ImageParams(
        prompt=prompt, negative_prompt=negative_prompt, seed=seed, steps=steps, guidance=guidance, width=width,
        height=height, count=count, scheduler=scheduler, model=model, strength=strength, upscale=upscale,
        style=style, loras=resolved_loras, parent_seed=parent_seed,
    )
    return GenerationRequest(params=params, requester_id=str(requester_id), init_image=init_image)


def upscale_request(settings: GenerationSettings, parent: ImageParams, index: int, image: bytes, *,
                    requester_id: str) -> GenerationRequest:
    """Upscale image ``index`` of ``parent`` (``image``: its PNG): the same prompt, model, style and seed at
    ``settings.upscale_factor`` (clamped to ``max_upscale_pixels``) by a low-strength img2img pass."""
    seed = parent.seed + index
    strength = settings.upscale_strength
    options = {**parent.to_dict(), "seed": seed, "count": 1, "width": None, "height": None, "strength": strength,
               "upscale": settings.upscale_factor, "parent_seed": seed,
               "steps": max(parent.steps, min_steps_for(strength))}
    return validate_request(settings, **options, requester_id=requester_id, init_image=image)


def variation_request(settings: GenerationSettings, parent: ImageParams, index: int, image: bytes, *, strong: bool,
                      requester_id: str, seed: int | None = None, count: int = 1) -> GenerationRequest:
    """A variation of image ``index`` of ``parent``: img2img from it with a new seed (random unless given) at
    ``vary_strong_strength`` or ``vary_subtle_strength``, at the image's size brought within the request bounds."""
    strength = settings.vary_strong_strength if strong else settings.vary_subtle_strength
    options = {**parent.to_dict(), "seed": seed, "count": count, "width": None, "height": None,
               "strength": strength, "upscale": None, "parent_seed": parent.seed + index,
               "steps": max(parent.steps, min_steps_for(strength))}
    return validate_request(settings, **options, requester_id=requester_id, init_image=image)
