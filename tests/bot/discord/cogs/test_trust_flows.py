"""Who may do what, tried as members, moderators, admins of two servers and DM senders would: the real bot (tiny
model, CPU) against the local Discord-compatible server.

The model is the real ``tiny`` engine behind a gate the test opens, so "a job is running and others wait" is a
state the test creates on purpose instead of a race with the CPU. Commands are synced globally (no guild list),
so they can be sent from a second server and from direct messages as well.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import update

from bot.bootstrap import RunningBot, build_services, start_bot
from bot.clock import utcnow
from bot.config import settings_from_mapping
from bot.localdiscord import LocalDiscordServer
from bot.localdiscord.permissions import EVERYONE_PERMISSIONS, MANAGE_MESSAGES
from bot.storage import repository
from bot.storage.images import prune
from bot.storage.models import Job
from generation.engine import DiffusionEngine
from generation.loading import load_pipeline
from tests.helpers import new_job

pytestmark = [pytest.mark.timeout(300), pytest.mark.asyncio(loop_scope="module")]

PNG = b"\x89PNG\r\n\x1a\n"
WAIT = 60.0
QUEUE_SIZE = 4  # with max_queue_share_per_guild 0.5: a server holds at most 2 jobs at once


class GatedEngine:
    """The real engine, held before each batch while the gate is closed (everything else is the engine's own)."""

    def __init__(self, engine: DiffusionEngine) -> None:
        self._engine = engine
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def generate(self, requests: Any, **kwargs: Any) -> Any:
        self.entered.set()
        assert self.gate.wait(WAIT), "the test never opened the gate"
        return self._engine.generate(requests, **kwargs)


class World:
    def __init__(self, server: LocalDiscordServer, running: RunningBot, engine: GatedEngine) -> None:
        self.server, self.running, self.engine = server, running, engine
        self.db = running.services.db
        self.other_guild = server.guilds[next(g for g in server.guilds if g != server.guild.id)]
        self.other_channel = self.other_guild.channels[0]

    def member(self, name: str) -> Any:
        return self.server.members[name]

    async def command(self, who: str, name: str, options: dict[str, Any] | None = None, *,
                      channel: Any = None, **kwargs: Any) -> Any:
        return await self.server.send_command(self.member(who), channel or self.server.general, name,
                                              options or {}, **kwargs)

    async def answer(self, interaction: Any, predicate: Callable[[Any], bool] | None = None) -> Any:
        """The member's ephemeral answer (the first one matching ``predicate``)."""
        return await interaction.wait_for_response(
            timeout=WAIT, predicate=lambda m: m.ephemeral and (predicate is None or predicate(m)))

    async def imagine(self, who: str, prompt: str, **options: Any) -> Any:
        """/imagine and its public result message, once delivery has recorded it."""
        interaction = await self.command(who, "imagine", {"prompt": prompt, **options})
        result = await interaction.wait_for_response(timeout=WAIT, predicate=is_result)
        await self.running.services.journal.wait_idle()
        return result

    async def hold(self) -> None:
        """Close the gate and start a job of bob's that holds the model until :meth:`release`."""
        self.engine.gate.clear()
        self.engine.entered.clear()
        interaction = await self.command("bob", "imagine", {"prompt": "holding the model"})
        await self.answer(interaction, accepted)
        assert await asyncio.to_thread(self.engine.entered.wait, WAIT), "bob's job never started"

    async def release(self) -> None:
        self.engine.gate.set()
        await self.running.services.journal.wait_idle()


def is_result(message: Any) -> bool:
    return not message.ephemeral and any(a.data[:8] == PNG for a in message.attachments)


def accepted(message: Any) -> bool:
    return message.content.startswith(("Queued", "Starting", "Generating", "Done"))


def job_id_of(message: Any) -> int:
    """The job id of a result, from its ℹ Parameters button (``imagine:params:<job id>``)."""
    return int(next(c for c in message.custom_ids() if c.startswith("imagine:params:")).rsplit(":", 1)[1])


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait for a condition the bot brings about in the background (polled, with a deadline)."""
    async with asyncio.timeout(WAIT):
        while not await check():  # noqa: ASYNC110 - a database row changing sends no event
            await asyncio.sleep(0.05)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp: Path = tmp_path_factory.mktemp("trust")
    server = LocalDiscordServer(token="trust-token-0123456789abcdef")
    guild = server.guild
    moderator = server.add_role(guild, "Moderator", EVERYONE_PERMISSIONS | MANAGE_MESSAGES, position=2)
    server.add_member(guild, "mona", roles=[moderator])
    server.add_member(guild, "dave")
    other = server.add_guild("Other Server")
    server.add_channel(other, "lobby")
    server.add_member(other, "otto", admin=True)  # an admin, of the other server only
    await server.start()
    settings = settings_from_mapping({
        "discord": {"token": server.token, "api_base_url": server.api_base_url,
                    "gateway_url": server.gateway_url, "progress_edit_seconds": 0.0},
        "database": {"url": f"sqlite+aiosqlite:///{tmp / 'bot.db'}"},
        "storage": {"images_dir": str(tmp / "images")},
        "generation": {"model": "tiny", "device": "cpu", "default_steps": 2, "default_width": 64,
                       "default_height": 64, "min_size": 64, "max_size": 128, "queue_size": QUEUE_SIZE},
        "rate_limits": {"images_per_window": 100, "max_queued_per_user": 1, "max_queue_share_per_guild": 0.5},
    }, environ={})
    model = await asyncio.to_thread(load_pipeline, settings.generation)
    engine = GatedEngine(await asyncio.to_thread(DiffusionEngine, model, settings.generation))
    services = await build_services(settings, model=model, engine=engine)
    running = await start_bot(settings, services=services)
    try:
        yield World(server, running, engine)
    finally:
        engine.gate.set()
        await running.close(close_services=True)
        await server.close()


# --- limits: the host's config is the ceiling ---------------------------------------------------------------


async def test_a_server_admin_can_only_tighten_the_hosts_limits(world: World) -> None:
    guild_id = world.server.guild.id
    for options, allowed in [({"images_per_window": 10_000}, "at most 100 image(s) per window"),
                             ({"window_seconds": 1}, "a window of at least 3600 seconds"),
                             ({"max_queued": 100}, "at most 1 job(s) waiting per member")]:
        refused = await world.answer(await world.command("alice", "settings limits", options))
        assert refused.content.startswith("Nothing was changed") and allowed in refused.content
        assert "only tighten" in refused.content
    record = await repository.get_guild_settings(world.db, guild_id)
    assert (record.images_per_window, record.window_seconds, record.max_queued_per_user) == (None, None, None)

    saved = await world.answer(await world.command("alice", "settings limits", {"images_per_window": 10}))
    try:
        assert saved.content.startswith("Saved") and "**10** (this server's; the bot allows 100)" in saved.content
        assert (await world.running.services.rate_limiter.usage(guild_id, 0)).limits.images_per_window == 10
        # Another server's admin changes only their own server.
        await world.answer(await world.command("otto", "settings limits", {"images_per_window": 5},
                                               channel=world.other_channel))
        assert (await repository.get_guild_settings(world.db, guild_id)).images_per_window == 10
    finally:
        await world.answer(await world.command("alice", "settings limits", {"reset": True}))
        await world.answer(await world.command("otto", "settings limits", {"reset": True},
                                               channel=world.other_channel))


async def test_one_server_cannot_take_the_whole_queue(world: World) -> None:
    await world.hold()  # bob: 1 of the server's 2 slots
    try:
        carol = await world.command("carol", "imagine", {"prompt": "carol waits"})
        await world.answer(carol, accepted)  # 2 of 2
        dave = await world.answer(await world.command("dave", "imagine", {"prompt": "one too many"}))
        assert "This server already has 2 job(s) waiting or running" in dave.content
        assert "try again when some of them finish" in dave.content
        # Members of another server still get in.
        otto = await world.command("otto", "imagine", {"prompt": "otto gets in"}, channel=world.other_channel)
        await world.answer(otto, accepted)
    finally:
        await world.release()
    await carol.wait_for_response(timeout=WAIT, predicate=is_result)
    await otto.wait_for_response(timeout=WAIT, predicate=is_result)
    daves = await repository.jobs_for_user(world.db, world.server.guild.id, world.member("dave").id)
    assert daves == []  # refused before it was journalled


async def test_cancel_frees_the_members_slot_at_once(world: World) -> None:
    await world.hold()
    try:
        first = await world.command("carol", "imagine", {"prompt": "carol first"})
        await world.answer(first, accepted)
        second = await world.answer(await world.command("carol", "imagine", {"prompt": "carol second"}))
        assert "you already have 1 job(s) waiting or running" in second.content.lower()
        cancel = await world.answer(await world.command("carol", "cancel"))
        assert "cancelled" in cancel.content
        # At once, with bob's job still holding the model: carol's slot (and the server's) is free again.
        third = await world.command("carol", "imagine", {"prompt": "carol third"})
        await world.answer(third, accepted)
    finally:
        await world.release()
    await third.wait_for_response(timeout=WAIT, predicate=is_result)
    jobs = {job.params.prompt: job for job in await repository.jobs_for_user(world.db, world.server.guild.id,
                                                                      world.member("carol").id, limit=50)}
    assert jobs["carol first"].status == "cancelled" and jobs["carol third"].status == "done"
    assert "carol second" not in jobs


# --- /job: one's own, a moderator's view, never another server's, never a deleted or pruned image ------------


async def test_job_shows_members_their_own_and_moderators_their_servers(world: World) -> None:
    result = await world.imagine("bob", "a private cube", seed=3)
    job_id = job_id_of(result)

    async def shown(who: str, channel: Any = None) -> Any:
        return await world.answer(await world.command(who, "job", {"job_id": job_id}, channel=channel))

    own = await shown("bob")
    assert "Status: **done**" in own.content and [a.data[:8] for a in own.attachments] == [PNG]
    other_member = await shown("carol")
    assert other_member.content == f"You have no job `{job_id}` in this server." and not other_member.attachments
    moderator = await shown("mona")
    assert "Status: **done**" in moderator.content and moderator.attachments
    other_server_admin = await shown("otto", world.other_channel)
    assert "You have no job" in other_server_admin.content and not other_server_admin.attachments
    assert "a private cube" not in other_server_admin.content
    # The delivered job's interaction token is not kept.
    assert (await repository.get_job(world.db, job_id)).interaction_token is None


async def test_a_deleted_result_is_never_shown_again(world: World) -> None:
    # Deleted with its Delete button.
    result = await world.imagine("bob", "soon deleted")
    job_id = job_id_of(result)
    deleted = await world.server.press_button(world.member("bob"), result, f"imagine:delete:{job_id}")
    await deleted.wait_for_ack(timeout=5)
    await until(lambda: _message_gone(world, job_id), "the job to lose its message")
    for who in ("bob", "mona"):
        shown = await world.answer(await world.command(who, "job", {"job_id": job_id}))
        assert "deleted" in shown.content and not shown.attachments

    # Deleted in Discord by a moderator (not with the button): the bot hears MESSAGE_DELETE.
    result = await world.imagine("bob", "deleted by hand")
    job_id = job_id_of(result)
    await world.running.bot.http.delete_message(result.channel_id, result.id)
    await until(lambda: _message_gone(world, job_id), "the job to lose its message")
    shown = await world.answer(await world.command("bob", "job", {"job_id": job_id}))
    assert "deleted" in shown.content and not shown.attachments


async def _message_gone(world: World, job_id: int) -> bool:
    job = await repository.get_job(world.db, job_id)
    return job is not None and job.message_id is None


async def test_a_pruned_image_is_never_shown(world: World) -> None:
    result = await world.imagine("bob", "soon pruned")
    job_id = job_id_of(result)
    report = await prune(world.db, world.running.services.images_dir, timedelta(0))  # `imagine-bot db prune`
    assert report.rows_marked >= 1
    shown = await world.answer(await world.command("bob", "job", {"job_id": job_id}))
    assert "removed from the bot's storage" in shown.content and not shown.attachments


# --- direct messages -------------------------------------------------------------------------------------------


async def test_commands_from_direct_messages_are_refused_with_one_sentence(world: World) -> None:
    bob, carol = world.member("bob"), world.member("carol")
    user = await world.running.bot.fetch_user(bob.id)
    dm = world.server.channels[(await user.create_dm()).id]
    # A job of someone else's that has no server either (made by an older version, say).
    other = await new_job(world.db, guild_id=None, channel_id=dm.id, user_id=carol.id,
                          prompt="carol's private dm prompt")
    await repository.mark_failed(world.db, other.id, "old")
    before = await repository.jobs_for_user(world.db, None, bob.id)
    # Discord's client may not honour guild_only; the bot must refuse at run time all the same.
    for name, options in [("job", {"job_id": other.id}), ("imagine", {"prompt": "in a dm"}), ("history", {}),
                          ("cancel", {}), ("settings show", {})]:
        interaction = await world.server.send_command(bob.user, dm, name, options, validate=False)
        answer = await world.answer(interaction)
        assert answer.content == "This command only works in a server.", (name, answer.content)
        assert not answer.attachments and not answer.embeds
    assert await repository.jobs_for_user(world.db, None, bob.id) == before  # /imagine queued nothing


# --- interaction tokens ------------------------------------------------------------------------------------------


async def test_interaction_tokens_older_than_15_minutes_are_forgotten(world: World) -> None:
    jobs_cog = world.running.bot.get_cog("Jobs")
    assert jobs_cog.forget_expired_tokens.is_running()

    async def job_with_token(token: str) -> int:
        job = await new_job(world.db, guild_id=999, channel_id=1, user_id=2, interaction_token=token,
                            application_id=3)
        await repository.mark_failed(world.db, job.id, "made by the test")
        return job.id

    old, fresh = await job_with_token("aW50ZXJhY3Rpb24old-token-0123456789"), await job_with_token(
        "aW50ZXJhY3Rpb24fresh-token-0123456789")
    async with world.db.session(write=True) as session:
        await session.execute(update(Job).where(Job.id == old).values(queued_at=utcnow() - timedelta(minutes=16)))
    await jobs_cog.forget_expired_tokens()  # one run of the sweep the cog repeats every minute
    assert (await repository.get_job(world.db, old)).interaction_token is None
    assert (await repository.get_job(world.db, fresh)).interaction_token == "aW50ZXJhY3Rpb24fresh-token-0123456789"
