"""The inbox: written before the ack, left only by commands that never became jobs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import IntegrityError

from bot.storage import inbox
from bot.storage import repository as repo
from bot.storage.db import Database
from tests.helpers import new_job

ENTRY = dict(application_id=50, token="tok" * 30, guild_id=10, channel_id=20, user_id=30, role_ids=(7, 8),
             options={"prompt": "a cat", "seed": None, "count": 2, "guidance": 7.5})
JOB = dict(guild_id=10, channel_id=20, user_id=30, prompt="a cat", negative_prompt="", seed=42, steps=4,
           guidance=7.5, width=64, height=64, count=2, scheduler="euler_a", model="tiny", interaction_token="tok",
           application_id=50)
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


async def test_entries_come_back_in_the_order_received_with_everything_needed(db: Database) -> None:
    await inbox.record(db, interaction_id=2, received_at=T0 + timedelta(seconds=1), **ENTRY)
    await inbox.record(db, interaction_id=1, received_at=T0, source="rerun_button", parent_job_id=99,
                       **{**ENTRY, "options": {}})
    first, second = await inbox.pending(db)
    assert (first.interaction_id, second.interaction_id) == (1, 2)
    assert first.source == "rerun_button" and first.parent_job_id == 99 and first.options == {}
    assert second.options == ENTRY["options"] and second.role_ids == (7, 8) and second.token == ENTRY["token"]
    assert second.received_at == T0 + timedelta(seconds=1) and second.received_at.tzinfo is UTC
    assert second.source == "imagine" and second.guild_id == 10 and second.application_id == 50


async def test_one_entry_per_interaction(db: Database) -> None:
    await inbox.record(db, interaction_id=5, **ENTRY)
    with pytest.raises(IntegrityError):
        await inbox.record(db, interaction_id=5, **ENTRY)
    assert await inbox.forget(db, 5) and not await inbox.forget(db, 5)
    assert await inbox.pending(db) == []


async def test_journalling_the_job_deletes_its_entry_in_the_same_transaction(db: Database) -> None:
    await inbox.record(db, interaction_id=40, **ENTRY)
    await inbox.record(db, interaction_id=41, **ENTRY)
    job = await new_job(db, interaction_id=40, **JOB)
    assert [entry.interaction_id for entry in await inbox.pending(db)] == [41]
    assert (await repo.get_job(db, job.id)).interaction_id == 40

    # A job whose INSERT fails (its parent does not exist) leaves the entry: the command is not lost.
    with pytest.raises(IntegrityError):
        await new_job(db, interaction_id=41, parent_job_id=12345, **JOB)
    assert [entry.interaction_id for entry in await inbox.pending(db)] == [41]
    assert len(await repo.jobs_for_user(db, 10, 30)) == 1
