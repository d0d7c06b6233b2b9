"""What a member asked for, checked once at the edge so the worker and the engine can trust every field.

:func:`validate_request` is the only way the bot and the CLI build a :class:`GenerationRequest`: it fills the
configured defaults, draws a seed when none was given (so the seed is recorded and the image reproducible) and
refuses out-of-range values with a sentence a Discord member can read.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

from generation.schedulers import SCHEDULER_NAMES, UnknownSchedulerError, resolve_scheduler_name
from generation.settings import GenerationSettings

MAX_PROMPT_CHARS = 1000
MAX_COUNT = 4
MIN_GUIDANCE = 0.0
MAX_GUIDANCE = 30.0
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class GenerationRequest:
    """One validated job: immutable so it can be shared with the worker thread and journalled as is."""

    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    count: int
    scheduler: str
    requester_id: str
    model: str = ""


class RequestError(ValueError):
    """A refused option; ``message`` names the option, the value and what is allowed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if not _is_int(value) or not low <= value <= high:  # type: ignore[operator]
        raise RequestError(f"{name} must be a whole number between {low} and {high} (got {value}).")
    return value  # type: ignore[return-value]


def _check_size(name: str, value: object, settings: GenerationSettings) -> int:
    low, high = settings.min_size, settings.max_size
    if not _is_int(value) or value % 8 or not low <= value <= high:  # type: ignore[operator]
        raise RequestError(f"{name} must be a multiple of 8 between {low} and {high} (got {value}).")
    return value  # type: ignore[return-value]


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
    requester_id: str = "cli",
) -> GenerationRequest:
    """Fill defaults from ``settings`` and check every bound; raises :class:`RequestError` on the first refusal."""
    prompt = (prompt or "").strip()
    if not prompt:
        raise RequestError("prompt must not be empty.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise RequestError(f"prompt must be at most {MAX_PROMPT_CHARS} characters (got {len(prompt)}).")
    negative_prompt = (negative_prompt or "").strip()
    if len(negative_prompt) > MAX_PROMPT_CHARS:
        raise RequestError(
            f"negative prompt must be at most {MAX_PROMPT_CHARS} characters (got {len(negative_prompt)})."
        )

    width = _check_size("width", settings.default_width if width is None else width, settings)
    height = _check_size("height", settings.default_height if height is None else height, settings)
    if width * height > settings.max_pixels:
        raise RequestError(
            f"width x height must be at most {settings.max_pixels} pixels (got {width}x{height} = {width * height})."
        )

    steps = _check_int("steps", settings.default_steps if steps is None else steps, 1, settings.max_steps)
    count = _check_int("count", count, 1, MAX_COUNT)

    guidance = settings.default_guidance if guidance is None else guidance
    if (
        isinstance(guidance, bool)
        or not isinstance(guidance, int | float)
        or not math.isfinite(guidance)
        or not MIN_GUIDANCE <= guidance <= MAX_GUIDANCE
    ):
        raise RequestError(f"guidance must be a number between {MIN_GUIDANCE:g} and {MAX_GUIDANCE:g} (got {guidance}).")

    if seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)
    seed = _check_int("seed", seed, 0, MAX_SEED)

    scheduler = settings.default_scheduler if scheduler is None else scheduler
    try:  # short names (euler_a) and web-UI labels (Euler a) are both accepted; the short name is kept
        scheduler = resolve_scheduler_name(str(scheduler))
    except UnknownSchedulerError:
        raise RequestError(f"scheduler must be one of {', '.join(SCHEDULER_NAMES)} (got {scheduler}).") from None

    return GenerationRequest(
        prompt=prompt,
        negative_prompt=negative_prompt,
        seed=seed,
        steps=steps,
        guidance=float(guidance),
        width=width,
        height=height,
        count=count,
        scheduler=scheduler,
        requester_id=str(requester_id),
    )
