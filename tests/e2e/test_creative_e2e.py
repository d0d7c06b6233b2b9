"""The creative loop end to end: the REAL bot in-process (tiny on CPU, SQLite, worker, journal, cogs, delivery)
against the strict local Discord server, as members use it.

Upscale (one image, and U2 of four) and Vary (subtle, strong) from the result buttons; img2img from an uploaded
picture and the refusals of a text file, an oversized file and a decompression bomb; ``aspect:16:9`` and
``--ar 16:9``; a second model, a model that cannot load, a server's default model, and a style with a LoRA the test
makes; img2img from different members batched giving the same pixels as alone; an img2img job surviving a restart.

Whether an upscale or a variation *resembles* its parent depends on tiny's VAE reproducing what it encodes; until
the fitted VAE weights ship (``generation.tiny.TINY_VAE_WEIGHTS``), that one test is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from e2e_support import E2E, BotFactory, eventually, is_result_for, png_of
from PIL import Image
from sqlalchemy import delete, update

import generation.tiny
from bot.bootstrap import RunningBot
from bot.config import Settings, settings_from_mapping
from bot.localdiscord import LocalDiscordServer, Member, Message
from bot.storage import repository
from bot.storage.models import Image as ImageRow
from bot.storage.models import Job
from generation.png import parse_parameters, read_parameters
from tests.helpers import bomb_png, picture_png
from tests.tiny_lora import make_tiny_lora

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

MAX_PIXEL_DIFF = 2  # the same seed alone or batched: float rounding of batched kernels (tests/generation)
MAX_MEAN_DIFF = 0.05


def fitted_vae() -> Path | None:
    """tiny's fitted VAE weights, once the branch that fits them is merged (None before)."""
    path = getattr(generation.tiny, "TINY_VAE_WEIGHTS", None)
    return Path(path) if path is not None and Path(path).is_file() else None


needs_fitted_vae = pytest.mark.skipif(
    fitted_vae() is None, reason="tiny's VAE is random until generation/data/tiny_vae.safetensors ships (branch "
    "tiny-vae): decode(encode(x)) does not resemble x yet, so no img2img result can resemble its parent")


# --- helpers ------------------------------------------------------------------------------------------------


def size_of(message: Message) -> tuple[int, int]:
    png = png_of(message)
    assert png is not None
    with Image.open(io.BytesIO(png)) as image:
        return image.size


def recipe(message: Message) -> dict[str, Any]:
    png = png_of(message)
    assert png is not None
    return parse_parameters(read_parameters(png) or "")


