"""Table-driven tests for the member-facing text: timestamps, queue/progress lines, embeds, refusals, PNG fitting."""

from __future__ import annotations

import io
import os
from datetime import UTC, datetime, timedelta, timezone

import discord
import pytest
from PIL import Image, PngImagePlugin

from bot.discord.formatting import (
    EMBED_DESCRIPTION_LIMIT,
    EMBED_FIELD_VALUE_LIMIT,
    EMBED_TITLE_LIMIT,
    EMBED_TOTAL_LIMIT,
    fit_attachment,
    parameters_block,
    progress_bar,
    progress_message,
    queued_message,
    result_embed,
)
from bot.gate.refusals import refusal_message
from bot.text import MESSAGE_CONTENT_LIMIT, discord_timestamp, format_duration, format_size, truncate
from tests.helpers import params

# --- timestamps --------------------------------------------------------------------------------------------

TIMESTAMP_CASES = [
    (datetime(2024, 1, 1, tzinfo=UTC), "R", "<t:1704067200:R>"),
    (datetime(2024, 1, 1), "R", "<t:1704067200:R>"),  # naive = UTC
    (datetime(2024, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))), "F", "<t:1704067200:F>"),
    (datetime(2024, 1, 1, 0, 0, 0, 999999, tzinfo=UTC), "t", "<t:1704067200:t>"),  # floored
    (1704067200.7, "d", "<t:1704067200:d>"),
]


@pytest.mark.parametrize(("dt", "style", "expected"), TIMESTAMP_CASES)
def test_discord_timestamp(dt: datetime | float, style: str, expected: str) -> None:
    assert discord_timestamp(dt, style) == expected


def test_discord_timestamp_matches_discord_py() -> None:
    dt = datetime(2025, 6, 1, 12, 30, tzinfo=UTC)
    assert discord_timestamp(dt, "f") == discord.utils.format_dt(dt, "f")


def test_discord_timestamp_rejects_unknown_style() -> None:
    with pytest.raises(ValueError, match="style"):
        discord_timestamp(datetime.now(UTC), "x")


# --- small helpers -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "limit", "expected"), [
    ("short", 10, "short"),
    ("exactly10!", 10, "exactly10!"),
    ("this is too long", 10, "this is t…"),
    ("cut at a space ok", 9, "cut at a…"),
    ("abc", 1, "a"),
    ("", 0, ""),
])
def test_truncate(text: str, limit: int, expected: str) -> None:
    assert truncate(text, limit) == expected
    assert len(truncate(text, limit)) <= limit


@pytest.mark.parametrize(("seconds", "expected"), [
    (0, "0 s"), (2.5, "2.5 s"), (9.96, "10 s"), (40, "40 s"), (59.4, "59 s"), (90, "2 min"), (600, "10 min"),
    (3600, "1 h"), (3900, "1 h 5 min"), (86400 * 3, "3 days"), (-5, "0 s"),
])
def test_format_duration(seconds: float, expected: str) -> None:
    assert format_duration(seconds) == expected


@pytest.mark.parametrize(("size", "expected"), [
    (8 * 1024 * 1024, "8 MB"), (10 * 1024 * 1024, "10 MB"), (int(7.5 * 1024 * 1024), "7.5 MB"),
    (2048, "2 KB"), (500, "500 B"),
])
def test_format_size(size: int, expected: str) -> None:
    assert format_size(size) == expected


# --- queue and progress --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("position", "estimate", "expected"), [
    (3, 40, "Queued — position 3, about 40 s."),
    (1, 150, "Queued — position 1, about 3 min."),
    (5, None, "Queued — position 5."),
    (0, 12, "Starting now…"),
    (None, None, "Queued."),
])
def test_queued_message(position: int | None, estimate: float | None, expected: str) -> None:
    assert queued_message(position, estimate) == expected


@pytest.mark.parametrize(("step", "total", "bar"), [
    (0, 25, "░" * 20), (25, 25, "█" * 20), (10, 20, "█" * 10 + "░" * 10), (30, 20, "█" * 20), (1, 0, "░" * 20),
])
def test_progress_bar(step: int, total: int, bar: str) -> None:
    assert progress_bar(step, total) == bar


@pytest.mark.parametrize(("step", "total", "position", "expected"), [
    (12, 25, None, "Generating — step 12/25\n`" + "█" * 10 + "░" * 10 + "` 48%"),
    (25, 25, 0, "Generating — step 25/25\n`" + "█" * 20 + "` 100%"),
    (0, 25, 2, "Queued — position 2."),
    (40, 25, None, "Generating — step 25/25\n`" + "█" * 20 + "` 100%"),
])
def test_progress_message(step: int, total: int, position: int | None, expected: str) -> None:
    assert progress_message(step, total, position) == expected


# --- result embed ----------------------------------------------------------------------------------------------

