"""The Alembic revisions on real, empty SQLite and PostgreSQL databases: round trip, no drift from the models,
and revision 0006's aggregates filled from the rows already there."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from bot.storage import repository
from bot.storage.cli import db_main
from bot.storage.db import Database, current_revision, run_alembic, upgrade_to_head
from bot.storage.records import GuildStats
from bot.storage.schema import metadata
from tests.helpers import new_job, on_connection

CORE_TABLES = {"members", "guild_settings", "jobs", "images", "moderation_events", "rate_limit_ledger"}
AGGREGATE_TABLES = {"guild_status_counts", "guild_member_counts", "guild_counters"}


def _tables(url: str) -> set[str]:
    return on_connection(url, lambda c: set(inspect(c).get_table_names()) - {"alembic_version"})


def _diff(url: str) -> list:
    def compare(conn: Connection) -> list:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True,
                                                     "render_as_batch": conn.dialect.name == "sqlite"})
        return compare_metadata(ctx, metadata)

    return on_connection(url, compare)


def test_upgrade_downgrade_upgrade_on_empty_database(db_url: str) -> None:
    run_alembic(db_url, "upgrade", "head")
    assert _tables(db_url) >= CORE_TABLES | AGGREGATE_TABLES
    head = current_revision(db_url)
    assert head is not None
    run_alembic(db_url, "downgrade", "base")
    assert _tables(db_url) == set() and current_revision(db_url) is None
    run_alembic(db_url, "upgrade", "head")
    assert current_revision(db_url) == head
    run_alembic(db_url, "downgrade", "0001")
    assert _tables(db_url) == CORE_TABLES and current_revision(db_url) == "0001"


def test_migrations_match_models(db_url: str) -> None:
    run_alembic(db_url, "upgrade", "head")
    assert _diff(db_url) == []


_OLD_ROWS = """
INSERT INTO jobs (id, guild_id, channel_id, user_id, prompt, negative_prompt, seed, steps, guidance, width,
                  height, count, scheduler, model, status, prompt_truncated, queued_at)
VALUES (1, 10, 1, 100, 'p', '', 1, 1, 1.0, 8, 8, 2, 'euler', 'tiny', 'done', false, '2026-01-01 00:00:00'),
       (2, 10, 1, 100, 'p', '', 1, 1, 1.0, 8, 8, 1, 'euler', 'tiny', 'failed', false, '2026-01-01 00:00:00'),
       (3, 10, 1, 200, 'p', '', 1, 1, 1.0, 8, 8, 1, 'euler', 'tiny', 'done', false, '2026-01-01 00:00:00'),
       (4, 20, 1, 100, 'p', '', 1, 1, 1.0, 8, 8, 1, 'euler', 'tiny', 'queued', false, '2026-01-01 00:00:00'),
       (5, NULL, 1, 100, 'p', '', 1, 1, 1.0, 8, 8, 1, 'euler', 'tiny', 'done', false, '2026-01-01 00:00:00');
INSERT INTO images (job_id, "index", seed, path, sha256, size_bytes, width, height, nsfw, pruned, created_at)
VALUES (1, 0, 1, 'a', '', 1, 8, 8, false, false, '2026-01-01 00:00:00'),
       (1, 1, 1, 'b', '', 1, 8, 8, false, true, '2026-01-01 00:00:00'),
       (3, 0, 1, 'c', '', 1, 8, 8, false, false, '2026-01-01 00:00:00'),
       (5, 0, 1, 'd', '', 1, 8, 8, false, false, '2026-01-01 00:00:00');
