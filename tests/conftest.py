"""Database fixtures shared by the whole suite: each storage-level test runs on SQLite and on PostgreSQL.

* ``pg_server`` (session) -- a :class:`pg_server.ThrowawayPostgres` started once for the session (initdb +
  pg_ctl in a temporary folder, a free loopback port, an unprivileged user under root) and stopped at the end.
  Requesting it skips the test, with the reason, when PostgreSQL's binaries are missing -- unless
  ``IMAGINE_REQUIRE_POSTGRES=1`` (set by ``scripts/test``), where it fails instead.
* ``db_backend`` -- ``"sqlite"`` or ``"postgresql"``: the parameter behind the two fixtures below.
* ``db_url`` -- the URL of a fresh, *empty* database of that backend (migration tests).
* ``db`` -- a connected :class:`bot.storage.db.Database` on a fresh database that already has the schema
  (on PostgreSQL a copy of a template made once per session, which is much faster than creating the tables).

A test that needs one backend only asks for it: ``@pytest.mark.parametrize("db_backend", ["sqlite"])``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bot.storage.db import Database

SCHEMA_TEMPLATE = "imagine_schema"
BACKENDS = ("sqlite", "postgresql")


def _load_pg_server() -> ModuleType:
    """Import ``pg_server.py`` by path (``--import-mode=importlib`` gives tests no package to import from)."""
    if "pg_server" not in sys.modules:
        spec = importlib.util.spec_from_file_location("pg_server", Path(__file__).with_name("pg_server.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["pg_server"] = module
        spec.loader.exec_module(module)
    return sys.modules["pg_server"]


pg_server_module = _load_pg_server()


def run_coroutine_in_thread(coroutine: Any) -> Any:
    """Run a coroutine to completion on a fresh event loop, even when called from inside a running one."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _create_schema(url: str) -> None:
    database = Database.connect(url)
    try:
        await database.create_all()
    finally:
        await database.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    try:
        server = pg_server_module.ThrowawayPostgres().start()
    except pg_server_module.PostgresUnavailable as exc:
        if os.environ.get("IMAGINE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required (IMAGINE_REQUIRE_POSTGRES=1) but could not start: {exc}")
        pytest.skip(f"PostgreSQL tests skipped: {exc}")
    try:
        run_coroutine_in_thread(_create_schema(server.create_database(SCHEMA_TEMPLATE)))
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def db_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'db' / 'imagine.db'}"


@pytest.fixture
def db_url(db_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    if db_backend == "sqlite":
        yield _sqlite_url(tmp_path)
        return
    server = request.getfixturevalue("pg_server")
    url = server.create_database()
    try:
        yield url
    finally:
        server.drop_database(url.rsplit("/", 1)[1])


@pytest.fixture
async def db(db_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Database]:
    if db_backend == "sqlite":
        database = Database.connect(_sqlite_url(tmp_path))
        await database.create_all()
        try:
            yield database
        finally:
            await database.close()
        return
    server = request.getfixturevalue("pg_server")
    url = await asyncio.to_thread(server.create_database, template=SCHEMA_TEMPLATE)
    database = Database.connect(url)
    try:
        yield database
    finally:
        await database.close()
        await asyncio.to_thread(server.drop_database, url.rsplit("/", 1)[1])
