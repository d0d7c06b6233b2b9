"""A throw-away PostgreSQL server for the tests and the benchmarks: initdb + pg_ctl in a temporary folder.

Debian's ``postgresql`` package (its binaries live in ``/usr/lib/postgresql/<version>/bin``, off the PATH) is
all it needs. The server listens on a free loopback port and a socket in its own folder, trusts local
connections, and runs with durability switched off (``fsync=off``: it is thrown away at the end). PostgreSQL
refuses to run as root, so under root (CI) every server command runs as an unprivileged system user
(``postgres`` when it exists, else ``nobody``) through ``runuser``, and the folder is handed to that user.

Its time zone is deliberately not UTC (``Pacific/Chatham``, UTC+12:45/+13:45) so that a timestamp that depends
on the server's zone shows up as a failing test instead of a bug in production.

Used by ``tests/conftest.py`` (fixtures ``pg_server``, ``db_url``, ``db``) and ``bench/bench_history.py``;
both load it by path, because the suite runs with ``--import-mode=importlib``.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "imagine"
SERVER_TIMEZONE = "Pacific/Chatham"
UNPRIVILEGED_USERS = ("postgres", "nobody")
START_TIMEOUT_SECONDS = 60
_BINARIES = ("initdb", "pg_ctl", "createdb", "dropdb")


class PostgresUnavailable(RuntimeError):
    """The server cannot be started here; the message says what to install or change."""


def find_bin_dir() -> Path | None:
    """The folder holding initdb/pg_ctl/createdb/dropdb: ``IMAGINE_PG_BIN`` when set (and only it), else the
    PATH, else Debian's newest ``/usr/lib/postgresql/<version>/bin``."""
    candidates: list[Path] = []
    if os.environ.get("IMAGINE_PG_BIN"):
        candidates.append(Path(os.environ["IMAGINE_PG_BIN"]))
        return candidates[0] if all((candidates[0] / name).is_file() for name in _BINARIES) else None
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = sorted((p for p in debian.iterdir() if p.name.isdigit()), key=lambda p: int(p.name), reverse=True)
        candidates.extend(v / "bin" for v in versions)
    for folder in candidates:
        if all((folder / name).is_file() for name in _BINARIES):
            return folder
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> str | None:
    """None when we may run the server ourselves; the unprivileged user to switch to under root."""
    if os.geteuid() != 0:
        return None
    for name in UNPRIVILEGED_USERS:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise PostgresUnavailable("running as root and no unprivileged user (postgres, nobody) exists to run "
                              "PostgreSQL; create one, e.g. `useradd --system postgres`")


class ThrowawayPostgres:
    """One server in a temporary folder: :meth:`start`, :meth:`create_database`, :meth:`stop`."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        found = bin_dir or find_bin_dir()
        if found is None:
            raise PostgresUnavailable("PostgreSQL's server binaries (initdb, pg_ctl) were not found: install "
                                      "Debian's `postgresql` package (scripts/test does it when run as root) or "
                                      "set IMAGINE_PG_BIN to their folder")
        self.bin_dir = found
        self.user = _server_user()
        if self.user is not None and shutil.which("runuser") is None:
            raise PostgresUnavailable("running as root but `runuser` is missing, so PostgreSQL cannot be started "
                                      "as an unprivileged user")
        self.folder: Path | None = None
        self.port = 0
        self._names = itertools.count(1)

    # --- running commands ------------------------------------------------------------------------------------

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT_SECONDS,
                                cwd=self.folder or "/")
        if check and result.returncode != 0:
            raise PostgresUnavailable(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def _client(self, *args: str) -> None:
        self._run(args[0], "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, *args[1:])

    # --- life cycle ------------------------------------------------------------------------------------------

    def start(self) -> ThrowawayPostgres:
        """initdb and start on a free loopback port (a few tries: another process may take the port first)."""
        self.folder = Path(tempfile.mkdtemp(prefix="imagine-pg-"))
        atexit.register(self.stop)  # also when the process ends without running its fixtures' teardown
        if self.user is not None:
            shutil.chown(self.folder, self.user)
        data = self.folder / "data"
        self._run("initdb", "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C",
                  "--no-sync")
        last_error = ""
        for _ in range(3):
            self.port = _free_port()
            options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                       f"-c synchronous_commit=off -c full_page_writes=off -c timezone={SERVER_TIMEZONE} "
                       f"-c max_connections=200")
            result = self._run("pg_ctl", "-D", str(data), "-l", str(self.folder / "server.log"), "-o", options,
                               "-w", "-t", str(START_TIMEOUT_SECONDS), "start", check=False)
            if result.returncode == 0:
                return self
            last_error = result.stderr.strip() or self.log_tail()
        self.stop()
        raise PostgresUnavailable(f"PostgreSQL did not start: {last_error}")

    def log_tail(self, lines: int = 20) -> str:
        log = (self.folder / "server.log") if self.folder else None
        if log is None or not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the server at once and delete its folder (nothing in it is worth keeping)."""
        if self.folder is None:
            return
        if (self.folder / "data" / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- databases -------------------------------------------------------------------------------------------

    def url(self, database: str, driver: str = "asyncpg") -> str:
        return f"postgresql+{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None, *, template: str = "template0") -> str:
        """Create a database (a copy of ``template``: cheap for a small schema) and return its asyncpg URL."""
        name = name or f"test_{os.getpid()}_{next(self._names)}"
        self._client("createdb", "-T", template, name)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop it even if a connection was left open (``--force``)."""
        self._client("dropdb", "--force", "--if-exists", name)