INSERT INTO moderation_events (guild_id, user_id, prompt_sha256, prompt_excerpt, source, created_at)
VALUES (10, 100, '', '', 'prompt', '2026-01-01 00:00:00'), (30, 100, '', '', 'prompt', '2026-01-01 00:00:00');
"""


async def _stats(url: str, guild_id: int) -> GuildStats:
    db = Database.connect(url)
    try:
        return await repository.guild_stats(db, guild_id)
    finally:
        await db.close()


def test_0006_fills_the_stats_aggregates_from_existing_rows(db_url: str) -> None:
    run_alembic(db_url, "upgrade", "0002")

    def insert(conn: Connection) -> None:
        for statement in _OLD_ROWS.split(";"):
            if statement.strip():
                conn.execute(text(statement))

    on_connection(db_url, insert)
    run_alembic(db_url, "upgrade", "0006")
    guild = asyncio.run(_stats(db_url, 10))
    assert guild.jobs_by_status == {"done": 2, "failed": 1}
    assert (guild.images, guild.members, guild.moderation_events) == (3, 2, 1)
    assert guild.top_members == ((100, 2), (200, 1))
    other = asyncio.run(_stats(db_url, 20))
    assert (other.jobs_by_status, other.images, other.members, other.top_members) == ({"queued": 1}, 0, 1, ())
    refusals_only = asyncio.run(_stats(db_url, 30))
    assert (refusals_only.moderation_events, refusals_only.members) == (1, 0)
    run_alembic(db_url, "downgrade", "0002")
    assert not AGGREGATE_TABLES & _tables(db_url)
    run_alembic(db_url, "upgrade", "head")
    assert asyncio.run(_stats(db_url, 10)) == guild


async def test_upgrade_to_head_runs_off_the_loop_and_db_works(db_url: str) -> None:
    await upgrade_to_head(db_url)
    await upgrade_to_head(db_url)  # idempotent
    db = Database.connect(db_url)
    try:
        job = await new_job(db, guild_id=1, channel_id=2, user_id=3, prompt="p", negative_prompt="",
                                          seed=1, steps=1, guidance=1.0, width=8, height=8, count=1,
                                          scheduler="euler", model="tiny")
        assert job.status == "queued"
    finally:
        await db.close()


def test_db_cli_upgrade_current_downgrade(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    config = tmp_path / "config.yaml"
    db_path = tmp_path / "data" / "c.db"
    config.write_text(f"database:\n  url: sqlite+aiosqlite:///{db_path}\nstorage:\n  images_dir: {tmp_path / 'img'}\n")

    def run(command: str, **extra: object) -> tuple[int, str, str]:
        code = db_main(argparse.Namespace(config=str(config), db_command=command, **extra))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run("current")
    assert code == 0 and "base" in out
    code, out, _ = run("upgrade", revision="0001")
    assert code == 0 and "0001" in out
    code, out, _ = run("upgrade", revision="head")
    assert code == 0
    code, out, _ = run("current")
    assert code == 0 and out.strip() == current_revision(f"sqlite+aiosqlite:///{db_path}")
    code, out, _ = run("downgrade", revision="base")
    assert code == 0 and "base" in out
    code, _, err = run("upgrade", revision="nope")
    assert code == 1 and "nope" in err
    code, out, _ = run("upgrade", revision="head")
    code, out, _ = run("prune", older_than="30d")
    assert code == 0 and "deleted 0 file(s)" in out
    code, _, err = run("prune", older_than="thirty days")
    assert code == 2 and "30d" in err
    code, out, _ = run("sweep")
    assert code == 0 and "removed 0 file(s)" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("database:\n  urll: x\n")
    assert db_main(argparse.Namespace(config=str(bad), db_command="current")) == 2
    assert "urll" in capsys.readouterr().err


def test_initial_revision_renders_for_postgresql(capsys) -> None:  # noqa: ANN001
    """Offline (--sql) mode: the same revision produces PostgreSQL DDL without a server."""
    from alembic import command

    from bot.storage.db import alembic_config

    command.upgrade(alembic_config("postgresql+asyncpg://u:p@localhost/imagine"), "0001", sql=True)
    sql = capsys.readouterr().out
    assert "CREATE TABLE jobs" in sql and "BIGINT" in sql and "DEFAULT false" in sql
    assert "AUTOINCREMENT" not in sql and "SERIAL" in sql