def _embed(**overrides: object) -> discord.Embed:
    image = {"prompt": "a cat in a hat", "negative_prompt": "", "steps": 25, "guidance": 7.5, "width": 512,
             "height": 768, "scheduler": "euler_a", "model": "tiny"}
    kwargs: dict[str, object] = {"job_id": "42", "seeds": [1234], "elapsed_seconds": 12.34, "prompt_truncated": False,
                                 "requester_mention": "<@1>"}
    for key, value in overrides.items():
        (image if key in image else kwargs)[key] = value
    return result_embed(params=params(**image), **kwargs)  # type: ignore[arg-type]


def _fields(embed: discord.Embed) -> dict[str, str]:
    return {str(f.name): str(f.value) for f in embed.fields}


def test_result_embed_shows_img2img_style_and_upscale_only_when_used() -> None:
    fields = _fields(result_embed("1", params(strength=0.35, upscale=2.0, style="watercolour"), [1], 3.0))
    assert (fields["Strength"], fields["Upscale"], fields["Style"]) == ("0.35", "2×", "watercolour")
    assert not {"Strength", "Upscale", "Style"} & set(_fields(_embed()))


def test_result_embed_basic() -> None:
    embed = _embed()
    assert embed.title == "a cat in a hat"
    assert embed.description == "Requested by <@1>"
    assert _fields(embed) == {"Seed": "1234", "Steps": "25", "CFG": "7.5", "Size": "512×768", "Sampler": "Euler a",
                              "Model": "tiny", "Time": "12 s"}
    assert embed.footer.text == "Job 42"
    assert isinstance(embed.to_dict(), dict)


@pytest.mark.parametrize(("seeds", "name", "value"), [
    ([7], "Seed", "7"),
    ([7, 8, 9, 10], "Seeds", "7–10"),
    ([7, 100], "Seeds", "7, 100"),
])
def test_result_embed_seeds(seeds: list[int], name: str, value: str) -> None:
    assert _fields(_embed(seeds=seeds))[name] == value


@pytest.mark.parametrize(("guidance", "shown"), [(7.0, "7"), (7.5, "7.5"), (4.25, "4.25"), (0, "0")])
def test_result_embed_guidance(guidance: float, shown: str) -> None:
    assert _fields(_embed(guidance=guidance))["CFG"] == shown


def test_result_embed_notes_token_truncation_and_negative_prompt() -> None:
    embed = _embed(prompt_truncated=True, negative_prompt="blurry, **bold**")
    assert "77 tokens" in (embed.description or "")
    assert "**Negative prompt:** blurry, \\*\\*bold\\*\\*" in (embed.description or "")


def test_result_embed_long_prompt_goes_in_description() -> None:
    prompt = "word " * 300
    embed = _embed(prompt=prompt)
    assert embed.title is not None and len(embed.title) <= EMBED_TITLE_LIMIT and embed.title.endswith("…")
    assert "**Prompt:** word word" in (embed.description or "")


@pytest.mark.parametrize("size", [EMBED_TITLE_LIMIT, EMBED_DESCRIPTION_LIMIT, 10_000])
def test_result_embed_respects_every_limit(size: int) -> None:
    embed = _embed(prompt="p" * size, negative_prompt="n" * size, model="m" * size, seeds=list(range(0, 2000, 2)),
                   prompt_truncated=True, job_id="j" * 100)
    assert embed.title is not None and len(embed.title) <= EMBED_TITLE_LIMIT
    assert len(embed.description or "") <= EMBED_DESCRIPTION_LIMIT
    assert all(len(str(f.value)) <= EMBED_FIELD_VALUE_LIMIT for f in embed.fields)
    assert len(embed) <= EMBED_TOTAL_LIMIT
    assert "Negative prompt" in (embed.description or "")


def test_result_embed_without_mention_or_extras_has_no_description() -> None:
    assert _embed(requester_mention=None).description is None


@pytest.mark.parametrize(("prompt", "title"), [
    ("**bold** _it_", "\\*\\*bold\\*\\* \\_it\\_"),
    ("two\nlines", "two lines"),
    ("   ", "(empty prompt)"),
])
def test_result_embed_title(prompt: str, title: str) -> None:
    embed = _embed(prompt=prompt, requester_mention=None)
    assert embed.title == title
    assert embed.description is None


# --- parameters block -----------------------------------------------------------------------------------------

PARAMS = "a cat\nNegative prompt: blurry\nSteps: 25, Sampler: Euler a, CFG scale: 7.5, Seed: 1, Size: 512x512"


@pytest.mark.parametrize(("parameters", "expected"), [
    (PARAMS, f"```\n{PARAMS}\n```"),
    ([PARAMS, PARAMS], f"```\n{PARAMS}\n\n{PARAMS}\n```"),
    ("", "```\n(no parameters stored)\n```"),
])
def test_parameters_block(parameters: str | list[str], expected: str) -> None:
    assert parameters_block(parameters) == expected


