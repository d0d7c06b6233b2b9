"""The Alembic revisions on a real, empty SQLite file: round trip, and no drift from the models."""

from __future__ import annotations

import argparse
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from bot.storage.cli import db_main
from bot.storage.db import Database, current_revision, run_alembic, upgrade_to_head
from bot.storage.schema import metadata
from tests.helpers import new_job

CORE_TABLES = {"members", "guild_settings", "jobs", "images", "moderation_events", "rate_limit_ledger"}


def _tables(path: Path) -> set[str]:
    engine = create_engine(f"sqlite:///{path}")
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _diff(path: Path) -> list:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True, "render_as_batch": True})
            return compare_metadata(ctx, metadata)
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_on_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "m.db"
    url = f"sqlite+aiosqlite:///{path}"
    run_alembic(url, "upgrade", "head")
    assert _tables(path) >= CORE_TABLES
    head = current_revision(url)
    assert head is not None
    run_alembic(url, "downgrade", "base")
    assert _tables(path) == set() and current_revision(url) is None
    run_alembic(url, "upgrade", "head")
    assert current_revision(url) == head
    run_alembic(url, "downgrade", "0001")
    assert _tables(path) == CORE_TABLES and current_revision(url) == "0001"


def test_migrations_match_models(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    run_alembic(f"sqlite+aiosqlite:///{path}", "upgrade", "head")
    assert _diff(path) == []


async def test_upgrade_to_head_runs_off_the_loop_and_db_works(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'x' / 'bot.db'}"
    await upgrade_to_head(url)
    await upgrade_to_head(url)  # idempotent

    db = Database.connect(url)
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
