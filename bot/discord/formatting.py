"""Pure functions that turn bot state into Discord messages, embeds and attachments.

The cogs only glue these to interactions, so everything a member reads (wording, Discord's length limits,
attachment size) is decided and tested here, without a Discord connection.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import discord
from PIL import Image, PngImagePlugin

from bot.clock import as_utc
from bot.storage.records import JobRecord
from bot.text import MESSAGE_CONTENT_LIMIT, format_duration, format_size, truncate
from generation.png import parameters_text as png_parameters_text
from generation.request import ImageParams
from generation.schedulers import SAMPLER_LABELS

# Discord's limits (https://discord.com/developers/docs/resources/message#embed-object-embed-limits).
EMBED_TITLE_LIMIT = 256
EMBED_DESCRIPTION_LIMIT = 4096
EMBED_FIELD_VALUE_LIMIT = 1024
EMBED_FOOTER_LIMIT = 2048
EMBED_TOTAL_LIMIT = 6000  # title + description + field names/values + footer + author, per message
ATTACHMENTS_PER_MESSAGE = 10
REQUEST_UPLOAD_LIMIT = 25 * 1024 * 1024  # all the files of one message together
REQUEST_OVERHEAD = 256 * 1024  # kept free in a request for the JSON payload and the multipart framing
SPOILER_PREFIX = "SPOILER_"  # an attachment whose filename starts with this is blurred until clicked
PROMPT_TOKEN_LIMIT = 77  # CLIP's context length: words beyond it do not reach the model

EMBED_COLOUR = discord.Colour(0x5865F2)


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


def job_marker(job_id: int | str) -> str:
    """The result embed's footer: how a posted result is found again by reading the channel back."""
    return f"Job {job_id}"


def per_file_budget(file_count: int, file_limit: int) -> int:
    """The bytes each of ``file_count`` files may have: each within ``file_limit``, all within one request."""
    return min(file_limit, (REQUEST_UPLOAD_LIMIT - REQUEST_OVERHEAD) // max(1, file_count))


def result_embed(
    job_id: str,
    params: ImageParams,
    seeds: Sequence[int],
    elapsed_seconds: float,
    *,
    model: str | None = None,
    prompt_truncated: bool = False,
    requester_mention: str | None = None,
) -> discord.Embed:
    """The embed posted with finished images; every piece is cut to Discord's limits (6000 in total).

    The title is the prompt's first 256 characters; the full prompt goes in the description only when the
    title had to cut it. Markdown in prompts is escaped so ``**`` or ``_`` in a prompt render literally.
    """
    prompt = params.prompt.strip()
    model = params.model if model is None else model
    shown = discord.utils.escape_markdown(_one_line(prompt))
    title = truncate(shown, EMBED_TITLE_LIMIT) or "(empty prompt)"
    embed = discord.Embed(title=title, colour=EMBED_COLOUR)
    fields = [
        ("Seed" if len(seeds) == 1 else "Seeds", _format_seeds(seeds)),
        ("Steps", str(params.steps)),
        ("CFG", _format_number(params.guidance)),
        ("Size", f"{params.width}×{params.height}"),
        ("Sampler", truncate(sampler_label(params.scheduler), EMBED_FIELD_VALUE_LIMIT) or "—"),
        ("Model", truncate(discord.utils.escape_markdown(model), EMBED_FIELD_VALUE_LIMIT) or "—"),
    ]
    if params.style:
        fields.append(("Style", truncate(discord.utils.escape_markdown(params.style), EMBED_FIELD_VALUE_LIMIT)))
    if params.upscale is not None:
        fields.append(("Upscale", f"{_format_number(params.upscale)}×"))
    if params.strength is not None:
        fields.append(("Strength", _format_number(params.strength)))
    fields.append(("Time", format_duration(elapsed_seconds)))
    for name, value in fields:
        embed.add_field(name=name, value=value, inline=True)
    embed.set_footer(text=truncate(job_marker(job_id), EMBED_FOOTER_LIMIT))

    used = len(embed)  # discord.py sums exactly what Discord counts towards the 6000 limit
    budget = min(EMBED_DESCRIPTION_LIMIT, EMBED_TOTAL_LIMIT - used)
    head: list[str] = []
    if requester_mention:
        head.append(f"Requested by {requester_mention}")
    if prompt_truncated:
        head.append(f"⚠️ The prompt is longer than {PROMPT_TOKEN_LIMIT} tokens; the model ignored the words after that.")
    head_text = "\n".join(head)
    prompt_cut = bool(prompt) and shown != title
    negative = discord.utils.escape_markdown(params.negative_prompt.strip())
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



def sampler_label(scheduler: str) -> str:
    """The web-UI name members know (``Euler a``) for a scheduler's short name (``euler_a``)."""
    return SAMPLER_LABELS.get(scheduler, scheduler)


def parameters_text(job: JobRecord) -> str:
    """The ℹ Parameters block: the web-UI text (as stored in the PNG) for each image's seed."""
    params = job.params
    texts = [png_parameters_text(params, params.seed + i, params.model) for i in range(params.count)]
    return f"Job `{job.id}`\n" + parameters_block(texts, limit=MESSAGE_CONTENT_LIMIT - 20)


def job_embed(job: JobRecord, *, seeds: Sequence[int] | None = None, model: str | None = None,
              elapsed_seconds: float | None = None, prompt_truncated: bool | None = None) -> discord.Embed:
    """The result embed for a journalled job (also used by /job to show one again)."""
    if elapsed_seconds is None:
        elapsed_seconds = ((as_utc(job.finished_at) - as_utc(job.started_at)).total_seconds()
                           if job.finished_at and job.started_at else 0.0)
    params = job.params
    return result_embed(
        str(job.id), params, list(seeds) if seeds is not None else [params.seed + i for i in range(params.count)],
        elapsed_seconds, model=model,
        prompt_truncated=job.prompt_truncated if prompt_truncated is None else prompt_truncated,
        requester_mention=f"<@{job.user_id}>",
    )
