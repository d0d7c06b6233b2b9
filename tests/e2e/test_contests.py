"""A whole image contest through the local Discord-compatible server with the REAL bot (tiny model on CPU).

Start (a non-admin is refused) -> three members generate with /imagine and enter (result button and
/contest submit; max_entries and a deleted entry message on the way) -> the submission deadline passes on a
clock the test controls -> votes by button and by ⭐ reaction, including a self-vote, a double vote and a vote
taken back, none of which may count -> the bot restarts in the voting window (fresh services on the same
database) and keeps the contest -> the vote deadline passes -> the results picture and ranking are posted in
the right order, ties going to the earlier submission.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageOps, ImageStat

from bot.bootstrap import RunningBot, build_services, start_bot
from bot.clock import ManualClock, utcnow
from bot.config import Settings
from bot.contests import picture
from bot.localdiscord import LocalDiscordServer
from bot.storage import contest_repository, repository
from tests.helpers import local_bot_settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STAR = "⭐"


def contest_settings(server: LocalDiscordServer, tmp_path: Path) -> Settings:
    return local_bot_settings(server, tmp_path, discord={"progress_edit_seconds": 0.5})


async def _start(settings: Settings, clock: ManualClock, model: Any) -> RunningBot:
    """A fresh bot with fresh services (a real restart: nothing in memory survives) on the test's clock."""
    services = await build_services(settings, model=model, clock=clock)
    return await start_bot(settings, services=services)


async def _stop(running: RunningBot) -> None:
    await running.close(close_services=True)


async def _eventually(check: Callable[[], Any], what: str, limit: float = 10.0) -> Any:
    async with asyncio.timeout(limit):
        while True:
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(0.02)
    raise AssertionError(what)  # pragma: no cover


async def _reply(interaction: Any) -> str:
    message = await interaction.wait_for_response(timeout=20)
    return message.content


def _mean(image: Image.Image) -> list[float]:
    return ImageStat.Stat(image.convert("RGB")).mean


