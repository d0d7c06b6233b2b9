"""The database handle on SQLite and PostgreSQL: transactions, locks, time zones."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import event, select, text

from bot.clock import utcnow
from bot.storage import repository as repo
from bot.storage.db import Database, run_to_completion, sqlite_file
from bot.storage.models import Job, Member
from tests.helpers import new_job

sqlite_only = pytest.mark.parametrize("db_backend", ["sqlite"])


async def test_sqlite_pragmas_on_every_connection_and_parent_dir_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "x.db"
    db = Database.connect(f"sqlite+aiosqlite:///{path}")
    try:
        assert path.parent.is_dir()

        async def pragmas() -> tuple:
            async with db.session() as s:
                return (
                    (await s.execute(text("PRAGMA journal_mode"))).scalar(),
                    (await s.execute(text("PRAGMA foreign_keys"))).scalar(),
                    (await s.execute(text("PRAGMA busy_timeout"))).scalar(),
                )

        results = await asyncio.gather(*(pragmas() for _ in range(4)))  # several pooled connections
        assert all(r == ("wal", 1, 30000) for r in results)
    finally:
        await db.close()


async def test_session_commits_or_rolls_back(db: Database) -> None:
    now = utcnow()
    with pytest.raises(RuntimeError):
        async with db.session(write=True) as s:
            s.add(Member(user_id=1, first_seen=now, last_seen=now, total_jobs=0, total_images=0))
            await s.flush()
            raise RuntimeError("boom")
    async with db.session(write=True) as s:
        s.add(Member(user_id=2, first_seen=now, last_seen=now, total_jobs=0, total_images=0))
    async with db.session() as s:
        ids = list(await s.scalars(select(Member.user_id)))
    assert ids == [2]


@pytest.mark.parametrize("moment", ["reset", "before_cursor_execute"])
async def test_a_task_cancelled_mid_transaction_leaves_a_clean_pool(db: Database, moment: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A stop (task.cancel()) that lands while the pool resets the connection a commit gave back, or while a
    statement runs: the commit or the rollback still finishes, the caller sees the cancellation, and SQLAlchemy
    logs no "Exception during reset" traceback (an admin pressing Ctrl-C saw one in the playground's log)."""
    now = utcnow()
    caller: asyncio.Task[None] | None = None

    def cancel_the_caller(*_: object) -> None:
        if caller is not None and not caller.cancelling():
            caller.cancel()

    async def write() -> None:
        async with db.session(write=True) as s:
            s.add(Member(user_id=7, first_seen=now, last_seen=now, total_jobs=0, total_images=0))
            await s.flush()  # a statement inside the body: "before_cursor_execute" cancels before the commit

    event.listen(db.engine.sync_engine, moment, cancel_the_caller)
    try:
        with caplog.at_level(logging.WARNING, logger="sqlalchemy"):
            caller = asyncio.create_task(write())
            with pytest.raises(asyncio.CancelledError):
                await caller
    finally:
        event.remove(db.engine.sync_engine, moment, cancel_the_caller)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("sqlalchemy")] == []
    async with db.session() as s:  # the pool still works, and the transaction ended as it should have
        stored = list(await s.scalars(select(Member.user_id)))
    assert stored == ([7] if moment == "reset" else [])


async def test_run_to_completion_finishes_the_step_then_passes_the_cancellation_on() -> None:
    release, finished = asyncio.Event(), []

    async def step(fail: bool) -> str:
        await release.wait()
        finished.append(fail)
        if fail:
            raise RuntimeError("the commit failed")
        return "committed"

    release.set()
    assert await run_to_completion(step(False)) == "committed"
    release.clear()
    for fail in (False, True):
        caller = asyncio.create_task(run_to_completion(step(fail)))
        await asyncio.sleep(0)
        caller.cancel()
        await asyncio.sleep(0)
        assert not caller.done(), "the caller returned before its step had finished"
        release.set()
        with pytest.raises(asyncio.CancelledError):  # the caller's cancellation wins over the step's failure
            await caller
        release.clear()
    assert finished == [False, False, True]


@sqlite_only
async def test_concurrent_write_sessions_do_not_fail(db: Database) -> None:
    """Read-then-write transactions from many tasks: BEGIN IMMEDIATE makes them wait, never 'locked'."""

    async def bump(i: int) -> None:
        async with db.session(write=True) as s:
            member = await s.get(Member, 1)
            now = utcnow()
            if member is None:
                s.add(Member(user_id=1, first_seen=now, last_seen=now, total_jobs=1, total_images=0))
            else:
                member.total_jobs += 1

    await asyncio.gather(*(bump(i) for i in range(25)))
    async with db.session() as s:
        assert (await s.get(Member, 1)).total_jobs == 25


def test_sqlite_file_parsing() -> None:
    assert sqlite_file("sqlite+aiosqlite:///data/x.db") == Path("data/x.db")
    assert sqlite_file("sqlite+aiosqlite:///:memory:") is None
    assert sqlite_file("postgresql+asyncpg://u:p@h/db") is None


@sqlite_only
async def test_write_sessions_begin_immediate(db: Database) -> None:
    from sqlalchemy import event

    seen: list[str] = []

    def capture(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        if statement.startswith("BEGIN"):
            seen.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
    async with db.session() as s:
        await s.execute(text("SELECT 1"))
    async with db.session(write=True) as s:
        await s.execute(text("SELECT 1"))
    assert seen == ["BEGIN", "BEGIN IMMEDIATE"]


async def test_member_totals_exact_with_concurrent_writers_in_two_processes(db: Database) -> None:
    """Read-then-write of a member row from two engines (two bot processes): no increment is lost."""
    await repo.touch_member(db, 77, jobs=1, images=2)  # the row exists: every writer reads, then updates it
    other = Database.connect(db.url)
    try:
        await asyncio.gather(*(repo.touch_member(db if i % 2 else other, 77, jobs=1, images=2) for i in range(24)))
    finally:
        await other.close()
    stats = await repo.member_stats(db, 77)
    assert stats is not None and (stats.jobs, stats.images) == (25, 50)


async def test_timestamps_are_utc_and_time_zone_aware(db: Database) -> None:
    """Stored as UTC whatever the server's zone (the test PostgreSQL runs in Pacific/Chatham), read back aware."""
    job = await new_job(db, guild_id=1, channel_id=2, user_id=3, prompt="p", negative_prompt="", seed=1,
                                steps=1, guidance=1.0, width=8, height=8, count=1, scheduler="euler", model="tiny")
    assert job.queued_at.tzinfo is not None and job.queued_at.utcoffset() == timedelta(0)
    async with db.session() as session:
        stored = await session.scalar(text("SELECT queued_at FROM jobs WHERE id = :id"), {"id": job.id})
        if isinstance(stored, str):  # SQLite hands the raw text back
            stored = datetime.fromisoformat(stored)
        assert stored == job.queued_at.replace(tzinfo=None)  # the UTC wall-clock time, no zone stored
        india = timezone(timedelta(hours=5, minutes=30))
        same_instant = job.queued_at.astimezone(india)
        found = await session.scalar(select(Job.id).where(Job.queued_at == same_instant))
        later = await session.scalar(select(Job.id).where(Job.queued_at > same_instant - timedelta(seconds=1)))
    assert found == job.id and later == job.id
    with pytest.raises(Exception, match="naive datetime"):
        async with db.session(write=True) as session:
            await session.execute(select(Job.id).where(Job.queued_at < datetime(2026, 1, 1)))
    done = await repo.mark_done(db, job.id)
    assert done.finished_at is not None and done.finished_at.tzinfo == UTC