def test_parameters_block_is_safe_and_short() -> None:
    block = parameters_block("```evil``` " + "x" * 5000)
    assert len(block) <= MESSAGE_CONTENT_LIMIT
    assert block.startswith("```\n") and block.endswith("\n```") and block.count("```") == 2


# --- refusals ----------------------------------------------------------------------------------------------------

RETRY = datetime(2030, 1, 1, tzinfo=UTC)
RETRY_TS = discord_timestamp(RETRY)

REFUSAL_CASES = [
    ("filter", {"category": "blocked term"},
     "Your prompt was refused: it contains a term that is not allowed here. Please rephrase it and try again."),
    ("filtered", {"category": "blocked pattern"},
     "Your prompt was refused: it matches a pattern that is not allowed here. Please rephrase it and try again."),
    ("filter", {"category": None},
     "Your prompt was refused: it breaks this server's content rules. Please rephrase it and try again."),
    ("rate_limit", {"limit": 20, "window_seconds": 3600, "retry_at": RETRY},
     f"You can make 20 images per hour; try again {RETRY_TS}."),
    ("rate_limit", {"limit": 1, "window_seconds": 7200, "retry_at": RETRY},
     f"You can make 1 image every 2 h; try again {RETRY_TS}."),
    ("rate_limited", {"reason": "you have used 20 of your 20 image(s) per hour", "retry_at": RETRY},
     f"You have used 20 of your 20 image(s) per hour; try again {RETRY_TS}."),
    ("rate_limited", {"reason": "you already have 3 job(s) waiting; try again when one finishes", "retry_at": RETRY},
     "You already have 3 job(s) waiting; try again when one finishes."),
    ("rate_limit", {}, "You have reached your image limit; try again later."),
    ("too_many_queued", {"limit": 3},
     "You already have 3 jobs waiting; wait for one to finish (or cancel one) and try again."),
    ("validation", {"message": "steps must be between 1 and 50."},
     "That request can't be run: steps must be between 1 and 50. Adjust it and try again."),
    ("invalid", {"message": "width must be a multiple of 8"},
     "That request can't be run: width must be a multiple of 8. Adjust it and try again."),
    ("queue_full", {}, "The queue is full right now. Please try again in a minute."),
    ("withheld", {"count": 1, "total": 4},
     "1 of 4 images was withheld by the safety checker. Try a different prompt or seed."),
    ("withheld", {"count": 1, "total": 1},
     "The image was withheld by the safety checker. Try a different prompt or seed."),
    ("cancelled", {}, "Your job was cancelled."),
    ("failure", {"job_id": "abc"},
     "Something went wrong while generating (job `abc`). Please try again; if it keeps failing, tell a server admin."),
]


@pytest.mark.parametrize(("kind", "details", "expected"), REFUSAL_CASES)
def test_refusal_message(kind: str, details: dict[str, object], expected: str) -> None:
    assert refusal_message(kind, **details) == expected


def test_refusal_message_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown refusal kind"):
        refusal_message("nope")


def test_refusal_message_is_capped() -> None:
    assert len(refusal_message("validation", message="x" * 5000)) <= MESSAGE_CONTENT_LIMIT


# --- fit_attachment ---------------------------------------------------------------------------------------------

def _noisy_png(side: int, parameters: str) -> bytes:
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=1)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def noisy_png() -> bytes:
    return _noisy_png(512, "a café — ünïcode prompt\nSteps: 25, Seed: 1")


def test_fit_attachment_leaves_small_files_alone(noisy_png: bytes) -> None:
    assert fit_attachment(noisy_png, len(noisy_png)) == (noisy_png, "")


@pytest.mark.parametrize("limit", [400_000, 150_000])
def test_fit_attachment_shrinks_and_keeps_parameters(noisy_png: bytes, limit: int) -> None:
    assert len(noisy_png) > limit
    data, note = fit_attachment(noisy_png, limit)
    assert len(data) <= limit
    with Image.open(io.BytesIO(data)) as image:
        assert image.text["parameters"] == "a café — ünïcode prompt\nSteps: 25, Seed: 1"
        width, height = image.size
    assert width == height < 512
    assert note == f"downscaled to {width}×{height} to fit Discord's {format_size(limit)} limit"


def test_fit_attachment_reencodes_losslessly_when_that_is_enough() -> None:
    image = Image.new("RGB", (256, 256), "red")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "red")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=0)
    png = buffer.getvalue()
    data, note = fit_attachment(png, len(png) // 10)
    assert note == "" and len(data) <= len(png) // 10
    with Image.open(io.BytesIO(data)) as out:
        assert out.size == (256, 256) and out.text["parameters"] == "red"


def test_fit_attachment_gives_up_clearly(noisy_png: bytes) -> None:
    with pytest.raises(ValueError, match="cannot fit"):
        fit_attachment(noisy_png, 100)
