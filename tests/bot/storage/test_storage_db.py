from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import select, text

from bot.clock import utcnow
from bot.storage.db import Database, sqlite_file
from bot.storage.models import Member


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
