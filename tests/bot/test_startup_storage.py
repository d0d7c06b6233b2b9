"""Bad storage at start: one message naming the setting and what to do, exit status 2, never a traceback.

Every fault is made for real (a file where a folder belongs, a folder nobody may write, garbage or a cut-off copy
of a real database, a revision from the future) and started through ``bot.cli.main`` as an admin would. The
storage checks run before any model load or login, so ``run`` stops there.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bot import cli
from bot.config import settings_from_mapping
from bot.storage.db import Database, run_alembic
from bot.storage.preflight import StorageError, check_storage

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("restore_logging")]

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "hunter2hunter2"


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Path:
    """A folder the bot's user cannot create files in: a read-only one, or for root (whom permissions do not
    stop) a folder of the kernel's sysfs, where nobody can create files."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
        return folder
    folder = Path("/sys/kernel")
    if not folder.is_dir():
        pytest.skip("running as root without /sys: no folder root cannot write")
    return folder


def write_config(tmp_path: Path, *, url: str | None = None, images: Path | None = None) -> Path:
    config = tmp_path / "config.yaml"
    url = url or f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    config.write_text(
        f"discord:\n  token: {'t' * 40}\n"
        f"database:\n  url: '{url}'\n"
        f"storage:\n  images_dir: '{images or tmp_path / 'images'}'\n"
        "generation:\n  model: tiny\n  device: cpu\n", encoding="utf-8")
    return config


def start(config: Path, capsys: pytest.CaptureFixture[str], *command: str) -> tuple[int, str]:
    status = cli.main([*(command or ("run",)), "--config", str(config)])
    return status, capsys.readouterr().err


def migrated_database(path: Path, rows: int = 0) -> None:
    """A real database at head, with ``rows`` moderation events so that it spans many pages."""
    run_alembic(f"sqlite+aiosqlite:///{path}", "upgrade", "head")
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO moderation_events (guild_id, channel_id, user_id, prompt_sha256, prompt_excerpt, category,"
            " rule, source, created_at) VALUES (1, 2, 3, ?, ?, 'x', 'y', 'prompt', '2026-01-01 00:00:00')",
            [(f"{i:064d}", "p" * 150) for i in range(rows)])
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def assert_one_clear_message(status: int, err: str, setting: str, advice: str) -> None:
    assert status == 2, err
    assert "Traceback" not in err and setting in err and advice in err, err


@pytest.mark.parametrize(("url", "advice"), [
    ("not a database url", "Use sqlite+aiosqlite:///"),
    (f"postgresql+asyncpg//bot:{PASSWORD}@db/imagine", "Use sqlite+aiosqlite:///"),  # a missing colon
    ("mysql+nodriver://db/imagine", "not available"),
    ("sqlite:///imagine.db", "not an asyncio driver"),
])
def test_a_bad_database_url(tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, advice: str) -> None:
    status, err = start(write_config(tmp_path, url=url), capsys)
    assert_one_clear_message(status, err, "database.url", advice)
    assert PASSWORD not in err


def test_a_database_whose_folder_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data").write_text("I am a file")
    status, err = start(write_config(tmp_path, url=f"sqlite+aiosqlite:///{tmp_path / 'data' / 'imagine.db'}"), capsys)
    assert_one_clear_message(status, err, "database.url", "cannot be created")


def test_a_database_in_an_unwritable_folder(tmp_path: Path, unwritable_dir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    status, err = start(write_config(tmp_path, url=f"sqlite+aiosqlite:///{unwritable_dir / 'imagine.db'}"), capsys)
    assert_one_clear_message(status, err, "database.url", "write")
    assert not (unwritable_dir / "imagine.db").exists()


def test_a_database_path_that_is_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "imagine.db").mkdir()
    status, err = start(write_config(tmp_path, url=f"sqlite+aiosqlite:///{tmp_path / 'imagine.db'}"), capsys)
    assert_one_clear_message(status, err, "database.url", "is a folder")


def test_a_file_that_is_not_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bot.db").write_bytes(os.urandom(8192))
    status, err = start(write_config(tmp_path), capsys)
    assert_one_clear_message(status, err, "database.url", "Restore it from a backup")
    assert "not a SQLite database" in err


def test_a_truncated_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bot.db"
    migrated_database(path, rows=400)
    whole = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(whole // 2)  # a copy cut short (full disk, interrupted transfer)
    status, err = start(write_config(tmp_path), capsys)
    assert_one_clear_message(status, err, "database.url", "Restore it from a backup")
    assert "truncated" in err
    # ``db upgrade`` says the same, with the same status.
    status, err = start(write_config(tmp_path), capsys, "db", "upgrade")
    assert_one_clear_message(status, err, "database.url", "truncated")


def test_a_revision_this_version_does_not_know(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bot.db"
    migrated_database(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'f00dcafe1234'")
    status, err = start(write_config(tmp_path), capsys)
    assert_one_clear_message(status, err, "database.url", "newer version")
    assert "'f00dcafe1234'" in err
    status, err = start(write_config(tmp_path), capsys, "db", "upgrade")
    assert_one_clear_message(status, err, "database.url", "'f00dcafe1234'")


def test_an_images_folder_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "images").write_text("not a folder")
    status, err = start(write_config(tmp_path, images=tmp_path / "images"), capsys)
    assert_one_clear_message(status, err, "storage.images_dir", "Choose a folder")


def test_an_unwritable_images_folder(tmp_path: Path, unwritable_dir: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    status, err = start(write_config(tmp_path, images=unwritable_dir), capsys)
    assert_one_clear_message(status, err, "storage.images_dir", "fix its permissions")


def test_a_corrupt_database_in_a_real_process_prints_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "bot.db").write_bytes(b"SQLite format 2 -- not really" * 100)
    config = write_config(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DISCORD_TOKEN", None)
    done = subprocess.run([sys.executable, "-m", "bot.cli", "db", "upgrade", "--config", str(config)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("database.url: ") and "not a SQLite database" in done.stderr


async def test_the_database_file_and_images_folder_are_private(tmp_path: Path) -> None:
    settings = settings_from_mapping({
        "database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'data' / 'bot.db'}"},
        "storage": {"images_dir": str(tmp_path / "images")},
    }, environ={})
    old_umask = os.umask(0o022)  # the usual umask: files 0644, folders 0755 unless made private
    try:
        await asyncio.to_thread(check_storage, settings)  # as bootstrap calls it: blocking I/O off the loop
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "data" / "bot.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "images").stat().st_mode) == 0o700
    db = Database.connect(settings.database.url)
    try:
        await db.create_all()
        async with db.session(write=True) as session:
            await session.connection()
            wal = tmp_path / "data" / "bot.db-wal"
            assert wal.exists() and stat.S_IMODE(wal.stat().st_mode) == 0o600  # SQLite copies the file's mode
    finally:
        await db.close()


def test_a_healthy_database_passes_and_is_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    migrated_database(path, rows=50)
    before = path.read_bytes()
    settings = settings_from_mapping({"database": {"url": f"sqlite+aiosqlite:///{path}"},
                                      "storage": {"images_dir": str(tmp_path / "images")}}, environ={})
    check_storage(settings)
    assert path.read_bytes() == before
    with pytest.raises(StorageError, match="storage.images_dir"):
        check_storage(settings.model_copy(update={"storage": settings.storage.model_copy(
            update={"images_dir": path})}))
