"""Revision 0005 on a real SQLite file: the timers table, and timers for the contests already under way."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, inspect, text

from bot.clock import ManualClock
from bot.contests.service import ContestService
from bot.storage.db import Database, current_revision, run_alembic
from bot.timers.timers import Timers

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BEFORE = "0002"  # the revision 0005 follows


def _at(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).replace(tzinfo=None).isoformat(sep=" ")


CONTESTS = [  # channel, state, voting announced, finished, results posted
    (1, "running", None, None, None),
    (2, "running", _at(1), None, None),
    (3, "finished", _at(1), _at(2), None),
    (4, "finished", _at(1), _at(2), _at(2)),
    (5, "cancelled", None, _at(0.5), _at(0.5)),
]


def _seed(path: Path) -> None:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            for channel, state, announced, finished, posted in CONTESTS:
                conn.execute(text(
                    "INSERT INTO contests (id, guild_id, channel_id, theme, created_by, starts_at, submit_ends_at, "
                    "vote_ends_at, state, voting_announced_at, finished_at, results_posted_at) VALUES (:id, 9, :id, "
                    "'t', 1, :start, :submit, :vote, :state, :announced, :finished, :posted)"),
                    {"id": channel, "start": _at(0), "submit": _at(1), "vote": _at(2), "state": state,
                     "announced": announced, "finished": finished, "posted": posted})
    finally:
        engine.dispose()


def _timers(path: Path) -> list[tuple[str, str, str]] | None:
    engine = create_engine(f"sqlite:///{path}")
    try:
        if "timers" not in inspect(engine).get_table_names():
            return None
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT event, due_at, payload FROM timers ORDER BY id"))
            return [(event, str(due_at), payload.replace(" ", "")) for event, due_at, payload in rows]
    finally:
        engine.dispose()


async def test_0005_backfills_the_contests_under_way_and_downgrades(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.to_thread(run_alembic, url, "upgrade", BEFORE)
    _seed(path)
    await asyncio.to_thread(run_alembic, url, "upgrade", "0005")
    assert _timers(path) == [
        ("contest_voting", _at(1), '{"contest_id":1}'),  # running, voting not announced yet
        ("contest_results", _at(2), '{"contest_id":1}'),
        ("contest_results", _at(2), '{"contest_id":2}'),  # running, voting announced
        ("contest_results", _at(2), '{"contest_id":3}'),  # finished, results never posted: due at once
    ]

    # The rows are what the contest handlers expect: every contest under way ends and gets its results.
    db = Database.connect(url)
    timers = Timers(db, ManualClock(T0 + timedelta(hours=3)))
    ContestService(db, timers)
    timers.start()
    try:
        await timers.wait_settled()
        assert timers.current is None
        async with db.session() as session:
            posted = dict((await session.execute(
                text("SELECT id, state FROM contests WHERE results_posted_at IS NOT NULL"))).all())
        assert posted == {1: "finished", 2: "finished", 3: "finished", 4: "finished", 5: "cancelled"}
    finally:
        await timers.stop()
        await db.close()

    await asyncio.to_thread(run_alembic, url, "downgrade", BEFORE)
    assert await asyncio.to_thread(current_revision, url) == BEFORE and _timers(path) is None
    await asyncio.to_thread(run_alembic, url, "upgrade", "head")
    assert _timers(path) == []


def test_0005_renders_for_postgresql(capsys) -> None:  # noqa: ANN001
    """Offline (--sql): the backfill is plain SQL with PostgreSQL's JSON builder, so it needs no server."""
    from alembic import command

    from bot.storage.db import alembic_config

    command.upgrade(alembic_config("postgresql+asyncpg://u:p@localhost/imagine"), f"{BEFORE}:0005", sql=True)
    sql = capsys.readouterr().out
    assert "CREATE TABLE timers" in sql and "CREATE INDEX ix_timers_due_at" in sql
    assert sql.count("INSERT INTO timers") == 3 and "json_build_object('contest_id', contests.id)" in sql
    assert "json_object(" not in sql
