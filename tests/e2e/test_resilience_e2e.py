"""The bot under stress and failure, end to end, through the local Discord-compatible server over real sockets:

* commands are acknowledged within Discord's 3 s while the worker is busy on a long job, and in a burst;
* SIGKILL of a REAL bot process (``python -m bot.cli run --config ...``) with jobs queued and running, then a
  new process on the same database: every job is delivered and recorded ``done`` (and SIGTERM stops it cleanly);
* SIGKILL after a job's images were saved but before its result was posted: the next process posts it;
* the gateway connection dropped while a job runs: the client resumes, gets what it missed, nothing is lost;
* a 429 from the interaction webhook: retried, the result still arrives (once);
* a recovered job whose deferred ("thinking") response was never edited is still posted publicly;
* an expired interaction token: the result goes to the channel, mentioning the member;
* the queue full: one clear refusal, the member's allowance untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import (
    ACK_DEADLINE,
    E2E,
    BotFactory,
    BotProcess,
    e2e_config,
    eventually,
    imagine_label,
    is_result_for,
    png_of,
)

from bot.bootstrap import RunningBot
from bot.localdiscord import LocalDiscordServer, Message
from bot.storage import repository
from generation.png import parse_parameters, read_parameters

pytestmark = [pytest.mark.e2e]

LONG = {"steps": 24, "width": 256, "height": 256}  # a job that keeps the worker busy for a while (~1-7 s on CPU)


def _seed_in_png(message: Message) -> int:
    png = png_of(message)
    assert png is not None
    return int(parse_parameters(read_parameters(png) or "")["Seed"])


async def _running(running: RunningBot, job_id: int) -> bool:
    job = await repository.get_job(running.services.db, job_id)
    return job is not None and job.status == "running"


async def _only_job(running: RunningBot, server: LocalDiscordServer, member: Any) -> Any:
    jobs = await repository.jobs_for_user(running.services.db, server.guild.id, member.id)
    return jobs[0] if jobs else None


# --- 8. acknowledged within 3 s while the worker is busy -------------------------------------------------------


@pytest.mark.timeout(90)
async def test_commands_acknowledged_within_3s_while_worker_busy(
        discord_server: LocalDiscordServer, bot: RunningBot, e2e: E2E) -> None:
    server = discord_server
    olivia, bob, carol = (server.members[n] for n in ("olivia", "bob", "carol"))
    started = time.monotonic()
    long = await server.send_command(olivia, server.general, "imagine",
                                     {"prompt": "a very detailed city at night", **LONG})
    job = await eventually(lambda: _only_job(bot, server, olivia), "the long job journalled")
    await eventually(lambda: _running(bot, job.id), "the long job running", timeout=30)

    # While the pipeline thread is busy: a status command, a new /imagine and a look at the history.
    queue = await server.send_command(bob, server.general, "queue")
    queued_at = time.monotonic()
    second = await server.send_command(carol, server.general, "imagine", {"prompt": "a small red kite"})
    history = await server.send_command(bob, server.general, "history")
    for interaction in (queue, second, history):
        await interaction.wait_for_ack(timeout=ACK_DEADLINE + 1)
        assert interaction.ack_latency is not None and interaction.ack_latency < ACK_DEADLINE
        assert not interaction.late_callback
    assert await _running(bot, job.id), "the long job ended before the acks: the test proved nothing"
    answer = await queue.wait_for_response(timeout=5)
    assert answer.ephemeral and "Jobs waiting" in answer.content

    acks = {"/queue": queue.ack_latency, "/imagine (queued)": second.ack_latency, "/history": history.ack_latency}
    print(f"\nack latency while busy: { {k: round(v or 0, 4) for k, v in acks.items()} }")

    # Both jobs are still served, the long one first.
    first_result = await e2e.wait_for_new_result(olivia, timeout=60)
    e2e.record_time_to_image(imagine_label(LONG), time.monotonic() - started)
    second_result = await e2e.wait_for_new_result(carol, timeout=60)
    e2e.record_time_to_image(imagine_label({}, "queued behind the long job"), time.monotonic() - queued_at)
    assert first_result.id < second_result.id
    assert long.id in server.interactions and long.ack_latency is not None and long.ack_latency < ACK_DEADLINE


@pytest.mark.timeout(90)
async def test_burst_from_many_members_all_acknowledged_and_each_delivered_once(
        discord_server: LocalDiscordServer, bot: RunningBot, e2e: E2E) -> None:
    server = discord_server
    members = [server.add_member(server.guild, f"burst{i}") for i in range(12)]
    started = time.monotonic()
    interactions = await asyncio.gather(*(
        server.send_command(member, server.general, "imagine", {"prompt": f"burst {i}", "count": 2})
        for i, member in enumerate(members)))
    for interaction in interactions:
        await interaction.wait_for_ack(timeout=ACK_DEADLINE + 1)
        assert interaction.ack_latency is not None and interaction.ack_latency < ACK_DEADLINE
        assert not interaction.late_callback
    for member in members:
        result = await server.wait_for_message(is_result_for(member), timeout=60, include_existing=True)
        assert len(result.attachments) == 2
    e2e.record_time_to_image(imagine_label({"count": 2}, "12 members at once, until the last"),
                             time.monotonic() - started)
    results = [m for m in server.bot_messages() if png_of(m) is not None]
    assert len(results) == len(members)
    jobs = [job for member in members
            for job in await repository.jobs_for_user(bot.services.db, server.guild.id, member.id)]
    assert len(jobs) == len(members) and {job.status for job in jobs} == {"done"}


# --- 9. SIGKILL with queued jobs, restart, everything delivered -------------------------------------------------


def _statuses(db_path: Path) -> dict[int, str]:
    try:
        with contextlib.closing(sqlite3.connect(db_path, timeout=5)) as conn:
            return dict(conn.execute("SELECT id, status FROM jobs ORDER BY id").fetchall())
    except sqlite3.OperationalError:  # not created or not migrated yet
        return {}


def _jobs(db_path: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(db_path, timeout=5)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT * FROM jobs ORDER BY id")]


def _image_paths(db_path: Path, job_id: int) -> list[str]:
    with contextlib.closing(sqlite3.connect(db_path, timeout=5)) as conn:
        return [row[0] for row in conn.execute("SELECT path FROM images WHERE job_id = ?", (job_id,))]


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_sigkill_with_queued_jobs_then_restart_delivers_every_job(
        discord_server: LocalDiscordServer, tmp_path: Path, e2e: E2E) -> None:
    server = discord_server
    db_path = tmp_path / "imagine.db"
    # The long job must still be running when the last command is journalled, however slow this machine is: 300
    # steps at 256x256 take seconds even on a quiet machine, while journalling three commands takes milliseconds.
    config = e2e_config(server, tmp_path, generation={"max_batch_size": 1, "max_steps": 300}, logging={"level": "INFO"})
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    bot = BotProcess(config_path, tmp_path / "bot.log")
    bob, carol, olivia = (server.members[n] for n in ("bob", "carol", "olivia"))
    requests = [  # the first runs long enough to be killed while running; the rest wait behind it
        (bob, {"prompt": "a long job, a harbour at night", "steps": 300, "width": 256, "height": 256, "seed": 11}),
        (carol, {"prompt": "a queued job, a green apple", "steps": 3, "seed": 22}),
        (olivia, {"prompt": "a queued job, a yellow duck", "steps": 3, "seed": 33}),
        (bob, {"prompt": "a queued job, a wooden chair", "steps": 3, "width": 96, "seed": 44}),
    ]
    try:
        bot.start()
        await bot.wait_started(1)
        interactions = []

        def journalled(count: int) -> Callable[[], dict[int, str] | None]:
            def check() -> dict[int, str] | None:
                statuses = _statuses(db_path)
                values = list(statuses.values())
                assert "done" not in values, f"a job finished before the kill: {statuses}"
                return statuses if len(values) == count and "running" in values else None
            return check

        for n, (member, options) in enumerate(requests, start=1):
            interactions.append(await server.send_command(member, server.general, "imagine", options))
            if n == 1:  # the long one runs first; the others queue behind it
                await eventually(journalled(1), "the long job running", timeout=60, interval=0.02)
        for interaction in interactions:  # a separate process, the same 3 s rule
            await interaction.wait_for_ack(timeout=ACK_DEADLINE + 1)
            assert interaction.ack_latency is not None and interaction.ack_latency < ACK_DEADLINE
        before = await eventually(journalled(len(requests)), "every job journalled, one running", timeout=60,
                                  interval=0.02)
        assert sorted(before.values()) == ["queued"] * (len(requests) - 1) + ["running"], before
        await bot.kill()
        assert set(_statuses(db_path).values()) <= {"queued", "running"}, before

        # A new process on the same database and images dir picks every job up again.
        bot.start()
        await bot.wait_started(2)

        def all_done() -> bool:
            statuses = _statuses(db_path)
            assert not set(statuses.values()) - {"queued", "running", "done"}, statuses
            # "done" is recorded before the posted message's id: wait for the ids too, not only the status.
            return (len(statuses) == len(requests) and set(statuses.values()) == {"done"}
                    and all(job["message_id"] is not None for job in _jobs(db_path)))

        await eventually(all_done, "every job done and posted after the restart", timeout=120, interval=0.2)
        jobs = _jobs(db_path)
        by_seed = {options["seed"]: (member, options, interaction)
                   for (member, options), interaction in zip(requests, interactions, strict=True)}
        assert sorted(job["seed"] for job in jobs) == sorted(by_seed)
        for job in jobs:  # journalled in the order the bot handled the commands, not necessarily sent
            member, options, interaction = by_seed[job["seed"]]
            assert job["user_id"] == member.id and job["prompt"] == options["prompt"]
            assert job["message_id"] is not None, f"job {job['id']} is done but has no result message"
            message = server.messages[int(job["message_id"])]
            assert is_result_for(member)(message), f"job {job['id']}: not a public PNG result: {message}"
            assert _seed_in_png(message) == options["seed"]
            # The tokens are still valid (15 min), so through the interaction's webhook, as a public followup.
            assert message.id in interaction.message_ids and message.id != interaction.original_message_id
            paths = _image_paths(db_path, job["id"])
            assert len(paths) == 1 and (tmp_path / "images" / paths[0]).is_file()
        results = [m for m in server.bot_messages() if png_of(m) is not None]
        assert len(results) == len(requests), "a job was delivered twice (or a stray image was posted)"
        assert all(not m.ephemeral for m in results)

        # And an orderly stop (SIGTERM) ends the idle process cleanly, without waiting out a shutdown timeout.
        stopping = time.monotonic()
        assert await bot.stop() == 0, "SIGTERM did not stop the bot cleanly"
        assert time.monotonic() - stopping < 25, "the orderly stop waited for something that never came"
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- bot log (tail) ---\n{bot.tail()}") from None
    finally:
        await bot.stop()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_sigkill_after_images_saved_but_before_posting_still_delivers(
        discord_server: LocalDiscordServer, tmp_path: Path) -> None:
    """The window between "images saved, job done" and "result posted": a crash there must not lose the result.

    The result's webhook POST gets a 429 asking to wait a minute, so the process is caught in exactly that window
    (job ``done`` in the journal, nothing posted) when it is killed.
    """
    server = discord_server
    db_path = tmp_path / "imagine.db"
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(e2e_config(server, tmp_path)), encoding="utf-8")
    bot = BotProcess(config_path, tmp_path / "bot.log")
    bob = server.members["bob"]
    try:
        bot.start()
        await bot.wait_started(1)
        stalled = server.fail_route("POST", "/webhooks/*/*", 429, times=1, retry_after=60)
        interaction = await server.send_command(bob, server.general, "imagine", {"prompt": "a lost parcel",
                                                                                 "seed": 5})
        await eventually(lambda: stalled.hits == 1 and list(_statuses(db_path).values()) == ["done"],
                         "the job done and its result post held back", timeout=60, interval=0.05)
        await bot.kill()
        server.clear_faults()
        job = _jobs(db_path)[0]
        assert job["status"] == "done" and job["message_id"] is None
        assert _image_paths(db_path, job["id"]), "the image was saved before the crash"

        bot.start()
        await bot.wait_started(2)
        result = await server.wait_for_message(is_result_for(bob), timeout=60, include_existing=True)
        assert _seed_in_png(result) == 5
        assert result.id in interaction.message_ids and result.id != interaction.original_message_id
        await eventually(lambda: _jobs(db_path)[0]["message_id"] == result.id, "the result recorded")
    except (AssertionError, TimeoutError) as exc:
        raise AssertionError(f"{exc}\n--- bot log (tail) ---\n{bot.tail()}") from None
    finally:
        await bot.stop()


# --- 10. gateway dropped while a job runs ------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_gateway_drop_while_job_runs_resumes_and_loses_nothing(
        discord_server: LocalDiscordServer, bot: RunningBot, e2e: E2E) -> None:
    server = discord_server
    bob, carol = server.members["bob"], server.members["carol"]
    _, earlier = await e2e.imagine(carol, "a paper lantern", seed=3)
    earlier_job = await e2e.job_of(bot, earlier)
    identifies = server.identify_count

    await server.send_command(bob, server.general, "imagine",
                              {"prompt": "a stormy sea", "steps": 16, "width": 192, "height": 192, "seed": 8})
    job = await eventually(lambda: _only_job(bot, server, bob), "the job journalled")
    await eventually(lambda: _running(bot, job.id), "the job running", timeout=30)

    assert server.drop_gateway() == 1
    assert not server.connected
    # A dispatch the bot misses while disconnected: carol asks for a rerun by reaction.
    await server.react(carol, earlier, "🔄")

    result = await e2e.wait_for_new_result(bob, timeout=60)
    assert _seed_in_png(result) == 8
    await eventually(lambda: server.resume_count >= 1 and server.connected, "the client resumed", timeout=30)
    assert server.identify_count == identifies, "the client identified again instead of resuming"

    # The missed reaction was replayed on RESUME: the rerun happens.
    rerun = await e2e.wait_for_new_result(carol, exclude={earlier.id}, timeout=60)
    child = await e2e.job_of(bot, rerun)
    assert child.parent_job_id == earlier_job.id

    # And a later command works.
    _, later = await e2e.imagine(bob, "after the storm")
    assert png_of(later) is not None
    done = await e2e.job_with_status(bot, job.id, "done")
    assert done.message_id == result.id
    assert len([m for m in server.bot_messages() if png_of(m) is not None]) == 4  # no duplicate, nothing lost


# --- 11. 429 from the interaction webhook ------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_429_on_followup_is_retried_and_result_arrives(
        discord_server: LocalDiscordServer, bot: RunningBot, e2e: E2E) -> None:
    server = discord_server
    bob = server.members["bob"]
    rule = server.fail_route("POST", "/webhooks/*/*", 429, times=1, retry_after=0.3)

    interaction, result = await e2e.imagine(bob, "a lighthouse in the rain", seed=99)
    assert rule.hits == 1
    assert _seed_in_png(result) == 99
    assert result.id in interaction.message_ids, "not delivered through the interaction webhook"
    posts = server.calls("POST", "/webhooks/*/*")
    assert [call.status for call in posts] == [429, 200]
    assert posts[1].time - posts[0].time >= 0.25, "retried before the Retry-After"
    job = await e2e.job_of(bot, result)
    assert job.status == "done"
    await interaction.wait_for_response(timeout=10, predicate=lambda m: m.content.startswith("Done"))
    assert len([m for m in server.bot_messages() if png_of(m) is not None]) == 1  # retried once, posted once


# --- a job recovered after a restart is still posted publicly --------------------------------------------------


@pytest.mark.timeout(90)
async def test_recovered_job_whose_deferred_response_was_never_edited_is_posted_publicly(
        discord_server: LocalDiscordServer, bots: BotFactory, e2e: E2E) -> None:
    """Discord turns the first followup after a deferred response into an edit of that (ephemeral) response.
    A job recovered after a restart whose "thinking" response was never edited (the process stopped before its
    first progress edit; here that edit fails) must still be posted publicly, not only to its member."""
    server = discord_server
    settings = bots.settings()
    first = await bots.start(settings)
    olivia, bob = server.members["olivia"], server.members["bob"]
    failing = server.fail_route("PATCH", "/webhooks/*/*/messages/@original", 404, times=10_000)

    await server.send_command(olivia, server.general, "imagine",
                              {"prompt": "a long one", **LONG})
    long_job = await eventually(lambda: _only_job(first, server, olivia), "the long job journalled")
    await eventually(lambda: _running(first, long_job.id), "the long job running", timeout=30)
    waiting = await server.send_command(bob, server.general, "imagine", {"prompt": "a quiet harbour", "seed": 12})
    job = await eventually(lambda: _only_job(first, server, bob), "bob's job journalled")
    await eventually(lambda: any(c.method == "PATCH" and waiting.token in c.path and c.status == 404
                                 for c in server.rest_log), "bob's first progress edit refused")
    server.clear_faults()
    assert failing.hits >= 2
    still = await repository.get_job(first.services.db, job.id)
    assert still is not None and still.status == "queued", "bob's job should still wait behind the long one"
    await bots.stop(first)  # orderly: the running job is delivered, bob's stays journalled
    assert waiting.original is not None and waiting.original.loading, "bob's response should still be thinking"

    second = await bots.start(settings)
    result = await server.wait_for_message(lambda m: m.id in waiting.message_ids and png_of(m) is not None,
                                           timeout=60, include_existing=True)
    assert not result.ephemeral, "the result replaced the member's ephemeral response instead of being posted"
    assert result.id != waiting.original_message_id
    assert is_result_for(bob)(result)
    assert _seed_in_png(result) == 12
    original = waiting.original
    assert original is not None and original.ephemeral and not original.loading and png_of(original) is None
    done = await e2e.job_of(second, result)  # the id is recorded just after the post: wait for it
    assert done.id == job.id and done.status == "done"


# --- the interaction token expired before the result: a channel message instead ---------------------------------


@pytest.mark.timeout(60)
async def test_expired_interaction_token_result_posted_in_channel(
        discord_server: LocalDiscordServer, bot: RunningBot, e2e: E2E) -> None:
    server = discord_server
    bob = server.members["bob"]
    server.token_ttl_seconds = 0.3  # Discord's is 15 min; the webhook then answers 401 code 50027

    started = time.monotonic()
    interaction = await server.send_command(bob, server.general, "imagine",
                                            {"prompt": "a slow sunrise", "seed": 4, **LONG})
    await interaction.wait_for_ack(timeout=ACK_DEADLINE)
    result = await e2e.wait_for_new_result(bob, timeout=60)
    e2e.record_time_to_image(imagine_label(LONG, "token expired"), time.monotonic() - started)
    if time.monotonic() - started < server.token_ttl_seconds + 0.1:
        pytest.skip("the job finished before the token expired; nothing to check")
    assert result.id not in interaction.message_ids and result.interaction_id is None  # a plain channel message
    assert result.channel_id == server.general.id and f"<@{bob.id}>" in result.content
    assert _seed_in_png(result) == 4
    assert any(c.status == 401 for c in server.calls("POST", "/webhooks/*/*"))
    job = await e2e.job_of(bot, result)
    assert job.status == "done" and job.message_id == result.id


# --- overload: the queue is full ----------------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_queue_full_refused_once_clearly_without_using_the_allowance(
        discord_server: LocalDiscordServer, bots: BotFactory, e2e: E2E) -> None:
    server = discord_server
    running = await bots.start(bots.settings(generation={"queue_size": 1, "max_batch_size": 1},
                                             rate_limits={"images_per_window": 1}))
    bob, carol, olivia = (server.members[n] for n in ("bob", "carol", "olivia"))
    await server.send_command(bob, server.general, "imagine", {"prompt": "a long one", **LONG})
    long_job = await eventually(lambda: _only_job(running, server, bob), "the long job journalled")
    await eventually(lambda: _running(running, long_job.id), "the long job running", timeout=30)
    waiting = await server.send_command(carol, server.general, "imagine", {"prompt": "a waiting one"})
    assert "position 1" in (await waiting.wait_for_response(timeout=10)).content

    full = await server.send_command(olivia, server.general, "imagine", {"prompt": "one too many"})
    answer = await full.wait_for_response(timeout=10)
    assert full.ack_latency is not None and full.ack_latency < ACK_DEADLINE
    assert answer.ephemeral and "queue is full" in answer.content.lower()
    assert answer.content.lower().count("try again") == 1, answer.content
    refused = await _only_job(running, server, olivia)
    assert refused is not None and refused.status == "refused"

    # bob gives up his long job; carol is served, and olivia's refused request did not use her 1 image.
    cancel = await server.send_command(bob, server.general, "cancel")
    assert "cancelled" in (await cancel.wait_for_response(timeout=10)).content
    await e2e.job_with_status(running, long_job.id, "cancelled")
    await e2e.wait_for_new_result(carol, timeout=60)
    _, result = await e2e.imagine(olivia, "one more, later")
    assert png_of(result) is not None
