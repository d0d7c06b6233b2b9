"""/imagine and what members do with a result, end to end: the REAL bot in-process (tiny model on CPU, SQLite
file, worker, journal, cogs, delivery) against the local Discord-compatible server over real sockets.

One behaviour per test: the result itself (PNG recipe, embed, buttons, journal), 🔄 by reaction, the Rerun,
Delete and Parameters buttons, a disguised blocked term, the rate limit, and bad options.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC
from pathlib import Path

import pytest
from e2e_support import E2E, PNG_MAGIC, BotFactory, eventually, is_result_for, png_of

from bot.bootstrap import RunningBot
from bot.localdiscord import LocalDiscordServer, Message
from bot.localdiscord.permissions import MANAGE_MESSAGES
from bot.storage import repository
from generation.png import parse_parameters, read_parameters

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

RESULT_BUTTONS = ("rerun", "delete", "params")


def _field(message: Message, name: str) -> str | None:
    embed = message.embeds[0]
    return next((f["value"] for f in embed.get("fields", []) if f["name"] == name), None)


def _seed_in_png(message: Message) -> int:
    png = png_of(message)
    assert png is not None
    text = read_parameters(png)
    assert text is not None, "the PNG has no parameters chunk"
    return int(parse_parameters(text)["Seed"])


async def test_imagine_posts_png_with_recipe_embed_buttons_and_journal(
        discord_server: LocalDiscordServer, bot: RunningBot, e2e: E2E) -> None:
    server = discord_server
    bob = server.members["bob"]
    prompt = "a lighthouse at dusk, oil painting"
    interaction, result = await e2e.imagine(bob, prompt, seed=1234, steps=3, width=64, height=96)

    assert interaction.ack_latency is not None and interaction.ack_latency < 3
    assert not interaction.late_callback

    # The PNG carries its own recipe (web-UI "parameters" text chunk).
    attachment = next(a for a in result.attachments if a.data[:8] == PNG_MAGIC)
    assert attachment.filename.endswith(".png")
    params = parse_parameters(read_parameters(attachment.data) or "")
    assert params["prompt"] == prompt
    assert params["Seed"] == 1234
    assert params["Steps"] == 3
    assert (params["width"], params["height"]) == (64, 96)

    # The embed: prompt, seed and job id; the buttons: Rerun / Delete / Parameters for that job.
    job = await e2e.job_of(bot, result)
    assert result.embeds, "the result has no embed"
    embed = result.embeds[0]
    assert embed["title"] == prompt
    assert _field(result, "Seed") == "1234"
    assert str(job.id) in embed["footer"]["text"]
    assert set(result.custom_ids()) >= {f"imagine:{action}:{job.id}" for action in RESULT_BUTTONS}
    labels = {c.get("label") for row in result.components for c in row.get("components", [])}
    assert {"Rerun", "Delete", "Parameters"} <= labels

    # The journal: done, with the image's file on disk, byte-identical to what was posted.
    job = await e2e.job_with_status(bot, job.id, "done")
    assert (job.params.prompt, job.params.seed, job.params.steps, job.user_id) == (prompt, 1234, 3, bob.id)
    images = await repository.images_for_job(bot.services.db, job.id)
    assert len(images) == 1
    path = Path(bot.services.images_dir) / images[0].path
    assert path.is_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == images[0].sha256
    assert images[0].message_id == result.id

    # The member's own ephemeral response ends with a link to the public result.
    done = await interaction.wait_for_response(timeout=10, predicate=lambda m: m.content.startswith("Done"))
    assert done.ephemeral and str(result.id) in done.content


async def test_rerun_reaction_makes_child_job_with_new_seed(
        discord_server: LocalDiscordServer, bot: RunningBot, e2e: E2E) -> None:
    server = discord_server
    # An admin who wants the 🔄 taken off again gives the bot Manage Messages (the invite does not ask for it;
    # without it the reaction stays: tests/e2e/test_exactly_once_e2e.py).
    server.grant_permission(MANAGE_MESSAGES)
    bob = server.members["bob"]
    _, first = await e2e.imagine(bob, "a red fox in the snow", seed=77)
    parent = await e2e.job_of(bot, first)

    # The bot puts its own 🔄 under each result; a member's 🔄 asks for a rerun.
    await eventually(lambda: server.bot_user.id in server.messages[first.id].reactions.get("🔄", []),
                     "the bot's own 🔄 under the result")
    await server.react(bob, first, "🔄")
    rerun = await server.wait_for_message(lambda m: m.id != first.id and is_result_for(bob)(m), timeout=60,
                                          include_existing=True)

    child = await e2e.job_of(bot, rerun)
    assert child.parent_job_id == parent.id
    assert child.id != parent.id
    assert child.params.seed != parent.params.seed
    same = ("prompt", "steps", "width", "height")
    assert [getattr(child.params, n) for n in same] == [getattr(parent.params, n) for n in same]
    assert _seed_in_png(rerun) == child.params.seed
    assert _field(rerun, "Seed") == str(child.params.seed)
    # The member's 🔄 is taken off again (so they can rerun once more), the "queued" note goes away.
    await eventually(lambda: bob.id not in server.messages[first.id].reactions.get("🔄", []),
                     "the member's 🔄 removed")
    await eventually(lambda: not any("rerun of job" in m.content for m in server.bot_messages()),
                     "the queued note deleted once the result is posted")


async def test_rerun_button_makes_new_image_with_new_seed(
        discord_server: LocalDiscordServer, bot: RunningBot, e2e: E2E) -> None:
    server = discord_server
    carol = server.members["carol"]
    _, first = await e2e.imagine(carol, "a blue teapot", seed=5)
    parent = await e2e.job_of(bot, first)

    press = await server.press_button(carol, first, f"imagine:rerun:{parent.id}")
    await press.wait_for_ack(timeout=3)
    rerun = await server.wait_for_message(lambda m: m.id != first.id and is_result_for(carol)(m), timeout=60,
                                          include_existing=True)
    child = await e2e.job_of(bot, rerun)
    assert child.parent_job_id == parent.id
    assert child.params.seed != parent.params.seed == 5
    assert _seed_in_png(rerun) == child.params.seed
    assert png_of(rerun) != png_of(first)
    assert rerun.id in press.message_ids, "not delivered through the button's interaction"


async def test_delete_button_only_for_requester(
        discord_server: LocalDiscordServer, bot: RunningBot, e2e: E2E) -> None:
    server = discord_server
    bob, carol = server.members["bob"], server.members["carol"]
    _, result = await e2e.imagine(bob, "a small boat")
    job = await e2e.job_of(bot, result)

    refused = await server.press_button(carol, result, f"imagine:delete:{job.id}")
    answer = await refused.wait_for_response(timeout=10)
    assert answer.ephemeral
    assert "Only the member who asked" in answer.content
    assert not server.messages[result.id].deleted

    deleted = await server.press_button(bob, result, f"imagine:delete:{job.id}")
    await deleted.wait_for_ack(timeout=3)
    await eventually(lambda: server.messages[result.id].deleted, "the result deleted")
    await eventually(lambda: _message_cleared(bot, job.id), "the job no longer points at the message")


async def _message_cleared(running: RunningBot, job_id: int) -> bool:
    job = await repository.get_job(running.services.db, job_id)
    return job is not None and job.message_id is None


async def test_parameters_button_answers_ephemerally(
        discord_server: LocalDiscordServer, bot: RunningBot, e2e: E2E) -> None:
    server = discord_server
    bob, carol = server.members["bob"], server.members["carol"]
    _, result = await e2e.imagine(bob, "a castle on a hill", seed=31337, steps=3)
    job = await e2e.job_of(bot, result)

    press = await server.press_button(carol, result, f"imagine:params:{job.id}")  # anyone may look
    answer = await press.wait_for_response(timeout=10)
    assert answer.ephemeral and answer.visible_to == carol.id
    assert "a castle on a hill" in answer.content
    assert "Seed: 31337" in answer.content and "Steps: 3" in answer.content
    assert "Size: 64x64" in answer.content
    assert not server.messages[result.id].deleted and server.messages[result.id].edits == result.edits


@pytest.mark.parametrize(("term", "prompt"), [
    ("forbiddenword", "a f0rb1dd3n-w0rd cat"),
    ("forbidden", "FORBIDDE\u039d castle"),  # a Greek capital Nu: this one was generated and posted once
])
async def test_disguised_blocked_term_refused_without_echo(
        discord_server: LocalDiscordServer, bots: BotFactory, term: str, prompt: str) -> None:
    server = discord_server
    running = await bots.start(bots.settings(content_filter={"blocked_terms": [term]}))
    bob = server.members["bob"]

    interaction = await server.send_command(bob, server.general, "imagine", {"prompt": prompt})
    answer = await interaction.wait_for_response(timeout=10)
    assert answer.ephemeral
    text = answer.content.lower()
    assert "refused" in text and "term" in text  # the category, in words
    for leaked in (term, "f0rb1dd3n", "w0rd", "forbidde"):
        assert leaked not in text, f"the refusal echoes {leaked!r}: {answer.content!r}"
    assert not any(png_of(m) for m in server.bot_messages())

    events = await repository.moderation_events(running.services.db, server.guild.id)
    assert len(events) == 1
    assert events[0].user_id == bob.id and events[0].category == "blocked term"
    assert await repository.jobs_for_user(running.services.db, server.guild.id, bob.id) == []
    assert running.services.worker.queued_count == 0


async def test_rate_limited_member_told_when_others_still_served(
        discord_server: LocalDiscordServer, bots: BotFactory, e2e: E2E) -> None:
    server = discord_server
    running = await bots.start(bots.settings(rate_limits={"images_per_window": 2, "window_seconds": 3600}))
    bob, carol = server.members["bob"], server.members["carol"]
    for i in range(2):
        await e2e.imagine(bob, f"a tree, number {i}")

    over = await server.send_command(bob, server.general, "imagine", {"prompt": "a third tree"})
    answer = await over.wait_for_response(timeout=10)
    assert answer.ephemeral
    match = re.search(r"<t:(\d+):R>", answer.content)
    assert match, f"no relative timestamp in {answer.content!r}"
    assert "2" in answer.content  # names the allowance
    jobs = await repository.jobs_for_user(running.services.db, server.guild.id, bob.id)
    assert len(jobs) == 2
    oldest = jobs[-1].queued_at
    oldest = oldest if oldest.tzinfo is not None else oldest.replace(tzinfo=UTC)  # stored as naive UTC
    assert int(match.group(1)) >= int(oldest.timestamp()) + 3600 - 5  # when the oldest image leaves the window

    _, served = await e2e.imagine(carol, "a tree for carol")  # another member is still served
    assert png_of(served) is not None


async def test_bad_options_refused_then_bot_keeps_serving(
        discord_server: LocalDiscordServer, bot: RunningBot, e2e: E2E) -> None:
    server = discord_server
    bob = server.members["bob"]

    # Within Discord's min/max (so the client sends it) but not a multiple of 8: the bot's validation says why.
    odd = await server.send_command(bob, server.general, "imagine", {"prompt": "a cat", "width": 100})
    answer = await odd.wait_for_response(timeout=10)
    assert answer.ephemeral
    assert "width" in answer.content and "multiple of 8" in answer.content and "100" in answer.content

    # Above the synced maximum, Discord's client would refuse it ...
    with pytest.raises(ValueError):
        await server.send_command(bob, server.general, "imagine", {"prompt": "a cat", "steps": 500})
    # ... and if it arrives anyway (an old client, a forged payload) the bot still refuses it readably.
    forged = await server.send_command(bob, server.general, "imagine", {"prompt": "a cat", "steps": 500},
                                       validate=False)
    answer = await forged.wait_for_response(timeout=10)
    assert answer.ephemeral
    assert "Sorry, something went wrong" not in answer.content
    assert "steps" in answer.content and "30" in answer.content, answer.content

    assert await repository.jobs_for_user(bot.services.db, server.guild.id, bob.id) == []
    _, result = await e2e.imagine(bob, "a good cat", steps=2)
    assert png_of(result) is not None
