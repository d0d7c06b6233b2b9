"""Storage checked before anything else starts: one message naming the setting and what to do, never a traceback.

A bad ``database.url`` (unparseable, a driver that is missing or not asyncio), a database folder that cannot be
created or written, a file that is not, or no longer, a whole SQLite database, a schema revision this version
does not know, an images folder that cannot be written: each is found here and raised as :class:`StorageError`
(a :class:`~bot.config.ConfigError`, so every entry point already prints it and exits with status 2).

Files are created for the owner only (database 0600, folders 0700): they hold prompts, member ids and, for up
to 15 minutes, interaction tokens. SQLite gives its -wal and -shm files the database file's permissions.
All of it is blocking I/O: call it from a thread when an event loop is running.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from bot.config import ConfigError
from bot.redaction import redact_token_shapes
from bot.storage.db import PRIVATE_FOLDER, alembic_config, create_private_sqlite_file, current_revision, sqlite_file

SQLITE_HEADER = b"SQLite format 3\x00"
URL_EXAMPLES = "sqlite+aiosqlite:///data/imagine.db (a file) or postgresql+asyncpg://user:password@host/dbname"


class StorageError(ConfigError):
    """The database or the images folder cannot be used; the message names the setting and the fix."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig).splitlines()[0]
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _shown(url: str) -> str:
    """A parseable URL as an admin may see it in a message: never its password."""
    return redact_token_shapes(make_url(url).render_as_string(hide_password=True))


def parse_database_url(url: str) -> URL:
    """The parsed URL, or StorageError when it is not one or names a driver that is missing or not asyncio."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        # Not shown: where a URL cannot be parsed, neither can its password be found and hidden.
        raise StorageError(f"database.url is not a database URL. Use {URL_EXAMPLES}.") from None
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise StorageError(f"database.url = {_shown(url)!r} names a database driver that is not available "
                           f"({parsed.drivername!r}). Use {URL_EXAMPLES}.") from None
    if not getattr(dialect, "is_async", False):
        raise StorageError(f"database.url = {_shown(url)!r} uses {parsed.drivername!r}, which is not an asyncio "
                           f"driver. Use {URL_EXAMPLES}.")
    return parsed


def _probe_writable(folder: Path) -> None:
    """Create and remove a file in ``folder`` (os.access says yes to root even on a read-only mount)."""
    handle, name = tempfile.mkstemp(prefix=".imagine-write-test-", dir=folder)
    os.close(handle)
    os.unlink(name)


def make_private_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) if missing; the folder itself only for the owner."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=PRIVATE_FOLDER)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, "it is a file, not a folder") from None
    except NotADirectoryError:
        raise NotADirectoryError(errno.ENOTDIR, "part of that path is a file, not a folder") from None


def _sqlite_damage(path: Path) -> str | None:
    """Why ``path`` is not a whole SQLite database (None when it looks whole). Reads the header only, then the
    schema: a file of another kind, or one cut short by a full disk or an interrupted copy, is caught at start
    rather than by the first query that touches a missing page."""
    size = path.stat().st_size
    if size == 0:
        return None  # an empty file is an empty database (we create it so, with private permissions)
    with open(path, "rb") as handle:
        header = handle.read(100)
    if len(header) < 100 or not header.startswith(SQLITE_HEADER):
        return "is not a SQLite database (it is damaged, or another kind of file)"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # The page count in the header is valid when its "version-valid-for" number equals the change counter. A
    # write-ahead log left by a crash mid-checkpoint may still hold the missing pages: SQLite completes it then.
    wal = path.with_name(path.name + "-wal")
    wal_pending = wal.exists() and wal.stat().st_size > 0
    if header[92:96] == header[24:28] and pages and size < page_size * pages and not wal_pending:
        return f"is truncated ({size} bytes, but its header says {page_size * pages})"
    try:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        return f"cannot be read as a SQLite database ({exc})"
    return None


def _check_sqlite_file(path: Path, *, create: bool) -> None:
    folder = path.parent
    if create:
        try:
            make_private_folder(folder)
        except OSError as exc:
            raise StorageError(f"database.url: the database's folder {folder} cannot be created ({_reason(exc)}). "
                               "Point database.url at a file in a folder the bot's user can create.") from None
    elif not path.exists():
        return
    if path.is_dir():
        raise StorageError(f"database.url: {path} is a folder, not a database file. Point database.url at a file "
                           "(for example data/imagine.db).")
    try:
        _probe_writable(folder)
    except OSError as exc:
        raise StorageError(f"database.url: the bot cannot write in the database's folder {folder} "
                           f"({_reason(exc)}); SQLite keeps its journal next to the database. Give the bot's user "
                           "write access to that folder, or point database.url elsewhere.") from None
    if create:
        create_private_sqlite_file(path)
    try:
        with open(path, "r+b"):
            pass
        damage = _sqlite_damage(path)
    except OSError as exc:
        raise StorageError(f"database.url: {path} cannot be opened for writing ({_reason(exc)}). Give the bot's "
                           "user read and write access to it.") from None
    if damage:
        raise StorageError(f"database.url: {path} {damage}. Restore it from a backup, or move it away to start "
                           "with an empty database.")


def check_revision_known(url: str) -> None:
    """The database's schema revision must be one this version's migrations know (else upgrading cannot work)."""
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    try:
        revision = current_revision(url)
    except (DBAPIError, OSError) as exc:
        raise StorageError(f"database.url: the database cannot be opened ({_reason(exc)}). Check that the database "
                           "server is running and that the URL's host, port, user, password and database name are "
                           "right.") from None
    if revision is None:
        return
    try:
        ScriptDirectory.from_config(alembic_config(url)).get_revision(revision)
    except CommandError:
        raise StorageError(f"database.url: the database is at schema revision {revision!r}, which this version of "
                           "imagine-bot does not know (was it made by a newer version?). Run the version that made "
                           "it, or restore a backup made with this one.") from None


def check_database(url: str, *, create: bool = True) -> None:
    """All database checks; ``create`` makes a missing SQLite file (private) and its folder."""
    parse_database_url(url)
    path = sqlite_file(url)
    if path is not None:
        _check_sqlite_file(path, create=create)
    check_revision_known(url)


def check_images_dir(images_dir: Path) -> None:
    """The images folder exists (created private if missing) and the bot can write in it."""
    folder = Path(images_dir)
    try:
        make_private_folder(folder)
        _probe_writable(folder)
    except OSError as exc:
        raise StorageError(f"storage.images_dir: {folder} cannot be used ({_reason(exc)}). Choose a folder the "
                           "bot's user can create and write to, or fix its permissions.") from None


def check_storage(settings: Any) -> None:
    """Everything :mod:`bot.bootstrap` needs from storage, before it builds anything."""
    check_database(settings.database.url)
    check_images_dir(Path(settings.storage.images_dir))
