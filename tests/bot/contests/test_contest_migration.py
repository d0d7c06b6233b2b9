"""Revision 0002 on real SQLite and PostgreSQL databases: up, down, up again; its constraints hold in the
migrated schema."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from bot.storage.db import current_revision, run_alembic
from tests.helpers import on_connection

CONTEST_TABLES = {"contests", "contest_entries", "contest_votes", "contest_results"}


def _tables(url: str) -> set[str]:
    return on_connection(url, lambda c: set(inspect(c).get_table_names()))


def test_0002_upgrade_downgrade(db_url: str) -> None:
    run_alembic(db_url, "upgrade", "0001")
    assert not CONTEST_TABLES & _tables(db_url)
    run_alembic(db_url, "upgrade", "0002")
    assert current_revision(db_url) == "0002"
    assert _tables(db_url) >= CONTEST_TABLES
    run_alembic(db_url, "downgrade", "0001")
    assert current_revision(db_url) == "0001"
    assert not CONTEST_TABLES & _tables(db_url)
    assert "jobs" in _tables(db_url)
    run_alembic(db_url, "upgrade", "head")
    assert _tables(db_url) >= CONTEST_TABLES


def test_0002_constraints(db_url: str) -> None:
    run_alembic(db_url, "upgrade", "0002")
    insert_contest = text(
        "INSERT INTO contests (guild_id, channel_id, theme, created_by, starts_at, submit_ends_at, vote_ends_at, "
        "state) VALUES (1, :channel, 't', 1, '2026-01-01 00:00:00', '2026-01-01 01:00:00', '2026-01-01 02:00:00', "
        ":state)")

    def run(*statements: tuple[Any, dict[str, Any]]) -> None:
        def work(conn: Connection) -> None:
            for statement, params in statements:
                conn.execute(statement, params)

        on_connection(db_url, work)

    run((insert_contest, {"channel": 5, "state": "finished"}), (insert_contest, {"channel": 5, "state": "running"}))
    with pytest.raises(IntegrityError):  # a second running contest in channel 5
        run((insert_contest, {"channel": 5, "state": "running"}))
    run((text("INSERT INTO contest_entries (contest_id, user_id, image_index, prompt, submitted_at) "
              "VALUES (2, 7, 0, 'p', '2026-01-01 00:10:00')"), {}),
        (text("INSERT INTO contest_votes (entry_id, voter_id, created_at) VALUES (1, 8, '2026-01-01 01:10:00')"), {}))
    with pytest.raises(IntegrityError):  # double vote
        run((text("INSERT INTO contest_votes (entry_id, voter_id, created_at) "
                  "VALUES (1, 8, '2026-01-01 01:11:00')"), {}))
