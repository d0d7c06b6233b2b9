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

* ``redis_server`` -- a real, throw-away ``redis-server`` (Debian's package; ``scripts/test`` installs it) on a
  free loopback port in the test's temp dir, without persistence, so a restart loses everything like a crashed
  server. ``.url``, ``.port``, ``.stop()``, ``.start()`` (same port), ``.restart()``. Skipped with the reason
  when the binary is missing.
* ``restore_logging`` -- for tests that run an entry point (``run_main``), which installs the bot's root log
  handler: it is taken off again afterwards, so the other tests' logging is as pytest set it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bot import logging_setup
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

START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One ``redis-server`` process the test owns (see the module docstring)."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it and return once it answers PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {self.directory}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT} s")
            time.sleep(0.02)  # waiting for a process to listen: nothing to wait on but the port

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL); its data is gone (no persistence)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; scripts/test installs it)")
    server = RedisServer(binary, tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    level = logging.getLogger().level
    yield
    if logging_setup._installed is not None:
        logging.getLogger().removeHandler(logging_setup._installed)
        logging_setup._installed = None
    logging.getLogger().setLevel(level)
