"""The async database handle (SQLAlchemy 2 + aiosqlite or asyncpg) and the migration entry points.

SQLite is tuned on every new connection (WAL so readers never block the writer, foreign keys on, a busy
timeout so concurrent writers wait instead of failing) and its transactions are started by us, so a
read-then-write transaction can ask for ``BEGIN IMMEDIATE`` and never hit "database is locked" half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event, func, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from bot.storage import schema

BUSY_TIMEOUT_MS = 30_000
_IMMEDIATE = "imagine_immediate"
PRIVATE_FILE = 0o600
PRIVATE_FOLDER = 0o700
T = TypeVar("T")


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL, or None for memory databases and other back ends."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    if parsed.database.startswith("file:"):
        return None
    return Path(parsed.database)


def create_private_sqlite_file(path: Path) -> None:
    """Create a missing SQLite file (and its folder) for the owner only, before SQLite would create it with the
    umask's permissions: it holds prompts, member ids and interaction tokens. SQLite gives its -wal and -shm
    files the same permissions. An existing file is left as it is."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_FOLDER)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))


def _install_sqlite_hooks(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    """PRAGMAs on each pooled connection, and explicit BEGIN (IMMEDIATE for write sessions)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions start (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


async def run_to_completion(step: Awaitable[T]) -> T:
    """Finish ``step`` (a commit or a rollback) even when the caller is cancelled meanwhile, then pass the
    cancellation on. Cut off half-way, the step leaves its pooled connection in the middle of being reset, which
    SQLAlchemy logs as an error with a traceback (a stop that lands during a commit must not look like a crash)."""
    task = asyncio.ensure_future(step)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait({task})  # a cancellation interrupts this wait, never the step
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        if not task.cancelled():
            task.exception()  # the step's own failure is not left unretrieved: the caller's cancellation wins
        raise cancelled
    return task.result()


class Database:
    """One engine plus a session factory; the only way the rest of the bot reaches the database."""

    def __init__(self, engine: AsyncEngine, url: str) -> None:
        self.engine = engine
        self.url = url
        self.is_sqlite = engine.dialect.name == "sqlite"
        self.closed = False
        self._sessions = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
        # SQLite has one writer at a time, and its busy handler polls with growing sleeps: under a burst a
        # writer can lose the race for a second or more. Writers of this process queue here instead (FIFO).
        self._write_turn = asyncio.Lock() if self.is_sqlite else None

    @classmethod
    def connect(cls, url: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS, echo: bool = False) -> Database:
        """Create the engine; a missing SQLite file is created first, private (see create_private_sqlite_file)."""
        path = sqlite_file(url)
        if path is not None:
            create_private_sqlite_file(path)
        kwargs: dict[str, Any] = {"echo": echo}
        if not is_sqlite(url):
            kwargs["pool_pre_ping"] = True
        engine = create_async_engine(url, **kwargs)
        if engine.dialect.name == "sqlite":
            _install_sqlite_hooks(engine, busy_timeout_ms)
        return cls(engine, url)

    @contextlib.asynccontextmanager
    async def session(self, *, write: bool = False) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error.

        ``write=True`` takes SQLite's write lock at BEGIN, which a transaction that reads and then writes
        needs so that another writer cannot invalidate its snapshot (SQLITE_BUSY without waiting); this
        process's write sessions take turns first, in arrival order. Never open a write session inside another.
        """
        async with contextlib.AsyncExitStack() as stack:
            if write and self._write_turn is not None:
                await stack.enter_async_context(self._write_turn)
            session = await stack.enter_async_context(self._sessions())
            await session.begin()
            try:
                if write and self.is_sqlite:
                    # Procured before any statement, so the BEGIN of this transaction sees the option.
                    await session.connection(execution_options={_IMMEDIATE: True})
                yield session
            except BaseException:
                await run_to_completion(session.rollback())
                raise
            await run_to_completion(session.commit())

    async def hold_lock(self, session: AsyncSession, *key: object) -> None:
        """Wait for, and hold until ``session``'s transaction ends, a lock named by ``key`` in every process.

        It makes a read-then-write exact across bot processes where no single row can be locked (a member's
        rate limit is a count of ledger rows). PostgreSQL: a transaction-level advisory lock on a 64-bit hash of
        the key. SQLite: nothing more to do, as a ``write=True`` session already holds the database's one write
        lock from BEGIN -- so call it inside a write session.
        """
        if self.is_sqlite:
            return
        digest = hashlib.blake2b(repr(key).encode("utf-8"), digest_size=8).digest()
        await session.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest, "big", signed=True))))

    async def create_all(self) -> None:
        """Create the tables straight from the models (tests); production uses :func:`upgrade_to_head`."""
        async with self.engine.begin() as conn:
            await conn.run_sync(schema.metadata.create_all)

    async def ping(self) -> None:
        """One round trip (``SELECT 1``); raises when the database cannot be reached (readiness checks)."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        self.closed = True
        await self.engine.dispose()


def migrations_dir() -> Path:
    """The folder of the ``migrations`` package, wherever it is installed (wheel, checkout, editable)."""
    import migrations

    if getattr(migrations, "__file__", None):
        return Path(migrations.__file__).resolve().parent
    for entry in getattr(migrations, "__path__", ()):  # an editable install made before __init__.py existed
        if (Path(entry) / "env.py").is_file():
            return Path(entry).resolve()
    raise RuntimeError("the migrations package is not installed with its env.py; reinstall imagine-bot")


def alembic_config(url: str) -> Any:
    """An Alembic Config that works from a source checkout and from an installed wheel alike."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    return config


def run_alembic(url: str, command: str, revision: str | None = None) -> str | None:
    """Synchronously run ``upgrade``/``downgrade``/``current`` (``current`` returns the revision shown)."""
    from alembic import command as alembic_command

    path = sqlite_file(url)
    if path is not None:
        create_private_sqlite_file(path)
    config = alembic_config(url)
    if command == "upgrade":
        alembic_command.upgrade(config, revision or "head")
    elif command == "downgrade":
        alembic_command.downgrade(config, revision or "-1")
    elif command == "current":
        return current_revision(url)
    else:
        raise ValueError(f"unknown migration command {command!r}")
    return None


def current_revision(url: str) -> str | None:
    """The revision the database is at (None when it has never been migrated); call it off the event loop."""
    path = sqlite_file(url)
    if path is not None and not path.exists():
        return None  # do not create an empty file just to look
    return asyncio.run(_current_revision_async(url))


async def _current_revision_async(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
    finally:
        await engine.dispose()


async def upgrade_to_head(url: str) -> None:
    """Migrate to the newest revision at start, in a thread so the event loop keeps running."""
    await asyncio.to_thread(run_alembic, url, "upgrade", "head")
