"""``imagine-bot db upgrade [rev] | downgrade [rev] | current | prune --older-than 30d | sweep``.

Problems an admin can fix (bad config, unknown revision, database not migrated) print one message and
return a non-zero status instead of a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from datetime import timedelta
from pathlib import Path

_AGE_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([dhm])", re.IGNORECASE)
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m`` or combinations such as ``1d12h``; raises ValueError otherwise."""
    compact = text.strip().replace(" ", "")
    parts = _AGE_PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts).lower() != compact.lower():
        raise ValueError(f"{text!r} is not an age: use a number with d, h or m, e.g. 30d, 12h, 90m")
    age = timedelta()
    for number, unit in parts:
        age += timedelta(**{_UNITS[unit.lower()]: float(number)})
    if age <= timedelta():
        raise ValueError(f"{text!r}: the age must be more than zero")
    return age


def _load(config_path: str | None):  # noqa: ANN202 - keeps bot.config import lazy
    from bot.config import load_settings

    if config_path == "config.yaml" and not Path(config_path).exists():
        print("note: no config.yaml here; using the default database settings", file=sys.stderr)
        return load_settings(None)
    return load_settings(config_path)


def _describe_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return str(size)


async def _prune(url: str, images_dir: Path, age: timedelta) -> str:
    from bot.storage.db import Database
    from bot.storage.images import prune

    db = Database.connect(url)
    try:
        report = await prune(db, images_dir, age)
    finally:
        await db.close()
    return (f"pruned images older than {age}: deleted {report.files_deleted} file(s), "
            f"freed {_describe_size(report.bytes_freed)}, marked {report.rows_marked} row(s) pruned"
            + (f" ({report.already_missing} file(s) were already gone)" if report.already_missing else ""))


async def _sweep(url: str, images_dir: Path) -> str:
    from bot.storage.db import Database
    from bot.storage.images import sweep_everything

    db = Database.connect(url)
    try:
        report = await sweep_everything(db, images_dir)
    finally:
        await db.close()
    return (f"checked every image: removed {len(report.orphan_files_removed)} file(s) no row names, marked "
            f"{len(report.rows_marked_missing)} row(s) whose file is gone as pruned")


def db_main(args: argparse.Namespace) -> int:
    """Run one ``imagine-bot db`` sub-command; returns the process exit status."""
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import DBAPIError

    from bot.config import ConfigError
    from bot.storage.db import current_revision, run_alembic
    from bot.storage.preflight import check_database

    try:
        settings = _load(getattr(args, "config", None) or "config.yaml")
        url = settings.database.url
        command = args.db_command
        # A bad URL, folder or file, or a revision this version does not know: one message, status 2.
        check_database(url, create=command == "upgrade")
        if command == "upgrade":
            run_alembic(url, "upgrade", args.revision)
            print(f"database upgraded to {current_revision(url) or 'base'}")
        elif command == "downgrade":
            run_alembic(url, "downgrade", args.revision)
            print(f"database downgraded to {current_revision(url) or 'base (empty)'}")
        elif command == "current":
            revision = current_revision(url)
            print(revision or "base (not migrated yet: run `imagine-bot db upgrade`)")
        elif command == "prune":
            age = parse_age(args.older_than)
            print(asyncio.run(_prune(url, settings.storage.images_dir, age)))
        elif command == "sweep":
            print(asyncio.run(_sweep(url, settings.storage.images_dir)))
        else:
            print(f"unknown db command {command!r}", file=sys.stderr)
            return 2
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"migration error: {exc}", file=sys.stderr)
        return 1
    except DBAPIError as exc:
        print(f"database error: {exc.orig} (is the database migrated? run `imagine-bot db upgrade`)",
              file=sys.stderr)
        return 1
    return 0