async def test_contest_end_to_end(discord_server: LocalDiscordServer, tiny_model: Any, tmp_path: Path) -> None:
    clock = ManualClock(utcnow() - timedelta(seconds=2))
    server = discord_server
    settings = contest_settings(server, tmp_path)
    running = await _start(settings, clock, tiny_model)
    alice, bob, carol, olivia = (server.members[n] for n in ("alice", "bob", "carol", "olivia"))
    channel = server.art
    try:
        db = running.services.db

        # --- start: members are refused, bad durations explained, admins start it ---------------------
        denied = await server.send_command(bob, channel, "contest start",
                                           {"theme": "lighthouses", "submit_for": "1h", "vote_for": "1h"})
        assert "Manage Server" in await _reply(denied)
        bad = await server.send_command(alice, channel, "contest start",
                                        {"theme": "lighthouses", "submit_for": "soon", "vote_for": "1h"})
        assert "not a duration" in await _reply(bad)
        started = await server.send_command(alice, channel, "contest start", {
            "theme": "lighthouses", "submit_for": "1h", "vote_for": "1d", "max_entries": 1})
        assert "started" in await _reply(started)
        announcement = await server.wait_for_message(
            lambda m: m.content.startswith("🏆 **Image contest: lighthouses"), include_existing=True,
            channel=channel)
        contest = await contest_repository.running_contest(db, channel.id)
        assert contest is not None
        unix = int(contest.submit_ends_at.timestamp())
        assert f"<t:{unix}:R>" in announcement.content and f"<t:{unix}:f>" in announcement.content
        again = await server.send_command(alice, channel, "contest start",
                                          {"theme": "other", "submit_for": "1h", "vote_for": "1h"})
        assert "already running" in await _reply(again)

        # --- three members generate and enter -----------------------------------------------------------
        async def imagine(member: Any, prompt: str, **options: Any) -> Any:
            await server.send_command(member, channel, "imagine", {"prompt": prompt, **options})
            return await server.wait_for_message(
                lambda m: f"<@{member.id}>" in m.content and any(
                    a.data[:8] == PNG_MAGIC for a in m.attachments) and m.channel_id == channel.id,
                timeout=120, include_existing=True)

        results = {}
        for member, prompt, options in ((bob, "a lighthouse at dawn", {"seed": 1}),
                                        (carol, "a lighthouse in a storm", {"seed": 2}),
                                        (olivia, "two lighthouses", {"seed": 3, "count": 2})):
            results[member.id] = await imagine(member, prompt, **options)
        bob_job = await repository.find_job_by_message(db, results[bob.id].id)
        carol_job = await repository.find_job_by_message(db, results[carol.id].id)
        olivia_job = await repository.find_job_by_message(db, results[olivia.id].id)
        assert bob_job and carol_job and olivia_job
        assert f"contest:submit:{bob_job.id}:0" in results[bob.id].custom_ids()
        assert {f"contest:submit:{olivia_job.id}:{i}" for i in (0, 1)} <= set(results[olivia.id].custom_ids())

        def entry_message(member: Any) -> Callable[[Any], bool]:
            return lambda m: m.content == f"Entry by <@{member.id}>" and bool(m.attachments)

        # someone else's image is refused; bob enters with the button on his result
        stolen = await server.press_button(carol, results[bob.id], f"contest:submit:{bob_job.id}:0")
        assert "your own" in await _reply(stolen)
        pressed = await server.press_button(bob, results[bob.id], f"contest:submit:{bob_job.id}:0")
        assert "Entered" in await _reply(pressed)
        bob_entry_msg = await server.wait_for_message(entry_message(bob), include_existing=True, channel=channel)
        # carol enters with the command
        submitted = await server.send_command(carol, channel, "contest submit", {"job": carol_job.id})
        assert "Entered" in await _reply(submitted)
        carol_entry_msg = await server.wait_for_message(entry_message(carol), include_existing=True,
                                                        channel=channel)
        # olivia enters image 1, is refused a second entry (max_entries 1) ...
        first = await server.press_button(olivia, results[olivia.id], f"contest:submit:{olivia_job.id}:0")
        assert "Entered" in await _reply(first)
        withdrawn_msg = await server.wait_for_message(entry_message(olivia), include_existing=True,
                                                      channel=channel)
        over = await server.press_button(olivia, results[olivia.id], f"contest:submit:{olivia_job.id}:1")
        assert "limit is 1" in await _reply(over)
        # ... a moderator deletes that entry's message: the entry is withdrawn, so she may enter image 2
        await running.bot.http.delete_message(channel.id, withdrawn_msg.id)
        await _eventually(lambda: _gone(db, withdrawn_msg.id), "entry withdrawn after its message was deleted")
        second = await server.press_button(olivia, results[olivia.id], f"contest:submit:{olivia_job.id}:1")
        assert "Entered" in await _reply(second)
        olivia_entry_msg = await server.wait_for_message(
            lambda m: entry_message(olivia)(m) and m.id != withdrawn_msg.id, include_existing=True,
            channel=channel)
        tallies = await contest_repository.tallies(db, contest.id)
        assert [t.entry.user_id for t in tallies] == [bob.id, carol.id, olivia.id]
        entry_id = {t.entry.user_id: t.entry.id for t in tallies}

        # votes before the voting window are refused
        early = await server.press_button(alice, carol_entry_msg, f"contest:vote:{entry_id[carol.id]}")
        assert "not started" in await _reply(early)

        # --- the submission deadline passes -------------------------------------------------------------
        await clock.set(contest.submit_ends_at)
        await server.wait_for_message(lambda m: m.content.startswith("🗳️ **Voting is open"), timeout=10,
                                      include_existing=True, channel=channel)
        late = await server.press_button(bob, results[bob.id], f"contest:submit:{bob_job.id}:0")
        assert "closed" in await _reply(late)

        async def vote(member: Any, message: Any, owner: Any) -> str:
            return await _reply(await server.press_button(member, message, f"contest:vote:{entry_id[owner.id]}"))

        assert "counted" in await vote(alice, carol_entry_msg, carol)
        assert "already voted" in await vote(alice, carol_entry_msg, carol)  # double vote: not counted
        assert "your own" in await vote(bob, bob_entry_msg, bob)  # self-vote: not counted
        assert "counted" in await vote(alice, bob_entry_msg, bob)
        # by reaction: olivia -> carol counts; carol -> carol (self) is refused and taken off again
        await server.react(olivia, carol_entry_msg, STAR)
        await server.react(carol, carol_entry_msg, STAR)
        await server.wait_for_message(lambda m: m.content.startswith(f"<@{carol.id}>") and "own" in m.content,
                                      include_existing=True, channel=channel)
        await _eventually(lambda: carol.id not in server.messages[carol_entry_msg.id].reactions.get(STAR, []),
                          "refused reaction removed")
        await _eventually(lambda: _votes(db, contest.id, carol.id, 2), "olivia's reaction counted")

        # --- restart in the voting window: the contest, its timer and old buttons survive ---------------
        await _stop(running)
        running = await _start(settings, clock, tiny_model)
        db = running.services.db
        contests = running.services.contests
        assert contests is not None
        await _eventually(lambda: contests.scheduler.current is not None, "timer re-armed from the database")
        assert contests.scheduler.current.key == contest.id
        assert contests.scheduler.current.when == contest.vote_ends_at

        assert "counted" in await vote(bob, olivia_entry_msg, olivia)  # a button posted before the restart
        assert "counted" in await vote(carol, olivia_entry_msg, olivia)
        # a reaction vote taken back does not count
        await server.react(bob, carol_entry_msg, STAR)
        await _eventually(lambda: _votes(db, contest.id, carol.id, 3), "bob's reaction counted")
        await server.unreact(bob, carol_entry_msg, STAR)
        await _eventually(lambda: _votes(db, contest.id, carol.id, 2), "bob's vote taken back")
        # carol 2 (alice, olivia), olivia 2 (bob, carol): a tie that carol wins by submitting earlier; bob 1
        status = await server.send_command(bob, channel, "contest status")
        assert "Entries: 3 from 3" in await _reply(status)

        # --- the vote deadline passes -------------------------------------------------------------------
        await clock.set(contest.vote_ends_at)
        posted = await server.wait_for_message(lambda m: m.content.startswith("🏁 **Results: lighthouses"),
                                               timeout=20, include_existing=True, channel=channel)
        lines = posted.content.splitlines()
        order = [next(i for i, line in enumerate(lines) if f"<@{m.id}>" in line) for m in (carol, olivia, bob)]
        assert order == sorted(order), posted.content
        assert "🥇" in lines[order[0]] and "2 votes" in lines[order[0]]
        assert "🥈" in lines[order[1]] and "2 votes" in lines[order[1]]
        assert "🥉" in lines[order[2]] and "1 vote" in lines[order[2]]
        assert len(posted.attachments) == 1
        with Image.open(io.BytesIO(posted.attachments[0].data)) as results_picture:
            results_picture.load()
        assert results_picture.width == pytest.approx(3 * picture.TILE, rel=0.1)
        # each tile shows the right entry's image: compare with the entries' own pictures
        tiles = [results_picture.crop((picture.GAP + i * (picture.TILE + picture.GAP), picture.GAP,
                                       picture.GAP + i * (picture.TILE + picture.GAP) + picture.TILE,
                                       picture.GAP + picture.TILE)) for i in range(3)]
        sources = {}
        for member, message in ((carol, carol_entry_msg), (olivia, olivia_entry_msg), (bob, bob_entry_msg)):
            with Image.open(io.BytesIO(message.attachments[0].data)) as source:
                sources[member.id] = ImageOps.pad(source.convert("RGB"), (picture.TILE, picture.TILE))
        for tile, member in zip(tiles, (carol, olivia, bob), strict=True):
            distances = {uid: sum(abs(a - b) for a, b in zip(_mean(tile), _mean(img), strict=True))
                         for uid, img in sources.items()}
            assert min(distances, key=distances.__getitem__) == member.id

        await _eventually(lambda: _posted(db, contest.id, posted.id), "results recorded as posted")
        board = await server.send_command(bob, channel, "contest leaderboard")
        text = await _reply(board)
        assert text.index(f"<@{carol.id}>") < text.index(f"<@{olivia.id}>") < text.index(f"<@{bob.id}>")
        assert "**3** points, 1 win" in text
        after = await vote(alice, olivia_entry_msg, olivia)
        assert "closed" in after
    finally:
        await _stop(running)


