"""The cogs' flows, driven through the local Discord-compatible server with the real bot (tiny model, CPU).

One bot for the whole module (loading the model and migrating take a few seconds); tests that change guild
settings restore them. The full end-to-end suite lives in tests/e2e; this checks each cog's contract.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.bootstrap import RunningBot, start_bot
from bot.discord import delivery as delivery_module
from bot.localdiscord import LocalDiscordServer
from bot.storage import repository
from tests.helpers import local_bot_settings

pytestmark = [pytest.mark.timeout(240), pytest.mark.asyncio(loop_scope="module")]

PNG = b"\x89PNG\r\n\x1a\n"


class World:
    def __init__(self, server: LocalDiscordServer, running: RunningBot) -> None:
        self.server, self.running = server, running
        self.db = running.services.db

    def member(self, name: str) -> Any:
        return self.server.members[name]

    async def imagine(self, who: str, options: dict[str, Any], channel: Any = None) -> tuple[Any, Any]:
        """Run /imagine; return the interaction and its public result message."""
        interaction = await self.server.send_command(self.member(who), channel or self.server.general, "imagine",
                                                     options)
        await interaction.wait_for_ack(timeout=3)
        result = await interaction.wait_for_response(timeout=60, predicate=is_result)
        await interaction.wait_for_response(timeout=30, predicate=lambda m: m.ephemeral and "Done" in m.content)
        return interaction, result

    async def ephemeral_answer(self, interaction: Any) -> Any:
        return await interaction.wait_for_response(timeout=20, predicate=lambda m: m.ephemeral)


def is_result(message: Any) -> bool:
    return not message.ephemeral and any(a.data[:8] == PNG for a in message.attachments)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp: Path = tmp_path_factory.mktemp("flows")
    server = LocalDiscordServer(token="flows-token-0123456789abcdef")
    await server.start()
    settings = local_bot_settings(
        server, tmp, discord={"progress_edit_seconds": 0.0}, generation={"default_steps": 3, "max_steps": 50},
        rate_limits={"images_per_window": 1000, "max_queued_per_user": 10},
        content_filter={"blocked_terms": ["forbidden word"]})
    running = await start_bot(settings)
    try:
        yield World(server, running)
    finally:
        await running.close()
        await server.close()


async def test_imagine_acks_fast_shows_progress_and_posts_publicly(world: World) -> None:
    interaction, result = await world.imagine("bob", {"prompt": "a red cube", "seed": 11, "count": 2})
    assert interaction.ack_latency < 3
    assert [a.filename for a in result.attachments] == [f"imagine-{_job_id(result)}-0.png",
                                                        f"imagine-{_job_id(result)}-1.png"]
    assert f"<@{world.member('bob').id}>" in result.content
    fields = {f["name"]: f["value"] for f in result.embeds[0]["fields"]}
    assert fields["Seeds"] == "11–12" and fields["Steps"] == "3" and fields["Size"] == "64×64"
    edits = [c.json.get("content", "") for c in world.server.calls("PATCH", "/webhooks/*/*/messages/@original")
             if isinstance(c.json, dict) and c.path.split("/")[3] == interaction.payload["token"]]
    assert any(e.startswith(("Queued", "Starting")) for e in edits)
    assert any(e.startswith("Generating — step") for e in edits)
    job = await repository.get_job(world.db, _job_id(result))
    assert job.message_id == result.id and job.status == "done"
    assert all(i.message_id == result.id for i in await repository.images_for_job(world.db, job.id))
    assert "🔄" in result.reactions  # the bot offers the rerun reaction


async def test_ack_comes_first_even_when_the_database_is_slow(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.gate import submission

    real = submission.repository.get_guild_settings

    async def slow_guild_settings(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(4)  # longer than Discord's 3 s acknowledgement window
        return await real(*args, **kwargs)

    monkeypatch.setattr(submission.repository, "get_guild_settings", slow_guild_settings)
    interaction = await world.server.send_command(world.member("bob"), world.server.general, "imagine",
                                                  {"prompt": "patience"})
    await interaction.wait_for_ack(timeout=3)
    assert interaction.ack_latency < 1.0
    await interaction.wait_for_response(timeout=30, predicate=lambda m: m.ephemeral and "Done" in m.content)


def _job_id(message: Any) -> int:
    return int(message.custom_ids()[0].rsplit(":", 1)[1])


async def test_buttons_parameters_rerun_and_delete(world: World) -> None:
    _, result = await world.imagine("bob", {"prompt": "a blue sphere", "seed": 5})
    job_id = _job_id(result)

    params = await world.server.press_button(world.member("carol"), result, f"imagine:params:{job_id}")
    shown = await world.ephemeral_answer(params)
    assert "Seed: 5" in shown.content and "a blue sphere" in shown.content

    rerun = await world.server.press_button(world.member("carol"), result, f"imagine:rerun:{job_id}")
    await rerun.wait_for_ack(timeout=3)
    second = await rerun.wait_for_response(timeout=60, predicate=is_result)
    child = await repository.get_job(world.db, _job_id(second))
    assert child.parent_job_id == job_id and child.user_id == world.member("carol").id
    assert child.params.prompt == "a blue sphere" and child.params.seed != 5

    denied = await world.server.press_button(world.member("carol"), result, f"imagine:delete:{job_id}")
    assert "Only the member" in (await world.ephemeral_answer(denied)).content
    assert not world.server.messages[result.id].deleted
    allowed = await world.server.press_button(world.member("alice"), result, f"imagine:delete:{job_id}")
    await allowed.wait_for_ack(timeout=3)
    await world.server.wait_until(lambda: world.server.messages[result.id].deleted, 10, "deletion")


async def test_reaction_rerun_is_a_channel_message_with_mention(world: World) -> None:
    _, result = await world.imagine("bob", {"prompt": "a green pyramid", "seed": 9})
    parent = _job_id(result)
    carol = world.member("carol")
    await world.server.react(carol, result, "🔄")
    rerun = await world.server.wait_for_message(
        lambda m: is_result(m) and m.interaction_id is None and f"<@{carol.id}>" in m.content, timeout=60)
    child = await repository.get_job(world.db, _job_id(rerun))
    assert child.parent_job_id == parent and child.interaction_token is None and child.params.seed != 9
    # The short "queued" note was removed once the result mentioned the member.
    await world.server.wait_until(
        lambda: not [m for m in world.server.bot_messages() if "rerun of job" in m.content], 10, "note removal")


async def test_reaction_refusal_is_short_lived(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.discord.cogs import reactions

    monkeypatch.setattr(reactions, "REFUSAL_DELETE_AFTER", 0.5)
    _, result = await world.imagine("bob", {"prompt": "an orange cone"})
    await repository.add_blocked_terms(world.db, world.server.guild.id, ["orange"])
    try:
        carol = world.member("carol")
        await world.server.react(carol, result, "🔄")
        refusal = await world.server.wait_for_message(
            lambda m: f"<@{carol.id}>" in m.content and "refused" in m.content, timeout=20)
        assert "orange" not in refusal.content
        await world.server.wait_until(lambda: world.server.messages[refusal.id].deleted, 10, "refusal removal")
    finally:
        await repository.remove_blocked_terms(world.db, world.server.guild.id, ["orange"])


async def test_filter_refusal_names_category_not_term(world: World) -> None:
    interaction = await world.server.send_command(world.member("bob"), world.server.general, "imagine",
                                                  {"prompt": "a F0RBIDDEN word"})
    answer = await world.ephemeral_answer(interaction)
    assert "refused" in answer.content and "forbidden" not in answer.content.lower()
    [event, *_] = await repository.moderation_events(world.db, world.server.guild.id)
    assert event.user_id == world.member("bob").id


async def test_admin_commands_need_manage_server(world: World) -> None:
    denied = await world.server.send_command(world.member("bob"), world.server.general, "settings blocked add",
                                             {"term": "purple"})
    assert "Manage Server" in (await world.ephemeral_answer(denied)).content
    added = await world.server.send_command(world.member("alice"), world.server.general, "settings blocked add",
                                            {"term": "purple"})
    assert "Added" in (await world.ephemeral_answer(added)).content
    try:
        refused = await world.server.send_command(world.member("bob"), world.server.general, "imagine",
                                                  {"prompt": "a purple cat"})
        assert "refused" in (await world.ephemeral_answer(refused)).content
    finally:
        await repository.remove_blocked_terms(world.db, world.server.guild.id, ["purple"])
    stats = await world.server.send_command(world.member("alice"), world.server.general, "stats", {})
    assert "Images:" in (await world.ephemeral_answer(stats)).content


async def test_server_switches_the_shipped_content_rules(world: World) -> None:
    alice, bob, general = world.member("alice"), world.member("bob"), world.server.general
    try:
        refused = await world.server.send_command(bob, general, "imagine", {"prompt": "a sexy ch1ld"})
        assert "refused" in (await world.ephemeral_answer(refused)).content
        off = await world.server.send_command(alice, general, "settings rules", {"apply": "off"})
        assert "**off**" in (await world.ephemeral_answer(off)).content
        shown = await world.server.send_command(alice, general, "settings show", {})
        assert "Shipped content rules: **off**" in (await world.ephemeral_answer(shown)).content
        allowed = await world.server.send_command(bob, general, "imagine", {"prompt": "a sexy ch1ld"})
        assert "refused" not in (await world.ephemeral_answer(allowed)).content
    finally:
        back = await world.server.send_command(alice, general, "settings rules", {"apply": "default"})
        assert "the bot's default" in (await world.ephemeral_answer(back)).content


async def test_history_job_queue_cancel(world: World) -> None:
    await world.imagine("bob", {"prompt": "a green cone", "seed": 12})  # its own job: no other test needed first
    history = await world.server.send_command(world.member("bob"), world.server.general, "history", {})
    text = (await world.ephemeral_answer(history)).content
    assert "a green cone" in text
    job_id = int(text.split("`")[1])
    shown = await world.server.send_command(world.member("bob"), world.server.general, "job", {"job_id": job_id})
    message = await world.ephemeral_answer(shown)
    assert "Status: **" in message.content and message.embeds
    queue = await world.server.send_command(world.member("bob"), world.server.general, "queue", {})
    assert "Jobs waiting" in (await world.ephemeral_answer(queue)).content

    # Cancel: pause the worker thread's progress by queueing a big job, then cancel the latest.
    slow = await world.server.send_command(world.member("carol"), world.server.general, "imagine",
                                           {"prompt": "slow", "steps": 40, "width": 256, "height": 256, "count": 4})
    await slow.wait_for_response(timeout=20, predicate=lambda m: m.ephemeral and m.content.startswith(
        ("Queued", "Starting", "Generating")))
    cancel = await world.server.send_command(world.member("carol"), world.server.general, "cancel", {})
    assert "cancelled" in (await world.ephemeral_answer(cancel)).content
    await world.running.services.journal.wait_idle()
    [latest, *_] = await repository.jobs_for_user(world.db, world.server.guild.id, world.member("carol").id)
    assert latest.status == "cancelled"
    # The member's own ephemeral response says so.
    await slow.wait_for_response(timeout=20, predicate=lambda m: m.ephemeral and "cancelled" in m.content)


async def test_expired_token_falls_back_to_channel_message(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery_module, "TOKEN_USABLE_FOR", timedelta(0))
    interaction = await world.server.send_command(world.member("bob"), world.server.art, "imagine",
                                                  {"prompt": "late cube"})
    bob = world.member("bob")
    result = await world.server.wait_for_message(
        lambda m: is_result(m) and m.interaction_id is None and m.channel_id == world.server.art.id, timeout=60)
    assert f"<@{bob.id}>" in result.content
    assert not [m for m in interaction.messages if is_result(m)]
    await asyncio.sleep(0)


class FlagEverything:
    """An output checker that flags every image (the real one needs downloaded weights)."""

    def __init__(self) -> None:
        self.calls = 0

    def check(self, images: list[Any]) -> list[bool]:
        self.calls += 1
        return [True] * len(images)


async def test_flagged_output_follows_the_channel_policy(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    checker = FlagEverything()
    monkeypatch.setattr(world.running.services, "safety_checker", checker)
    # #general is not NSFW: config nsfw_policy "block" -> withheld, the member is told.
    blocked = await world.server.send_command(world.member("bob"), world.server.general, "imagine",
                                              {"prompt": "flagged in general"})
    said = await blocked.wait_for_response(timeout=60, predicate=lambda m: not m.ephemeral and "withheld" in m.content)
    assert not said.attachments
    # #nsfw-art is NSFW: nsfw_channel_policy "spoiler" -> sent behind a spoiler.
    spoiled = await world.server.send_command(world.member("bob"), world.server.nsfw_channel, "imagine",
                                              {"prompt": "flagged in nsfw"})
    result = await spoiled.wait_for_response(timeout=60, predicate=is_result)
    assert all(a.filename.startswith("SPOILER_") for a in result.attachments)
    assert checker.calls == 2
    job = await repository.get_job(world.db, _job_id(result))
    assert all(image.nsfw for image in await repository.images_for_job(world.db, job.id))
