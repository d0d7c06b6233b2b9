from __future__ import annotations

import dataclasses
from datetime import UTC

import pytest

from bot.storage import repository as repo
from bot.storage.db import Database
from bot.storage.records import ImageRecord, JobRecord
from tests.helpers import new_job

JOB = dict(guild_id=10, channel_id=20, user_id=30, prompt="a cat", negative_prompt="blur", seed=42, steps=4,
           guidance=7.5, width=64, height=64, count=2, scheduler="euler_a", model="tiny", interaction_id=40,
           interaction_token="tok", application_id=50)


async def test_job_lifecycle_and_records(db: Database) -> None:
    job = await new_job(db, **JOB)
    assert isinstance(job, JobRecord) and not any(
        hasattr(getattr(job, f.name), "_sa_instance_state") for f in dataclasses.fields(job))
    assert job.status == "queued" and job.params.seed == 42 and job.queued_at.tzinfo is UTC
    assert job.interaction_token == "tok" and job.worker_job_id == str(job.id)
    running = await repo.mark_running(db, job.id)
    assert running.status == "running" and running.started_at is not None
    done = await repo.mark_done(db, job.id, prompt_truncated=True)
    assert done.status == "done" and done.finished_at is not None and done.prompt_truncated
    # A late event never moves a finished job back.
    assert (await repo.mark_failed(db, job.id, "late")).status == "done"
    assert (await repo.mark_running(db, job.id)).status == "done"
    assert (await repo.get_job(db, job.id)).error is None
    assert await repo.get_job(db, 999) is None


async def test_failed_refused_cancelled_requeue(db: Database) -> None:
    a = await new_job(db, **JOB)
    b = await new_job(db, **JOB)
    c = await new_job(db, **JOB)
    failed = await repo.mark_failed(db, a.id, "oom")
    assert failed.error == "oom" and failed.started_at is None  # never ran
    quick = await repo.mark_done(db, (await new_job(db, **JOB)).id)  # finished before "running" was seen
    assert quick.started_at == quick.finished_at
    assert (await repo.mark_refused(db, b.id, "queue full")).status == "refused"
    await repo.mark_running(db, c.id)
    again = await repo.requeue(db, c.id)
    assert again.status == "queued" and again.started_at is None
    assert (await repo.mark_cancelled(db, c.id)).status == "cancelled"
    with pytest.raises(LookupError):
        await repo.mark_done(db, 12345)


async def test_unfinished_jobs_in_original_order_and_user_history(db: Database) -> None:
    jobs = [await new_job(db, **{**JOB, "prompt": f"p{i}"}) for i in range(5)]
    await repo.mark_running(db, jobs[3].id)
    await repo.mark_done(db, jobs[1].id)
    assert [j.id for j in await repo.unfinished_jobs(db)] == [jobs[0].id, jobs[2].id, jobs[3].id, jobs[4].id]
    history = await repo.jobs_for_user(db, 10, 30, limit=3)
    assert [j.params.prompt for j in history] == ["p4", "p3", "p2"]
    assert await repo.jobs_for_user(db, 11, 30) == []
    assert await repo.count_active_jobs(db, 10, 30) == 4


async def test_images_and_find_by_message(db: Database) -> None:
    job = await new_job(db, **JOB)
    parent_rerun = await new_job(db, **{**JOB, "parent_job_id": job.id})
    assert parent_rerun.parent_job_id == job.id
    img = await repo.add_image(db, job.id, index=0, seed=42, path="0000/1-0.png", sha256="a" * 64, size_bytes=10,
                               width=64, height=64)
    assert isinstance(img, ImageRecord) and not img.pruned and img.message_id is None
    # Running again after a restart replaces the row of the same index.
    again = await repo.add_image(db, job.id, index=0, seed=42, path="0000/1-0.png", sha256="b" * 64, size_bytes=11,
                                 width=64, height=64, nsfw=True)
    assert again.id == img.id and again.sha256 == "b" * 64 and again.nsfw
    await repo.add_image(db, job.id, index=1, seed=43, path="0000/1-1.png", sha256="c" * 64, size_bytes=12,
                         width=64, height=64)
    assert [i.index for i in await repo.images_for_job(db, job.id)] == [0, 1]

    assert await repo.find_job_by_message(db, 777) is None
    await repo.set_job_message(db, job.id, 777)
    assert (await repo.find_job_by_message(db, 777)).id == job.id
    posted = await repo.set_image_message(db, job.id, 888, indexes=[1])
    assert [i.message_id for i in posted] == [None, 888]
    assert (await repo.find_job_by_message(db, 888)).id == job.id
    await repo.set_image_nsfw(db, img.id, False)
    assert not (await repo.get_image(db, img.id)).nsfw


async def test_moderation_events_store_hash_and_excerpt(db: Database) -> None:
    event = await repo.record_moderation_event(db, guild_id=10, user_id=30, prompt="x" * 500, category="gore",
                                               rule="term:blood", channel_id=20, source="rerun")
    assert len(event.prompt_sha256) == 64 and len(event.prompt_excerpt) == repo.EXCERPT_CHARS
    assert event.source == "rerun" and event.created_at.tzinfo is UTC
    assert [e.id for e in await repo.moderation_events(db, 10)] == [event.id]


async def test_guild_settings(db: Database) -> None:
    empty = await repo.get_guild_settings(db, 5)
    assert empty.blocked_terms == () and empty.nsfw_policy is None and empty.images_per_window is None
    assert await repo.add_blocked_terms(db, 5, [" zebra ", "apple", "", "apple"]) == ("apple", "zebra")
    assert await repo.remove_blocked_terms(db, 5, ["ZEBRA"]) == ("apple",)
    updated = await repo.update_guild_settings(db, 5, nsfw_policy="spoiler", images_per_window=7,
                                               contest_channel_id=99)
    assert (updated.nsfw_policy, updated.images_per_window, updated.contest_channel_id) == ("spoiler", 7, 99)
    cleared = await repo.update_guild_settings(db, 5, images_per_window=None)
    assert cleared.images_per_window is None and cleared.nsfw_policy == "spoiler"
    assert await repo.list_blocked_terms(db, 5) == ("apple",)


async def test_members_and_stats(db: Database) -> None:
    assert await repo.member_stats(db, 30) is None
    await new_job(db, **JOB)
    b = await new_job(db, **{**JOB, "user_id": 31, "count": 1})
    stats = await repo.member_stats(db, 30)
    assert (stats.jobs, stats.images) == (1, 2) and stats.first_seen <= stats.last_seen
    touched = await repo.touch_member(db, 30)
    assert touched.jobs == 1 and touched.last_seen >= stats.last_seen
    await repo.add_image(db, b.id, index=0, seed=1, path="p", sha256="d" * 64, size_bytes=1, width=8, height=8)
    await repo.mark_done(db, b.id)
    await repo.record_moderation_event(db, guild_id=10, user_id=30, prompt="bad", category=None, rule=None)
    g = await repo.guild_stats(db, 10)
    assert g.jobs_by_status == {"queued": 1, "done": 1} and g.images == 1 and g.members == 2
    assert g.top_members == ((31, 1),) and g.moderation_events == 1
