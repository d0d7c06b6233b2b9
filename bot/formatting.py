"""Pure functions that turn bot state into Discord messages, embeds and attachments.

The cogs only glue these to interactions, so everything a member reads (wording, Discord's length limits,
attachment size) is decided and tested here, without a Discord connection.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from datetime import UTC, datetime

import discord
from PIL import Image, PngImagePlugin

__all__ = [
    "ATTACHMENTS_PER_MESSAGE",
    "DEFAULT_ATTACHMENT_LIMIT",
    "EMBED_AUTHOR_LIMIT",
    "EMBED_DESCRIPTION_LIMIT",
    "EMBED_FIELD_COUNT_LIMIT",
    "EMBED_FIELD_NAME_LIMIT",
    "EMBED_FIELD_VALUE_LIMIT",
    "EMBED_FOOTER_LIMIT",
    "EMBED_TITLE_LIMIT",
    "EMBED_TOTAL_LIMIT",
    "EMBEDS_PER_MESSAGE",
    "MESSAGE_CONTENT_LIMIT",
    "PROMPT_TOKEN_LIMIT",
    "REFUSAL_KINDS",
    "SPOILER_PREFIX",
    "TIMESTAMP_STYLES",
    "discord_timestamp",
    "fit_attachment",
    "format_duration",
    "format_size",
    "parameters_block",
    "progress_bar",
    "progress_message",
    "queued_message",
    "refusal_message",
    "result_embed",
    "truncate",
]

# Discord's limits (https://discord.com/developers/docs/resources/message#embed-object-embed-limits).
MESSAGE_CONTENT_LIMIT = 2000
EMBED_TITLE_LIMIT = 256
EMBED_DESCRIPTION_LIMIT = 4096
EMBED_FIELD_NAME_LIMIT = 256
EMBED_FIELD_VALUE_LIMIT = 1024
EMBED_FIELD_COUNT_LIMIT = 25
EMBED_FOOTER_LIMIT = 2048
EMBED_AUTHOR_LIMIT = 256
EMBED_TOTAL_LIMIT = 6000  # title + description + field names/values + footer + author, per message
EMBEDS_PER_MESSAGE = 10
ATTACHMENTS_PER_MESSAGE = 10
DEFAULT_ATTACHMENT_LIMIT = 10 * 1024 * 1024  # unboosted servers; boosts raise it (config: attachment_size_limit)
SPOILER_PREFIX = "SPOILER_"  # an attachment whose filename starts with this is blurred until clicked
TIMESTAMP_STYLES = frozenset("tTdDfFR")
PROMPT_TOKEN_LIMIT = 77  # CLIP's context length: words beyond it do not reach the model

ELLIPSIS = "…"
EMBED_COLOUR = discord.Colour(0x5865F2)


def truncate(text: str, limit: int, suffix: str = ELLIPSIS) -> str:
    """Cut ``text`` to at most ``limit`` characters, marking the cut with ``suffix``."""
    if limit < 0:
        raise ValueError("limit must be >= 0")
    if len(text) <= limit:
        return text
    if limit <= len(suffix):
        return text[:limit]
    return text[: limit - len(suffix)].rstrip() + suffix


def discord_timestamp(dt: datetime | float, style: str = "R") -> str:
    """``<t:unix:style>``, which every member's client renders in their own time zone and language.

    Naive datetimes are taken as UTC (the database and the rate limiter store UTC), not as local time.
    """
    if style not in TIMESTAMP_STYLES:
        raise ValueError(f"unknown timestamp style {style!r}; expected one of {''.join(sorted(TIMESTAMP_STYLES))}")
    if isinstance(dt, datetime):
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        unix = dt.timestamp()
    else:
        unix = float(dt)
    return f"<t:{math.floor(unix)}:{style}>"


def format_duration(seconds: float) -> str:
    """Short human duration: ``40 s``, ``3 min``, ``1 h 5 min``, ``2 days``."""
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        return f"{seconds:.1f} s".replace(".0 s", " s")
    if seconds < 60:
        return f"{round(seconds)} s"
    minutes = math.floor(seconds / 60 + 0.5)  # half up: 150 s is "3 min", not banker's "2 min"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h" + (f" {minutes} min" if minutes else "")
    days = math.floor(hours / 24 + 0.5)
    return f"{days} days"


def format_size(num_bytes: int) -> str:
    """Binary sizes the way Discord names its limits: 8 MiB is "8 MB", 10 MiB is "10 MB"."""
    for unit, scale in (("MB", 1024 * 1024), ("KB", 1024)):
        if num_bytes >= scale:
            value = num_bytes / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{num_bytes} B"


def queued_message(position: int | None, estimate_seconds: float | None = None) -> str:
    """What a member sees while waiting; ``position`` follows the worker (0 = running now, 1 = next)."""
    if position is not None and position <= 0:
        return "Starting now…"
    text = "Queued" if position is None else f"Queued — position {position}"
    if estimate_seconds is not None and estimate_seconds >= 0:
        text += f", about {format_duration(estimate_seconds)}"
    return text + "."


def progress_bar(step: int, total: int, width: int = 20) -> str:
    """A fixed-width text bar (``█████░░░░░``) that looks the same in every client font."""
    fraction = 0.0 if total <= 0 else min(max(step / total, 0.0), 1.0)
    filled = round(fraction * width)
    return "█" * filled + "░" * (width - filled)


def progress_message(step: int, total: int, position: int | None = None) -> str:
    """``Generating — step 12/25`` with a bar and percentage; ``position`` > 0 means the job still waits."""
    if position is not None and position > 0:
        return queued_message(position)
    total = max(int(total), 0)
    step = min(max(int(step), 0), total)
    percent = 0 if total == 0 else math.floor(100 * step / total)
    return f"Generating — step {step}/{total}\n`{progress_bar(step, total)}` {percent}%"


def _format_number(value: float) -> str:
    return f"{value:g}" if float(value).is_integer() else f"{value:.2f}".rstrip("0").rstrip(".")


def _format_seeds(seeds: Sequence[int]) -> str:
    if not seeds:
        return "—"
    if len(seeds) > 1 and all(b - a == 1 for a, b in zip(seeds, seeds[1:], strict=False)):
        return f"{seeds[0]}–{seeds[-1]}"
    return truncate(", ".join(str(seed) for seed in seeds), EMBED_FIELD_VALUE_LIMIT)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def result_embed(
    job_id: str,
    prompt: str,
    negative_prompt: str,
    seeds: Sequence[int],
    steps: int,
    guidance: float,
    width: int,
    height: int,
    scheduler_label: str,
    model: str,
    elapsed_seconds: float,
    prompt_truncated: bool = False,
    requester_mention: str | None = None,
) -> discord.Embed:
    """The embed posted with finished images; every piece is cut to Discord's limits (6000 in total).

    The title is the prompt's first 256 characters; the full prompt goes in the description only when the
    title had to cut it. Markdown in prompts is escaped so ``**`` or ``_`` in a prompt render literally.
    """
    prompt = prompt.strip()
    shown = discord.utils.escape_markdown(_one_line(prompt))
    title = truncate(shown, EMBED_TITLE_LIMIT) or "(empty prompt)"
    embed = discord.Embed(title=title, colour=EMBED_COLOUR)
    fields = [
        ("Seed" if len(seeds) == 1 else "Seeds", _format_seeds(seeds)),
        ("Steps", str(steps)),
        ("CFG", _format_number(guidance)),
        ("Size", f"{width}×{height}"),
        ("Sampler", truncate(scheduler_label, EMBED_FIELD_VALUE_LIMIT) or "—"),
        ("Model", truncate(discord.utils.escape_markdown(model), EMBED_FIELD_VALUE_LIMIT) or "—"),
        ("Time", format_duration(elapsed_seconds)),
    ]
    for name, value in fields:
        embed.add_field(name=name, value=value, inline=True)
    embed.set_footer(text=truncate(f"Job {job_id}", EMBED_FOOTER_LIMIT))

    used = len(embed)  # discord.py sums exactly what Discord counts towards the 6000 limit
    budget = min(EMBED_DESCRIPTION_LIMIT, EMBED_TOTAL_LIMIT - used)
    head: list[str] = []
    if requester_mention:
        head.append(f"Requested by {requester_mention}")
    if prompt_truncated:
        head.append(f"⚠️ The prompt is longer than {PROMPT_TOKEN_LIMIT} tokens; the model ignored the words after that.")
    head_text = "\n".join(head)
    prompt_cut = bool(prompt) and shown != title
    negative = discord.utils.escape_markdown(negative_prompt.strip())
    prompt_label, negative_label = "**Prompt:** ", "**Negative prompt:** "
    # What is left for the two texts once the head, separators and labels are counted.
    remaining = budget - len(head_text) - 2 - (len(prompt_label) if prompt_cut else 0)
    remaining -= (len(negative_label) + 1) if negative else 0
    remaining = max(remaining, 0)
    neg_share = min(len(negative), remaining // 3) if prompt_cut else remaining  # negative gets at most a third
    pos_share = remaining - neg_share
    body = []
    if prompt_cut and pos_share > 0:
        body.append(prompt_label + truncate(discord.utils.escape_markdown(prompt), pos_share))
    if negative and neg_share > 0:
        body.append(negative_label + truncate(negative, neg_share))
    description = "\n\n".join(part for part in (head_text, "\n".join(body)) if part)
    if description:
        embed.description = truncate(description, budget)
    return embed


def parameters_block(parameters: str | Sequence[str], *, limit: int = MESSAGE_CONTENT_LIMIT) -> str:
    """The ℹ Parameters reply: the web-UI parameters text in a code block that stays within ``limit``.

    Several images' texts (one per seed) are separated by a blank line. Backtick fences inside the text
    are defused so a prompt cannot close the block early.
    """
    text = parameters if isinstance(parameters, str) else "\n\n".join(parameters)
    text = text.strip().replace("```", "`\u200b`\u200b`") or "(no parameters stored)"
    fence_open, fence_close = "```\n", "\n```"
    return fence_open + truncate(text, limit - len(fence_open) - len(fence_close)) + fence_close


def _encode_png(image: Image.Image, text: dict[str, str]) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)  # falls back to iTXt for non-Latin-1 prompts
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, optimize=True, compress_level=9)
    return buffer.getvalue()


def fit_attachment(png: bytes, limit_bytes: int, *, min_side: int = 64) -> tuple[bytes, str]:
    """Make a PNG fit Discord's upload limit, keeping its text chunks (the ``parameters`` above all).

    First re-encode losslessly with maximum compression; if still too big, downscale (an estimate from the
    size ratio, then 10% steps) until it fits. Returns the bytes and a note for the member ('' when the
    pixels are unchanged). Raises ValueError when even ``min_side`` pixels would not fit.
    """
    if len(png) <= limit_bytes:
        return png, ""
    with Image.open(io.BytesIO(png)) as opened:
        opened.load()
        text = dict(getattr(opened, "text", {}) or {})
        image = opened.copy()
    data = _encode_png(image, text)
    if len(data) <= limit_bytes:
        return data, ""
    width, height = image.size
    # PNG size grows roughly with the pixel count, so the first guess is the square root of the ratio.
    scale = min(math.sqrt(limit_bytes / len(data)) * 0.95, 0.9)
    while True:
        new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if min(new_size) < min(min_side, width, height):
            raise ValueError(
                f"cannot fit a {width}×{height} PNG of {format_size(len(png))} under {format_size(limit_bytes)}"
            )
        data = _encode_png(image.resize(new_size, Image.Resampling.LANCZOS), text)
        if len(data) <= limit_bytes:
            return data, f"downscaled to {new_size[0]}×{new_size[1]} to fit Discord's {format_size(limit_bytes)} limit"
        scale *= 0.9


REFUSAL_KINDS = frozenset(
    {"filter", "rate_limit", "too_many_queued", "validation", "queue_full", "withheld", "cancelled", "failure"}
)
# The names bot/submission.py uses for its Refusal kinds.
_KIND_ALIASES = {"filtered": "filter", "rate_limited": "rate_limit", "invalid": "validation"}

_FILTER_REASONS = {
    "blocked term": "it contains a term that is not allowed here",
    "blocked pattern": "it matches a pattern that is not allowed here",
}


def _per_window(window_seconds: int) -> str:
    named = {60: "per minute", 3600: "per hour", 86400: "per day", 604800: "per week"}
    if window_seconds in named:
        return named[window_seconds]
    return f"every {format_duration(window_seconds)}"


def refusal_message(kind: str, **details: object) -> str:
    """A short, friendly reply saying why a request was not run and what the member can do.

    Kinds and their details (``filtered``, ``rate_limited`` and ``invalid`` are accepted as aliases):

    - ``filter``: ``category`` (a :class:`FilterVerdict` category; the term itself is never shown)
    - ``rate_limit``: ``limit`` and ``window_seconds`` (or ``reason``), ``retry_at`` (datetime)
    - ``too_many_queued``: ``limit`` (jobs a member may have waiting)
    - ``validation``: ``message`` (``RequestError.message``)
    - ``queue_full``: optional ``message`` (``QueueFullError.message``)
    - ``withheld``: ``count`` and ``total`` images held back by the safety checker
    - ``cancelled``: no details
    - ``failure``: optional ``job_id``
    """
    kind = _KIND_ALIASES.get(kind, kind)
    if kind not in REFUSAL_KINDS:
        raise ValueError(f"unknown refusal kind {kind!r}; expected one of {', '.join(sorted(REFUSAL_KINDS))}")
    if kind == "filter":
        reason = _FILTER_REASONS.get(str(details.get("category")), "it breaks this server's content rules")
        text = f"Your prompt was refused: {reason}. Please rephrase it and try again."
    elif kind == "rate_limit":
        retry_at = details.get("retry_at")
        when = f"try again {discord_timestamp(retry_at)}" if isinstance(retry_at, datetime) else "try again later"
        limit, window = details.get("limit"), details.get("window_seconds")
        if isinstance(limit, int) and isinstance(window, int):
            noun = "image" if limit == 1 else "images"
            text = f"You can make {limit} {noun} {_per_window(window)}; {when}."
        elif details.get("reason"):
            reason = str(details["reason"]).strip().rstrip(".")
            reason = reason[:1].upper() + reason[1:]
            # RateLimited reasons for queued jobs already say when to retry.
            text = f"{reason}." if "try again" in reason else f"{reason}; {when}."
        else:
            text = f"You have reached your image limit; {when}."
    elif kind == "too_many_queued":
        limit = details.get("limit")
        if isinstance(limit, int):
            noun = "job" if limit == 1 else "jobs"
            text = f"You already have {limit} {noun} waiting; wait for one to finish (or cancel one) and try again."
        else:
            text = "You already have jobs waiting; wait for one to finish (or cancel one) and try again."
    elif kind == "validation":
        message = str(details.get("message") or "some of the options are out of range").rstrip(".")
        text = f"That request can't be run: {message}. Adjust it and try again."
    elif kind == "queue_full":
        message = str(details.get("message") or "The queue is full right now").rstrip(".")
        # QueueFullError's own message may already say when to retry: do not say it twice.
        text = f"{message}." if "try again" in message.lower() else f"{message}. Please try again in a minute."
    elif kind == "withheld":
        count, total = details.get("count"), details.get("total")
        if isinstance(count, int) and isinstance(total, int) and total > 1:
            verb = "was" if count == 1 else "were"
            text = (f"{count} of {total} images {verb} withheld by the safety checker. "
                    "Try a different prompt or seed.")
        else:
            text = "The image was withheld by the safety checker. Try a different prompt or seed."
    elif kind == "cancelled":
        text = "Your job was cancelled."
    else:
        job_id = details.get("job_id")
        ref = f" (job `{job_id}`)" if job_id else ""
        text = (f"Something went wrong while generating{ref}. Please try again; "
                "if it keeps failing, tell a server admin.")
    return truncate(text, MESSAGE_CONTENT_LIMIT)
