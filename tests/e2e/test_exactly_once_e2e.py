"""Every result exactly once, and nothing acknowledged is ever lost -- end to end, through the local server:

* a REAL bot process (``python -m bot.cli run``) killed with SIGKILL after a command (or an Upscale click) was
  acknowledged but before it was journalled: the next process replays it from the inbox (one result); killed before the
  acknowledgement: it is dropped, not run behind the member's back; killed at a sweep of instants after a
  burst of commands: every acknowledged command gets exactly one result;
* the followup POST created but its answer lost (a 500): read back, not posted again -- one result;
* the followup route failing every time: one channel message that mentions the member;
* the disk (images and database) filling up mid-job: the member reads one clear sentence, the job ends
  ``failed`` once the database can be written again;
* Manage Messages and Attach Files withheld: reactions are left alone, a rerun result says why it has no image,
  and the admins are told once per permission.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import ACK_DEADLINE, E2E, BotFactory, BotProcess, e2e_config, eventually, is_result_for, png_of

from bot.bootstrap import RunningBot
from bot.discord.delivery import FOLLOWUP_ATTEMPTS, NO_ATTACH_FILES
from bot.discord.replay import REPLAY_NOTE
from bot.journal.job_journal import DISK_FULL_MESSAGE
from bot.localdiscord import LocalDiscordServer
from bot.localdiscord.permissions import ATTACH_FILES
from bot.storage import repository
from tests.helpers import fill_up, small_tmpfs

pytestmark = [pytest.mark.e2e]

CALLBACK = "/interactions/*/*/callback"


# --- reading the bot's database from the test (another process may own it) ------------------------------------


def _rows(db_path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    try:
        with contextlib.closing(sqlite3.connect(db_path, timeout=5)) as conn:
            return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # not created or not migrated yet
        return []


def inbox_ids(db_path: Path) -> list[int]:
    return [row[0] for row in _rows(db_path, "SELECT interaction_id FROM inbox ORDER BY id")]


def jobs_of(db_path: Path, user_id: int) -> list[tuple[int, str, int | None]]:
    return [tuple(row) for row in _rows(db_path, "SELECT id, status, message_id FROM jobs WHERE user_id = ?",
                                        user_id)]


@contextlib.contextmanager
def write_lock(db_path: Path) -> Iterator[None]:
    """Hold SQLite's write lock: the bot's next write (the rate limiter's reservation) waits behind it."""
    conn = sqlite3.connect(db_path, timeout=5, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
    finally:
        conn.rollback()
        conn.close()


def results_for(server: LocalDiscordServer, member: Any) -> list[Any]:
    check = is_result_for(member)
    return [m for m in server.bot_messages(include_deleted=True) if check(m)]


def process_config(server: LocalDiscordServer, tmp_path: Path) -> Path:
    config = e2e_config(server, tmp_path, logging={"level": "INFO"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


# --- SIGKILL: acknowledged means durable -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_sigkill_between_ack_and_journal_replays_and_before_ack_drops(
        discord_server: LocalDiscordServer, tmp_path: Path) -> None:
    server = discord_server
    db_path = tmp_path / "imagine.db"
    bot = BotProcess(process_config(server, tmp_path), tmp_path / "bot.log")
    bob, carol = server.members["bob"], server.members["carol"]
    try:
        bot.start()
        await bot.wait_started(1)

        # 1. Acknowledged, not journalled: the deferral is held for 1 s (a 429), long enough to take the
        #    database's write lock once the inbox entry is there; the gate then waits on that lock.
        server.fail_route("POST", CALLBACK, 429, retry_after=1.0)
        held = await server.send_command(bob, server.general, "imagine", {"prompt": "kept across a crash",
                                                                        "seed": 71})
        await eventually(lambda: held.id in inbox_ids(db_path), "bob's command in the inbox", interval=0.01)
        with write_lock(db_path):
            await held.wait_for_ack(timeout=ACK_DEADLINE + 1)
            assert held.ack_latency is not None and not held.late_callback
            await bot.kill()
        server.clear_faults()
        assert inbox_ids(db_path) == [held.id] and jobs_of(db_path, bob.id) == []

        bot.start()
        await bot.wait_started(2)  # the replay runs before the bot reports it started
        result = await server.wait_for_message(is_result_for(bob), timeout=90, include_existing=True)
        assert result.id in held.message_ids, "not answered through the member's own interaction"
        edits = [c.json for c in server.calls("PATCH", f"/webhooks/*/{held.token}/messages/@original")]
        assert any((e or {}).get("content") == REPLAY_NOTE for e in edits), "the member was not told"
        await eventually(lambda: jobs_of(db_path, bob.id) == [(jobs_of(db_path, bob.id)[0][0], "done", result.id)],
                         "bob's job done with its result recorded", timeout=30)
        assert inbox_ids(db_path) == []

        # 1b. The same for an Upscale click on that result: recorded with its image and action, replayed as it.
        parent_id = jobs_of(db_path, bob.id)[0][0]
        server.fail_route("POST", CALLBACK, 429, retry_after=1.0)
        click = await server.press_button(bob, result, f"imagine:upscale:{parent_id}:0")
        await eventually(lambda: click.id in inbox_ids(db_path), "bob's click in the inbox", interval=0.01)
        with write_lock(db_path):
            await click.wait_for_ack(timeout=ACK_DEADLINE + 1)
            await bot.kill()
        server.clear_faults()
        assert inbox_ids(db_path) == [click.id] and len(jobs_of(db_path, bob.id)) == 1

        bot.start()
        await bot.wait_started(3)
        upscaled = await server.wait_for_message(lambda m: m.id != result.id and is_result_for(bob)(m), timeout=90,
                                                 include_existing=True)
        assert upscaled.id in click.message_ids, "not answered through the click's own interaction"
        children = _rows(db_path, "SELECT parent_job_id, parent_image_index, upscale, width FROM jobs "
                                  "WHERE user_id = ? AND id != ?", bob.id, parent_id)
        (child_parent, child_index, factor, child_width), = children
        parent_width = _rows(db_path, "SELECT width FROM jobs WHERE id = ?", parent_id)[0][0]
        assert (child_parent, child_index) == (parent_id, 0) and factor and child_width > parent_width
        assert inbox_ids(db_path) == []

        # 2. Recorded but never acknowledged (killed while the deferral is held back): Discord told the member
        #    it failed, so it is dropped at the next start, not run behind their back.
        server.fail_route("POST", CALLBACK, 429, retry_after=30.0)
        unacked = await server.send_command(carol, server.general, "imagine", {"prompt": "never acknowledged"})
        await eventually(lambda: unacked.id in inbox_ids(db_path), "carol's command in the inbox", interval=0.01)
        await bot.kill()
        server.clear_faults()
        assert unacked.ack_latency is None

        bot.start()
        await bot.wait_started(4)
        assert inbox_ids(db_path) == [] and jobs_of(db_path, carol.id) == []
        assert "cannot be answered any more" in bot.log.read_text(encoding="utf-8")
        assert len(results_for(server, bob)) == 2 and results_for(server, carol) == []
    except (AssertionError, TimeoutError) as exc:
        raise AssertionError(f"{exc}\n--- bot log (tail) ---\n{bot.tail()}") from None
    finally:
        await bot.stop()


KILL_AFTER = (0.0, 0.05, 0.15, 0.4, 1.0)  # seconds after a burst of commands was sent
BURST = 3


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_sigkill_at_any_instant_loses_no_acknowledged_command(
        discord_server: LocalDiscordServer, tmp_path: Path) -> None:
    """Rounds of: start, a burst of /imagine, SIGKILL a swept instant later (each start also recovers what the
    rounds before left). At the end every acknowledged command has exactly one result, and an unacknowledged
    one none."""
    server = discord_server
    db_path = tmp_path / "imagine.db"
    bot = BotProcess(process_config(server, tmp_path), tmp_path / "bot.log")
    sent: list[tuple[Any, Any]] = []
    try:
        for round_no, delay in enumerate(KILL_AFTER):
            bot.start()
            await bot.wait_started(round_no + 1)
            members = [server.add_member(server.guild, f"sweep{round_no}x{i}") for i in range(BURST)]
            interactions = await asyncio.gather(*(
                server.send_command(member, server.general, "imagine",
                                    {"prompt": f"round {round_no}, member {i}", "seed": 1000 * round_no + i})
                for i, member in enumerate(members)))
            await asyncio.sleep(delay)  # the swept instant itself (what is measured), not a wait for an event
            await bot.kill()
            sent += list(zip(members, interactions, strict=True))

        bot.start()
        await bot.wait_started(len(KILL_AFTER) + 1)
        acknowledged = [(m, i) for m, i in sent if i.ack_latency is not None]
        for member, _ in acknowledged:
            await server.wait_for_message(is_result_for(member), timeout=180, include_existing=True)
        assert inbox_ids(db_path) == []
        for member, interaction in sent:
            expected = 1 if interaction.ack_latency is not None else 0
            assert len(results_for(server, member)) == expected, (
                f"{member.user.username}: acknowledged={bool(expected)}, "
                f"results={len(results_for(server, member))}")
            assert len(jobs_of(db_path, member.id)) == expected
        log = bot.log.read_text(encoding="utf-8")
        print(f"\nsweep: {len(sent)} commands, {len(acknowledged)} acknowledged before their kill, "
              f"{log.count('replayed as job')} replayed from the inbox, "
              f"{log.count('re-queued')} recovery pass(es) from the journal")
    except (AssertionError, TimeoutError) as exc:
        raise AssertionError(f"{exc}\n--- bot log (tail) ---\n{bot.tail()}") from None
    finally:
        await bot.stop()


# --- exactly one visible result -----------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_lost_500_answer_on_the_followup_gives_exactly_one_result(
        discord_server: LocalDiscordServer, bot: RunningBot, e2e: E2E) -> None:
    server = discord_server
    bob = server.members["bob"]
    lost = server.fail_route("POST", "/webhooks/*/*", 500, after=True)  # created, but the answer is a 500

    interaction, result = await e2e.imagine(bob, "a parcel that must arrive once", seed=31)
    await interaction.wait_for_response(timeout=20, predicate=lambda m: m.ephemeral and m.content.startswith("Done"))
    job = await e2e.job_of(bot, result)
    assert lost.hits == 1 and job.status == "done" and job.message_id == result.id
    assert result.id in interaction.message_ids
    assert [c.status for c in server.calls("POST", "/webhooks/*/*")] == [500], "the followup was sent again"
    assert server.calls("GET", "/channels/*/messages"), "the channel was not read back"
    assert [m.id for m in server.bot_messages() if png_of(m) is not None] == [result.id]


@pytest.mark.timeout(90)
async def test_followup_route_failing_every_time_falls_back_to_one_channel_message(
        discord_server: LocalDiscordServer, bot: RunningBot, e2e: E2E) -> None:
    server = discord_server
    bob = server.members["bob"]
    failing = server.fail_route("POST", "/webhooks/*/*", 500, times=10_000)

    interaction = await server.send_command(bob, server.general, "imagine", {"prompt": "a stubborn route",
                                                                            "seed": 32})
    result = await e2e.wait_for_new_result(bob, timeout=60)
    await interaction.wait_for_response(timeout=20, predicate=lambda m: m.ephemeral and m.content.startswith("Done"))
    assert result.interaction_id is None and result.id not in interaction.message_ids  # a channel message
    assert result.channel_id == server.general.id and result.content.startswith(f"<@{bob.id}>")
    assert failing.hits == FOLLOWUP_ATTEMPTS
    job = await e2e.job_of(bot, result)
    assert job.status == "done" and job.message_id == result.id
    posted = [c for c in server.calls("POST", "/channels/*/messages") if c.files]
    assert len(posted) == 1 and posted[0].json.get("enforce_nonce") is True and posted[0].json.get("nonce")
    assert [m.id for m in server.bot_messages() if png_of(m) is not None] == [result.id]


# --- the bot's own failure: the disk fills up -----------------------------------------------------------------




@pytest.mark.timeout(120)
async def test_disk_filling_mid_job_gives_the_member_one_clear_sentence_and_the_job_fails(
        discord_server: LocalDiscordServer, bots: BotFactory, e2e: E2E, tmp_path: Path) -> None:
    server = discord_server
    bob = server.members["bob"]
    with small_tmpfs(tmp_path / "disk", "16m") as disk:
        running = await bots.start(bots.settings(database={"url": f"sqlite+aiosqlite:///{disk / 'imagine.db'}"},
                                                 storage={"images_dir": str(disk / "images")}))
        try:
            _, first = await e2e.imagine(bob, "fits on the disk", seed=1)  # the disk works
            interaction = await server.send_command(bob, server.general, "imagine",
                                                    {"prompt": "does not fit", "seed": 2, "steps": 6})

            async def journalled() -> Any:
                jobs = await repository.jobs_for_user(running.services.db, server.guild.id, bob.id)
                return next((job for job in jobs if job.params.prompt == "does not fit"), None)

            job = await eventually(journalled, "the job journalled")
            filler = fill_up(disk)  # images and database alike: even the error handler's write fails
            answer = await interaction.wait_for_response(
                timeout=60, predicate=lambda m: m.ephemeral and m.content == DISK_FULL_MESSAGE)
            assert answer.content == DISK_FULL_MESSAGE  # one sentence: what happened, whom to tell
            assert [m.id for m in results_for(server, bob)] == [first.id], "a result was posted anyway"
            still = await repository.get_job(running.services.db, job.id)
            assert still is not None and still.status in ("queued", "running")  # the database was full too

            filler.unlink()
            failed = await e2e.job_with_status(running, job.id, "failed", timeout=60)
            assert failed.error == DISK_FULL_MESSAGE
        finally:
            await bots.stop(running)


# --- permissions withheld ------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_without_manage_messages_and_attach_files_the_bot_works_and_tells_admins_once(
        discord_server: LocalDiscordServer, bots: BotFactory, e2e: E2E) -> None:
    server = discord_server
    # The invite asks for no Manage Messages; an admin also took Attach Files away in every channel.
    server.withhold_permission(ATTACH_FILES)
    running = await bots.start()
    bob, carol = server.members["bob"], server.members["carol"]

    # A followup through the interaction webhook still carries the image (the bot's own upload right is
    # not what Discord checks there).
    _, result = await e2e.imagine(bob, "a kite on a string", seed=5)
    assert png_of(result) is not None
    await e2e.job_of(running, result)  # recorded: a reaction on it is now recognised
    before = {m.id for m in server.bot_messages(include_deleted=True)}
    started = time.monotonic()
    for member in (carol, bob):  # two reruns by reaction: the notes come once
        await server.react(member, result, "🔄")
        await server.wait_for_message(
            lambda m, who=member: m.id not in before and f"<@{who.id}>" in m.content and NO_ATTACH_FILES in m.content,
            timeout=60, include_existing=True)
    reruns = [m for m in server.bot_messages() if m.id not in before and NO_ATTACH_FILES in m.content]
    assert len(reruns) == 2 and all(not m.attachments for m in reruns)
    assert all(m.embeds for m in reruns), "the parameters card should still be there"
    children = [await e2e.job_of(running, m) for m in reruns]
    assert {child.status for child in children} == {"done"}

    notes = [m for m in server.bot_messages() if m.content.startswith("⚠️ For the server admins")]
    assert sorted(n.content.split("**")[1] for n in notes) == ["Attach Files", "Manage Messages"], notes
    assert not server.calls("DELETE", "/channels/*/messages/*/reactions/**"), "tried to remove a reaction"
    assert set(result.reactions.get("🔄", [])) >= {carol.id, bob.id}, "the members' reactions should stay"
    print(f"\ntwo reaction reruns without Attach Files: {time.monotonic() - started:.1f} s")