async def _gone(db: Any, message_id: int) -> bool:
    return await contest_repository.entry_by_message(db, message_id) is None


async def _votes(db: Any, contest_id: int, user_id: int, expected: int) -> bool:
    tallies = await contest_repository.tallies(db, contest_id)
    return any(t.entry.user_id == user_id and t.votes == expected for t in tallies)


async def _posted(db: Any, contest_id: int, message_id: int) -> bool:
    contest = await contest_repository.get_contest(db, contest_id)
    return contest is not None and contest.state == "finished" and contest.results_message_id == message_id


async def test_deadline_passed_while_the_bot_was_down_is_processed_at_start(
        discord_server: LocalDiscordServer, tiny_model: Any, tmp_path: Path) -> None:
    clock = ManualClock(utcnow())
    server = discord_server
    settings = contest_settings(server, tmp_path)
    running = await _start(settings, clock, tiny_model)
    try:
        started = await server.send_command(server.admin, server.general, "contest start",
                                            {"theme": "fog", "submit_for": "30m", "vote_for": "2h"})
        assert "started" in await _reply(started)
        contest = await contest_repository.running_contest(running.services.db, server.general.id)
        assert contest is not None
        await _stop(running)
        await clock.set(contest.vote_ends_at + timedelta(hours=3))  # both deadlines pass while it is down
        running = await _start(settings, clock, tiny_model)
        over = await server.wait_for_message(lambda m: m.content.startswith("🏁 **Contest over: fog"),
                                             timeout=20, include_existing=True, channel=server.general)
        assert "No entries" in over.content
        await _eventually(lambda: _posted(running.services.db, contest.id, over.id), "recorded as posted")
        status = await server.send_command(server.members["bob"], server.general, "contest status")
        assert "Finished" in await _reply(status)
    finally:
        await _stop(running)