def pixels(png: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        image = image.convert("RGB")
        if size is not None and image.size != size:
            image = image.resize(size, Image.Resampling.LANCZOS)
        return np.asarray(image, dtype=np.int16)


def assert_same_pixels(a: bytes, b: bytes) -> None:
    difference = np.abs(pixels(a) - pixels(b))
    assert difference.max() <= MAX_PIXEL_DIFF and difference.mean() < MAX_MEAN_DIFF, \
        (difference.max(), difference.mean())


def resemblance(image: bytes, reference: bytes) -> float:
    """Pearson correlation of the grey levels, ``image`` brought to ``reference``'s size (an upscale is bigger)."""
    with Image.open(io.BytesIO(reference)) as opened:
        size = opened.size
    a, b = (pixels(png, size).mean(axis=2).ravel() for png in (image, reference))
    return float(np.corrcoef(a, b)[0, 1])


def assert_resembles(child: bytes, parent: bytes, unrelated: bytes) -> float:
    """``child`` correlates with ``parent`` clearly more than an unrelated image of the same size does."""
    own, other = resemblance(child, parent), resemblance(unrelated, parent)
    assert own > other + 0.2 and own > 0.5, f"resemblance to the parent {own:.2f}, unrelated image {other:.2f}"
    return own


async def press_for_result(server: LocalDiscordServer, e2e: E2E, member: Member, message: Message,
                           custom_id: str) -> tuple[Any, Message]:
    """Click a result button as ``member`` and wait for the new public result it makes."""
    before = {m.id for m in server.bot_messages(include_deleted=True)}
    press = await server.press_button(member, message, custom_id)
    await press.wait_for_ack(timeout=3)
    return press, await e2e.wait_for_new_result(member, exclude=before)


async def answer_to(interaction: Any, containing: str = "", timeout: float = 30.0) -> str:  # noqa: ASYNC109
    """The member's ephemeral answer (past the "thinking…" placeholder; with ``containing``, past progress)."""
    answer = await interaction.wait_for_response(
        timeout=timeout, predicate=lambda m: m.ephemeral and m.content and containing in m.content)
    return answer.content


def labels(message: Message) -> list[list[str]]:
    return [[c.get("label") for c in row.get("components", [])] for row in message.components]


class HeldEngine:
    """Holds the first engine call until :meth:`release`, so the test can queue jobs behind it; every call's
    requesters are recorded (which jobs ran together). The real engine does the work."""

    def __init__(self, running: RunningBot, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches: list[list[str]] = []
        self._gate = threading.Event()
        engine = running.services.engine
        real: Callable[..., Any] = engine.generate

        def generate(requests: Any, **kwargs: Any) -> Any:
            self.batches.append([request.requester_id for request in requests])
            if len(self.batches) == 1:
                self._gate.wait(timeout=120)
            return real(requests, **kwargs)

        monkeypatch.setattr(engine, "generate", generate)

    def release(self) -> None:
        self._gate.set()


# --- Upscale and Vary -----------------------------------------------------------------------------------------


async def test_upscale_one_image_and_u2_of_four(discord_server: LocalDiscordServer, bot: RunningBot,
                                                e2e: E2E) -> None:
    server = discord_server
    bob = server.members["bob"]
    _, single = await e2e.imagine(bob, "a lighthouse at dusk", seed=42)
    parent = await e2e.job_of(bot, single)
    assert labels(single) == [["Upscale", "Vary (Subtle)", "Vary (Strong)"], ["Rerun", "Delete", "Parameters"]]

    press, upscaled = await press_for_result(server, e2e, bob, single, f"imagine:upscale:{parent.id}:0")
    child = await e2e.job_of(bot, upscaled)
    assert (child.parent_job_id, child.parent_image_index) == (parent.id, 0)
    assert size_of(single) == (64, 64) and size_of(upscaled) == (128, 128)  # 2x
    made = recipe(upscaled)
    assert (made["prompt"], made["Seed"], made["Parent seed"]) == ("a lighthouse at dusk", 42, 42)
    assert (made["Hires upscale"], made["Denoising strength"]) == (2.0, 0.35)
    assert upscaled.id in press.message_ids, "not delivered through the button's interaction"
    assert f"imagine:upscale:{child.id}:0" in upscaled.custom_ids()  # the upscale has its own buttons
    assert child.init_image_path == (await repository.images_for_job(bot.services.db, parent.id))[0].path

    _, four = await e2e.imagine(bob, "four small boats", seed=100, count=4)
    grid = await e2e.job_of(bot, four)
    assert labels(four) == [["U1", "U2", "U3", "U4"], ["V1", "V2", "V3", "V4"], ["Rerun", "Delete", "Parameters"]]
    _, u2 = await press_for_result(server, e2e, bob, four, f"imagine:upscale:{grid.id}:1")
    second = await e2e.job_of(bot, u2)
    assert (second.parent_job_id, second.parent_image_index, second.params.seed) == (grid.id, 1, 101)
    assert size_of(u2) == (128, 128) and recipe(u2)["Parent seed"] == 101
    assert server.refusals == []


async def test_vary_subtle_and_strong(discord_server: LocalDiscordServer, bot: RunningBot, e2e: E2E) -> None:
    server = discord_server
    carol = server.members["carol"]
    _, result = await e2e.imagine(carol, "a red fox in the snow", seed=7)
    parent = await e2e.job_of(bot, result)

    made = {}
    for action, strength in (("vary_subtle", 0.35), ("vary_strong", 0.75)):
        _, varied = await press_for_result(server, e2e, carol, result, f"imagine:{action}:{parent.id}:0")
        child = await e2e.job_of(bot, varied)
        assert (child.parent_job_id, child.parent_image_index, child.user_id) == (parent.id, 0, carol.id)
        assert child.params.strength == strength and child.params.seed != parent.params.seed
        assert size_of(varied) == (64, 64)
        assert (recipe(varied)["Denoising strength"], recipe(varied)["Parent seed"]) == (strength, 7)
        made[action] = child
    _, four = await e2e.imagine(carol, "three owls", seed=1, count=3)
    grid = await e2e.job_of(bot, four)
    _, v3 = await press_for_result(server, e2e, carol, four, f"imagine:vary_subtle:{grid.id}:2")
    assert (await e2e.job_of(bot, v3)).params.parent_seed == 3  # V3 varies the third image (seed 1 + 2)
    assert server.refusals == []


@needs_fitted_vae
async def test_upscale_and_vary_resemble_their_parent(discord_server: LocalDiscordServer, bots: BotFactory,
                                                      e2e: E2E) -> None:
    """An upscale and a subtle variation stay close to their parent, a strong one less so; another image does not."""
    server = discord_server
    running = await bots.start(bots.settings(generation={"default_steps": 20}))  # 0.05 x 20 = one step
    bob = server.members["bob"]
    # The parent: a structured picture kept almost as is (strength 0.05), so it is a picture, not tiny's noise.
    _, parent_message = await e2e.imagine(bob, "a red disc", image=("start.png", picture_png((128, 128))),
                                          strength=0.05, seed=5)
    parent = await e2e.job_of(running, parent_message)
    _, unrelated = await e2e.imagine(bob, "a red disc", seed=6, width=128, height=128)  # same prompt and size
    parent_png, unrelated_png = png_of(parent_message), png_of(unrelated)
    assert parent_png is not None and unrelated_png is not None

    found: dict[str, float] = {}
    for action in ("upscale", "vary_subtle", "vary_strong"):
        _, child = await press_for_result(server, e2e, bob, parent_message, f"imagine:{action}:{parent.id}:0")
        child_png = png_of(child)
        assert child_png is not None
        found[action] = resemblance(child_png, parent_png)
        if action != "vary_strong":
            assert_resembles(child_png, parent_png, unrelated_png)
    assert found["vary_subtle"] > found["vary_strong"], found


async def test_buttons_of_a_pruned_a_foreign_or_a_forgotten_job_say_why(
        discord_server: LocalDiscordServer, bot: RunningBot, e2e: E2E) -> None:
    server = discord_server
    bob = server.members["bob"]
    db = bot.services.db
    _, result = await e2e.imagine(bob, "a small boat", seed=3)
    job = await e2e.job_of(bot, result)
    [image] = await repository.images_for_job(db, job.id)

    (Path(bot.services.images_dir) / image.path).unlink()  # `db prune` removed the file
    await repository.mark_images_pruned(db, [image.id])
    pruned = await server.press_button(bob, result, f"imagine:upscale:{job.id}:0")
    assert "is no longer stored" in await answer_to(pruned)

    async with db.session(write=True) as session:  # as if the result had been posted in another server
        await session.execute(update(Job).where(Job.id == job.id).values(guild_id=server.guild.id + 1))
    foreign = await server.press_button(bob, result, f"imagine:vary_subtle:{job.id}:0")
    assert await answer_to(foreign) == "That job belongs to another server."

    async with db.session(write=True) as session:  # the job's history deleted
        await session.execute(delete(ImageRow).where(ImageRow.job_id == job.id))
        await session.execute(delete(Job).where(Job.id == job.id))
    forgotten = await server.press_button(bob, result, f"imagine:vary_strong:{job.id}:0")
    assert await answer_to(forgotten) == "I no longer know that job."
    assert [j.id for j in await repository.jobs_for_user(db, server.guild.id, bob.id)] == []
    assert server.refusals == []


# --- pictures in -------------------------------------------------------------------------------------------------


async def test_img2img_from_an_uploaded_png(discord_server: LocalDiscordServer, bot: RunningBot, e2e: E2E) -> None:
    server = discord_server
    bob = server.members["bob"]
    upload = picture_png((96, 80))
    _, result = await e2e.imagine(bob, "a red disc over the sea", image=("start.png", upload), strength=0.6,
                                  seed=9)
    job = await e2e.job_of(bot, result)
    assert size_of(result) == (96, 80)  # the picture's own size, within the bounds
    assert (job.params.strength, job.params.width, job.params.height) == (0.6, 96, 80)
    assert recipe(result)["Denoising strength"] == 0.6
    stored = Path(bot.services.images_dir) / str(job.init_image_path)
    assert job.init_image_path.startswith("inputs/") and stored.is_file()
    assert np.array_equal(pixels(stored.read_bytes()), pixels(upload))  # kept as sent (already in bounds)
    assert server.refusals == []


async def test_uploads_that_cannot_be_used_are_refused_with_a_sentence(
        discord_server: LocalDiscordServer, bots: BotFactory) -> None:
    server = discord_server
    running = await bots.start(bots.settings(input_images={"max_bytes": 64 * 1024}))
    bob = server.members["bob"]
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    oversized = buffer.getvalue()
    assert len(oversized) > 64 * 1024
    cases = [
        (("notes.txt", b"remember to buy milk\n"), "the attached file 'notes.txt' is not an image; attach a PNG, "
                                                   "JPEG or WebP picture"),
        (("big.png", oversized), "more than the 64 KB this bot accepts; attach a smaller picture"),
        (("bomb.png", bomb_png()), "pixels, more than the 16777216 this bot accepts; attach a smaller picture"),
    ]
    for attachment, expected in cases:
        interaction = await server.send_command(bob, server.general, "imagine",
                                                {"prompt": "a fox", "image": attachment})
        await interaction.wait_for_ack(timeout=3)
        text = await answer_to(interaction)
        assert text.startswith("That request can't be run: ") and expected in text, text
        assert text.count("\n") == 0 and "Traceback" not in text
    assert await repository.jobs_for_user(running.services.db, server.guild.id, bob.id) == []
    assert not any(png_of(m) for m in server.bot_messages())
    assert server.refusals == []


async def test_aspect_option_and_ar_flag(discord_server: LocalDiscordServer, bots: BotFactory, e2e: E2E) -> None:
    server = discord_server
    running = await bots.start(bots.settings(generation={"default_width": 256, "default_height": 256,
                                                         "max_size": 384}))
    bob = server.members["bob"]
    _, by_option = await e2e.imagine(bob, "a wide valley", aspect="16:9", seed=1)
    assert size_of(by_option) == (320, 192)
    _, by_flag = await e2e.imagine(bob, "a wide valley --ar 16:9 --no fog --seed 1")
    assert size_of(by_flag) == (320, 192)
    made = recipe(by_flag)
    assert (made["prompt"], made["negative_prompt"], made["Seed"]) == ("a wide valley", "fog", 1)
    assert (await e2e.job_of(running, by_flag)).params.prompt == "a wide valley"

    both = await server.send_command(bob, server.general, "imagine",
                                     {"prompt": "a wide valley", "aspect": "16:9", "width": 256})
    assert "give either an aspect ratio or width/height, not both" in await answer_to(both)
    unknown = await server.send_command(bob, server.general, "imagine", {"prompt": "a valley --chaos 30"})
    assert "--chaos is not understood here" in await answer_to(unknown)
    assert server.refusals == []


# --- models and styles ---------------------------------------------------------------------------------------------


def models_and_styles(bots: BotFactory, lora: Path) -> Settings:
    config = bots.config(generation={
        "models": {"tiny": "tiny", "tiny2": "tiny", "broken": "/nonexistent/model.safetensors"},
        "styles": {"inked": {"prompt": "{prompt}, ink drawing", "loras": [{"path": str(lora), "name": "ink",
                                                                             "weight": 0.8}]},
                   "inked-plain": {"prompt": "{prompt}, ink drawing"}},
    })
    del config["generation"]["model"]  # one model or several, not both
    return settings_from_mapping(config, environ={})


async def test_a_second_model_a_broken_one_a_servers_default_and_a_lora_style(
        discord_server: LocalDiscordServer, bots: BotFactory, e2e: E2E, tmp_path: Path) -> None:
    server = discord_server
    running = await bots.start(models_and_styles(bots, make_tiny_lora(tmp_path / "lora", seed=1)))
    bob, alice = server.members["bob"], server.members["alice"]

    _, second = await e2e.imagine(bob, "a red cat", model="tiny2", seed=3)
    assert (await e2e.job_of(running, second)).params.model == "tiny2"
    assert recipe(second)["Model"] == "tiny2"
    assert "tiny2" in running.services.engine.models.loaded_names()

    broken = await server.send_command(bob, server.general, "imagine", {"prompt": "a red cat", "model": "broken"})
    failure = await answer_to(broken, "could not be loaded", timeout=60)
    assert failure.startswith("The model 'broken' could not be loaded, so this job was not run")
    _, still = await e2e.imagine(bob, "a red cat", seed=3)  # the others keep working
    assert recipe(still)["Model"] == "tiny"

    settings = await server.send_command(alice, server.general, "settings model", {"name": "tiny2"})
    assert "now uses **tiny2**" in await answer_to(settings)
    _, by_default = await e2e.imagine(bob, "a red cat", seed=3)
    assert (await e2e.job_of(running, by_default)).params.model == "tiny2"

    _, styled = await e2e.imagine(bob, "a red cat", style="inked", model="tiny", seed=5)
    job = await e2e.job_of(running, styled)
    assert (job.params.prompt, job.params.loras) == ("a red cat, ink drawing", (("ink", 0.8),))
    assert recipe(styled)["loras"] == [("ink", 0.8)] and recipe(styled)["Style"] == "inked"
    _, plain = await e2e.imagine(bob, "a red cat", style="inked-plain", model="tiny", seed=5)
    styled_png, plain_png = png_of(styled), png_of(plain)
    assert styled_png is not None and plain_png is not None
    assert np.abs(pixels(styled_png) - pixels(plain_png)).mean() > 1  # same prompt and seed: the LoRA did that
    assert server.refusals == []


# --- batching and restarts ---------------------------------------------------------------------------------------


async def test_img2img_from_different_members_batched_gives_the_same_pixels_as_alone(
        discord_server: LocalDiscordServer, bots: BotFactory, e2e: E2E, monkeypatch: pytest.MonkeyPatch) -> None:
    server = discord_server
    running = await bots.start()
    held = HeldEngine(running, monkeypatch)
    alice, bob, carol = server.members["alice"], server.members["bob"], server.members["carol"]
    before = {m.id for m in server.bot_messages(include_deleted=True)}
    await server.send_command(alice, server.general, "imagine", {"prompt": "hold the queue"})
    await eventually(lambda: held.batches, "the first job running")

    asks = {"bob": ("a red disc", picture_png((96, 80), variant=1), 11),
            "carol": ("a blue bar", picture_png((96, 80), variant=2), 22)}
    for name, (prompt, upload, seed) in asks.items():
        await server.send_command(server.members[name], server.general, "imagine",
                                  {"prompt": prompt, "image": ("in.png", upload), "strength": 0.5, "seed": seed})
    await eventually(lambda: running.services.worker.queued_count == 2, "both img2img jobs queued", timeout=30)
    held.release()
    batched = {name: await server.wait_for_message(
        lambda m, member=server.members[name]: m.id not in before and is_result_for(member)(m), timeout=60,
        include_existing=True) for name in asks}
    assert sorted(held.batches[1]) == sorted([str(bob.id), str(carol.id)])  # one pipeline call for both

    for name, (prompt, upload, seed) in asks.items():
        member = server.members[name]
        _, alone = await e2e.imagine(member, prompt, image=("in.png", upload), strength=0.5, seed=seed)
        assert held.batches[-1] == [str(member.id)]
        batched_png, alone_png = png_of(batched[name]), png_of(alone)
        assert batched_png is not None and alone_png is not None
        assert_same_pixels(batched_png, alone_png)
    assert server.refusals == []


async def test_an_img2img_job_survives_a_restart(discord_server: LocalDiscordServer, bots: BotFactory,
                                                 e2e: E2E, monkeypatch: pytest.MonkeyPatch) -> None:
    server = discord_server
    settings = bots.settings()
    first = await bots.start(settings)
    held = HeldEngine(first, monkeypatch)
    alice, bob = server.members["alice"], server.members["bob"]
    await server.send_command(alice, server.general, "imagine", {"prompt": "hold the queue"})
    await eventually(lambda: held.batches, "the first job running")
    await server.send_command(bob, server.general, "imagine",
                              {"prompt": "a red disc", "image": ("in.png", picture_png()), "strength": 0.5})

    async def bobs_job() -> Any:
        jobs = await repository.jobs_for_user(first.services.db, server.guild.id, bob.id)
        return jobs[0] if jobs else None

    job = await eventually(bobs_job, "bob's job journalled")
    handle = first.services.journal.handle_for(job.id)
    assert handle is not None
    stopping = asyncio.create_task(bots.stop(first))
    await eventually(lambda: handle.status == "cancelled", "bob's job dropped by the shutdown", timeout=30)
    held.release()
    await stopping

    before = {m.id for m in server.bot_messages(include_deleted=True)}
    second = await bots.start(settings)  # recovery re-queues bob's job with its stored starting image
    result = await e2e.wait_for_new_result(bob, exclude=before)
    recovered = await e2e.job_with_status(second, job.id, "done")
    assert (await e2e.job_of(second, result)).id == job.id
    assert recovered.init_image_path == job.init_image_path and recipe(result)["Denoising strength"] == 0.5
    assert server.refusals == []
