"""Revision 0002 on a real SQLite file: up, down, up again; its constraints hold in the migrated schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from bot.storage.db import current_revision, run_alembic

CONTEST_TABLES = {"contests", "contest_entries", "contest_votes", "contest_results"}


def _tables(path: Path) -> set[str]:
    engine = create_engine(f"sqlite:///{path}")
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_0002_upgrade_downgrade(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    url = f"sqlite+aiosqlite:///{path}"
    run_alembic(url, "upgrade", "0001")
    assert not CONTEST_TABLES & _tables(path)
    run_alembic(url, "upgrade", "0002")
    assert current_revision(url) == "0002"
    assert _tables(path) >= CONTEST_TABLES
    run_alembic(url, "downgrade", "0001")
    assert current_revision(url) == "0001"
    assert not CONTEST_TABLES & _tables(path)
    assert "jobs" in _tables(path)
    run_alembic(url, "upgrade", "head")
    assert _tables(path) >= CONTEST_TABLES


def test_0002_constraints(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    run_alembic(f"sqlite+aiosqlite:///{path}", "upgrade", "0002")
    engine = create_engine(f"sqlite:///{path}")
    insert_contest = text(
        "INSERT INTO contests (guild_id, channel_id, theme, created_by, starts_at, submit_ends_at, vote_ends_at, "
        "state) VALUES (1, :channel, 't', 1, '2026-01-01 00:00:00', '2026-01-01 01:00:00', '2026-01-01 02:00:00', "
        ":state)")
    try:
        with engine.begin() as conn:
            conn.execute(insert_contest, {"channel": 5, "state": "finished"})
            conn.execute(insert_contest, {"channel": 5, "state": "running"})
        with pytest.raises(IntegrityError), engine.begin() as conn:  # a second running contest in channel 5
            conn.execute(insert_contest, {"channel": 5, "state": "running"})
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO contest_entries (contest_id, user_id, image_index, prompt, submitted_at) "
                              "VALUES (2, 7, 0, 'p', '2026-01-01 00:10:00')"))
            conn.execute(text("INSERT INTO contest_votes (entry_id, voter_id, created_at) "
                              "VALUES (1, 8, '2026-01-01 01:10:00')"))
        with pytest.raises(IntegrityError), engine.begin() as conn:  # double vote
            conn.execute(text("INSERT INTO contest_votes (entry_id, voter_id, created_at) "
                              "VALUES (1, 8, '2026-01-01 01:11:00')"))
    finally:
        engine.dispose()
