"""How the bot's own commands and its start-up cost as the history grows: 0, 10k, 100k and 1M jobs.

Not a test (timings depend on the machine). For each size it builds a SQLite database and a PostgreSQL one
(on a throw-away server started like the tests' one, ``tests/pg_server.py``) with the same synthetic history:
5,000 members in 50 servers (server and member activity skewed, Zipf-like), 90 days, 1/2/4 images a job,
files on disk for the last 7 days (older ones pruned, as a bot running ``db prune --older-than 7d`` has),
a contest per 2,000 jobs with 40 entries and 8 votes each, one refusal per 100 jobs, plus what a crash leaves:
100 unfinished jobs (a batch of 4 running, 96 queued) and 5 results saved but never posted. The rows are written in bulk
(``executemany`` on SQLite, ``COPY`` on PostgreSQL) at revision 0002, then the migrations run to head, as an
existing bot's upgrade would (so revision 0006 fills its aggregates from the rows).

Then it times the project's own functions, median of ``--runs`` rounds after a warm-up round; every round
runs each operation on every database in turn, so a busy moment of a shared machine hits all sizes alike:

* rate-limit reserve (``RateLimiter.reserve``), accepting a job (``JobJournal.accept``), the whole gate
  (``gate.submission.submit``: validate, filter, limit, journal), /history (``repository.jobs_for_user``) and
  /stats (``repository.guild_stats``) for the largest server's busiest member;
* start-up: recovery of the 100 unfinished jobs (``JobJournal.recover``, re-delivery included) and the
  start-up sweep (``images.sweep_orphans``, with leftovers of a crash planted each run);
* /contest status (``ContestService.status``) of the largest server's running contest;
* ``db prune --older-than 7d`` (``images.prune``) finding 20 old files (planted each run);
* with ``--full-sweep``, one run of ``db sweep`` (``images.sweep_everything``), the check start-up used to do.

    .venv/bin/python bench/bench_history.py --sizes 0,10000,100000,1000000 --runs 7 --output bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.util
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from sqlalchemy import text

from bot.config import settings_from_mapping
from bot.contests.service import build_contest_service
from bot.gate.content_filter import ContentFilter
from bot.gate.rate_limits import RateLimiter
from bot.gate.submission import Accepted, Options, Origin, submit
from bot.journal.job_journal import JobJournal, request_of
from bot.services import ModelInfo, Services
from bot.storage import repository
from bot.storage.db import Database, run_alembic
from bot.storage.images import image_relpath, prune, sweep_everything, sweep_orphans

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
CHUNK = 20_000


def _load_pg_server() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pg_server", ROOT / "tests" / "pg_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pg_server"] = module
    spec.loader.exec_module(module)
    return module


# --- the synthetic history -------------------------------------------------------------------------------------


@dataclass
class Shape:
    jobs: int
    members: int = 5_000
    guilds: int = 50
    days: int = 90
    keep_days: int = 7
    unfinished: int = 100
    running: int = 4  # of the unfinished: the batch the worker was running
    undelivered: int = 5
    entries_per_contest: int = 40
    votes_per_entry: int = 8


TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "jobs": ("id", "guild_id", "channel_id", "user_id", "interaction_id", "interaction_token", "application_id",
             "message_id", "prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height", "count",
             "scheduler", "model", "status", "error", "prompt_truncated", "parent_job_id", "queued_at",
             "started_at", "finished_at"),
    "images": ("id", "job_id", "index", "seed", "path", "sha256", "size_bytes", "width", "height", "nsfw",
               "pruned", "message_id", "created_at"),
    "rate_limit_ledger": ("id", "guild_id", "user_id", "images", "at", "job_id"),
    "moderation_events": ("id", "guild_id", "channel_id", "user_id", "prompt_sha256", "prompt_excerpt",
                          "category", "rule", "source", "created_at"),
    "members": ("user_id", "first_seen", "last_seen", "total_jobs", "total_images"),
    "contests": ("id", "guild_id", "channel_id", "theme", "created_by", "starts_at", "submit_ends_at",
                 "vote_ends_at", "max_entries", "state", "announcement_message_id", "voting_announced_at",
                 "finished_at", "results_message_id", "results_posted_at"),
    "contest_entries": ("id", "contest_id", "user_id", "job_id", "image_index", "prompt", "message_id",
                        "submitted_at"),
    "contest_votes": ("id", "entry_id", "voter_id", "created_at"),
    "contest_results": ("id", "contest_id", "entry_id", "guild_id", "user_id", "place", "votes", "points"),
}


@dataclass
class History:
    """What the timed calls need to know about the generated rows (the same for both databases)."""

    shape: Shape
    now: datetime
    largest_guild: int
    busiest_member: int
    busiest_channel: int
    unfinished_ids: list[int]
    running_ids: list[int]
    undelivered_ids: list[int]
    rows: dict[str, int] = field(default_factory=dict)
    entries_per_contest: int = 0
    files: int = 0


def guild_id_of(index: int) -> int:
    return 900_000_000_000_000_000 + index


def member_id_of(index: int) -> int:
    return 100_000_000_000_000_000 + index


def channel_of(guild_index: int, k: int) -> int:
    return 800_000_000_000_000_000 + guild_index * 10 + k


class Generator:
    """Deterministic rows (seeded), so the SQLite and PostgreSQL databases of one size hold the same history."""

    def __init__(self, shape: Shape, now: datetime, seed: int = 13) -> None:
        self.shape, self.now = shape, now
        self.rng = random.Random(seed)
        g_weights = [1 / (g + 1) for g in range(shape.guilds)]
        self.guild_cum = list(_cumulative(g_weights))
        members_of: list[list[int]] = [[] for _ in range(shape.guilds)]
        for m in range(shape.members):
            members_of[_pick(self.rng, self.guild_cum)].append(m)
        for g, members in enumerate(members_of):
            if not members:
                members.append(g)  # every server has somebody
        self.members_of = members_of
        self.member_cum = [list(_cumulative([1 / (r + 1) ** 0.8 for r in range(len(ms))])) for ms in members_of]
        self.start = now - timedelta(days=shape.days)
        self.keep_after = now - timedelta(days=shape.keep_days)
        self.total_jobs = shape.jobs + shape.unfinished + shape.undelivered
        self.done_ids: list[int] = []  # a sample, for contest entries
        self.member_totals: dict[int, list[Any]] = {}
        self.history: History | None = None

    def _when(self, job_id: int) -> datetime:
        span = (self.now - timedelta(minutes=30) - self.start).total_seconds()
        return self.start + timedelta(seconds=span * job_id / max(self.total_jobs, 1))

    def jobs_and_children(self) -> Iterator[tuple[str, tuple[Any, ...]]]:
        """Yields ("jobs" | "images" | "rate_limit_ledger" | "moderation_events", row) in id order."""
        shape, rng = self.shape, self.rng
        image_id = ledger_id = event_id = 0
        unfinished_from = shape.jobs + 1
        undelivered_from = shape.jobs + shape.unfinished + 1
        running_ids: list[int] = []
        unfinished_ids: list[int] = []
        undelivered_ids: list[int] = []
        guild_jobs = [0] * shape.guilds
        member_jobs: dict[int, int] = {}
        for job_id in range(1, self.total_jobs + 1):
            g = _pick(rng, self.guild_cum)
            member_index = self.members_of[g][_pick(rng, self.member_cum[g])]
            user = member_id_of(member_index)
            guild_jobs[g] += 1
            if g == 0:
                member_jobs[user] = member_jobs.get(user, 0) + 1
            queued = self._when(job_id)
            count = rng.choices((1, 2, 4), (70, 20, 10))[0]
            started = finished = message = error = None
            if job_id >= undelivered_from:
                status, queued = "done", self.now - timedelta(minutes=10 + job_id - undelivered_from)
                started, finished = queued + timedelta(seconds=1), queued + timedelta(seconds=6)
                undelivered_ids.append(job_id)
            elif job_id >= unfinished_from:
                # The worker runs one batch at a time: a crash leaves a batch running, the rest queued.
                status = "running" if job_id - unfinished_from < shape.running else "queued"
                queued = self.now - timedelta(minutes=5)
                started = queued + timedelta(seconds=1) if status == "running" else None
                (running_ids if status == "running" else unfinished_ids).append(job_id)
            else:
                status = rng.choices(("done", "failed", "refused", "cancelled"), (90, 3, 2, 5))[0]
                finished = queued + timedelta(seconds=6)
                started = None if status == "refused" else queued + timedelta(seconds=1)
                error = {"failed": "out of memory", "refused": "The queue is full."}.get(status)
                if status == "done":
                    message = 10**18 + job_id
            channel = channel_of(g, rng.randrange(3))
            yield "jobs", (job_id, guild_id_of(g), channel, user, 10**17 + job_id, "t" * 100, 42, message,
                           f"a castle on a hill at dusk, variation {job_id % 977}", "blurry", job_id, 25, 7.5,
                           512, 512, count, "euler_a", "sd15", status, error, False, None, queued, started, finished)
            if status == "done":
                if len(self.done_ids) < 50_000 or rng.random() < 0.05:
                    self.done_ids.append(job_id)
                for index in range(count):
                    image_id += 1
                    created = finished or queued
                    pruned = created < self.keep_after
                    yield "images", (image_id, job_id, index, job_id + index, image_relpath(job_id, index),
                                     "0" * 64, len(PNG), 512, 512, False, pruned, message, created)
            if status != "refused":
                ledger_id += 1
                yield "rate_limit_ledger", (ledger_id, guild_id_of(g), user, count, queued, job_id)
            totals = self.member_totals.setdefault(user, [queued, queued, 0, 0])
            totals[1], totals[2], totals[3] = queued, totals[2] + 1, totals[3] + count
            if job_id % 100 == 0:
                event_id += 1
                prompt = f"a forbidden thing {job_id}"
                yield "moderation_events", (event_id, guild_id_of(g), channel, user,
                                            hashlib.sha256(prompt.encode()).hexdigest(), prompt[:80], "sexual",
                                            "regex:explicit", "prompt", queued)
        largest = max(range(shape.guilds), key=lambda i: guild_jobs[i])
        busiest = max(member_jobs, key=lambda u: member_jobs[u]) if member_jobs else member_id_of(
            self.members_of[largest][0])
        self.history = History(shape=shape, now=self.now, largest_guild=guild_id_of(largest),
                               busiest_member=busiest, busiest_channel=channel_of(largest, 0),
                               unfinished_ids=unfinished_ids + running_ids, running_ids=running_ids,
                               undelivered_ids=undelivered_ids)

    def members(self) -> Iterator[tuple[Any, ...]]:
        for user, (first, last, jobs, images) in sorted(self.member_totals.items()):
            yield user, first, last, jobs, images

    @property
    def entries_per_contest(self) -> int:
        return min(self.shape.entries_per_contest, len(self.done_ids))

    def contests(self) -> Iterator[tuple[str, tuple[Any, ...]]]:
        """Finished contests (one per 2,000 jobs) and the largest server's running one, with entries and votes."""
        shape, rng = self.shape, self.rng
        assert self.history is not None
        past = shape.jobs // 2000
        entry_id = vote_id = result_id = 0
        largest_index = self.history.largest_guild - guild_id_of(0)
        for contest_id in range(1, past + 2):
            running = contest_id == past + 1
            g = largest_index if running else _pick(rng, self.guild_cum)
            if running:
                starts = self.now - timedelta(days=1)
            else:
                starts = self.start + timedelta(days=rng.uniform(0, shape.days - 5))
            submit_ends, vote_ends = starts + timedelta(days=3), starts + timedelta(days=4)
            yield "contests", (contest_id, guild_id_of(g), channel_of(g, 0), "castles", member_id_of(0), starts,
                               submit_ends, vote_ends, None, "running" if running else "finished", None, None,
                               None if running else vote_ends, None, None if running else vote_ends)
            tallies: list[tuple[int, int, int]] = []
            for job_id in rng.sample(self.done_ids, self.entries_per_contest):
                entry_id += 1
                entrant = member_id_of(rng.choice(self.members_of[g]))
                yield "contest_entries", (entry_id, contest_id, entrant, job_id, 0,
                                          "a castle", 10**18 + 10**9 + entry_id, starts + timedelta(hours=1))
                voters = rng.sample(range(shape.members), shape.votes_per_entry)
                for voter in voters:
                    vote_id += 1
                    yield "contest_votes", (vote_id, entry_id, member_id_of(voter), starts + timedelta(days=3.5))
                tallies.append((entry_id, entrant, len(voters)))
            if not running:
                for place, (eid, entrant, votes) in enumerate(tallies[:3], start=1):
                    result_id += 1
                    yield "contest_results", (result_id, contest_id, eid, guild_id_of(g), entrant, place, votes,
                                              4 - place)


def _cumulative(weights: Sequence[float]) -> Iterator[float]:
    total = 0.0
    for w in weights:
        total += w
        yield total


def _pick(rng: random.Random, cum: list[float]) -> int:
    import bisect

    return min(bisect.bisect(cum, rng.random() * cum[-1]), len(cum) - 1)


# --- writing it ------------------------------------------------------------------------------------------------


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M:%S.%f}"  # SQLAlchemy's storage format: strings compare as times
    if isinstance(value, bool):
        return int(value)
    return value


class SqliteWriter:
    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.execute("BEGIN")

    def write(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        columns = TABLE_COLUMNS[table]
        names = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join("?" * len(columns))
        self.conn.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})",
                              ([_sqlite_value(v) for v in row] for row in rows))

    def close(self) -> None:
        self.conn.execute("COMMIT")
        self.conn.close()


def _pg_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None)  # naive UTC, as bot.storage.base.UTCDateTime stores
    return value


class PostgresWriter:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.loop = asyncio.new_event_loop()
        import asyncpg

        self.conn = self.loop.run_until_complete(asyncpg.connect(dsn))

    def write(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        records = [tuple(_pg_value(v) for v in row) for row in rows]
        self.loop.run_until_complete(self.conn.copy_records_to_table(table, records=records,
                                                                     columns=list(TABLE_COLUMNS[table])))

    def close(self) -> None:
        for table in TABLE_COLUMNS:
            if "id" in TABLE_COLUMNS[table]:
                self.loop.run_until_complete(self.conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE(MAX(id), 0) + 1, false) "
                    f"FROM {table}"))
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


def write_history(shape: Shape, now: datetime, writers: list[Any]) -> History:
    generator = Generator(shape, now)
    buffers: dict[str, list[tuple[Any, ...]]] = {t: [] for t in TABLE_COLUMNS}
    counts: dict[str, int] = dict.fromkeys(TABLE_COLUMNS, 0)
    order = ["jobs", "images", "rate_limit_ledger", "moderation_events"]

    def flush(*tables: str) -> None:
        for table in tables:
            if buffers[table]:
                for writer in writers:
                    writer.write(table, buffers[table])
                counts[table] += len(buffers[table])
                buffers[table].clear()

    for table, row in generator.jobs_and_children():
        buffers[table].append(row)
        if len(buffers[table]) >= CHUNK:
            flush(*order)  # parents (jobs) before children, whichever buffer filled first
    flush(*order)
    buffers["members"].extend(generator.members())
    flush("members")
    for table, row in generator.contests():
        buffers[table].append(row)
    flush("contests", "contest_entries", "contest_votes", "contest_results")
    for writer in writers:
        writer.close()
    history = generator.history
    assert history is not None
    history.rows = counts
    history.entries_per_contest = generator.entries_per_contest
    return history


class FileWriter:
    """The PNG files of the images younger than the prune age (older ones were pruned: no file)."""

    def __init__(self, images_dir: Path) -> None:
        self.images_dir = images_dir
        self.folders: set[Path] = set()
        self.written = 0

    def write(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        if table != "images":
            return
        for row in rows:
            if row[10]:  # pruned
                continue
            path = self.images_dir / row[4]
            if path.parent not in self.folders:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.folders.add(path.parent)
            path.write_bytes(PNG)
            self.written += 1

    def close(self) -> None:
        return None


# --- the timed calls -------------------------------------------------------------------------------------------


class HeldJob:
    """A job the benchmark's worker took and never runs (only the bot's side is timed)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.status = "queued"
        self._future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def __await__(self):  # noqa: ANN204
        return self._future.__await__()

    def cancel(self) -> bool:
        return False


class HoldingWorker:
    def submit(self, request: Any, *, job_id: str | None = None) -> HeldJob:
        return HeldJob(job_id or "")

    async def close(self) -> None:
        return None


async def drop_followers() -> None:
    """End the journal's follower tasks of held jobs (they would wait forever)."""
    tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("journal-")]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Operation:
    """One timed call, with untimed set-up before it and clean-up (and checks) after it."""

    call: Callable[[], Awaitable[Any]]
    before: Callable[[], Awaitable[Any]] | None = None
    after: Callable[[Any], Awaitable[Any]] | None = None

    async def time_ms(self) -> float:
        if self.before is not None:
            await self.before()
        started = time.perf_counter()
        result = await self.call()
        elapsed = time.perf_counter() - started
        if self.after is not None:
            await self.after(result)
        return elapsed * 1000


def _plant_crash_leftovers(images_dir: Path, job_ids: Sequence[int]) -> None:
    for job_id in job_ids:
        path = images_dir / image_relpath(job_id, 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(PNG)  # renamed into place, row never committed
        (path.parent / f".{job_id}-1.png.4242.tmp").write_bytes(b"half")


async def _plant_old_files(db: Database, images_dir: Path, history: History, n: int = 20) -> int:
    """``n`` images older than the prune age whose files are still there (what one prune finds)."""
    old = history.now - timedelta(days=history.shape.keep_days + 1)
    async with db.session(write=True) as session:
        rows = (await session.execute(text(
            "SELECT id, path FROM images WHERE job_id IN (SELECT id FROM jobs WHERE status = 'done' "
            "AND id < :below ORDER BY id DESC LIMIT :n) ORDER BY id LIMIT :n"),
            {"below": history.shape.jobs // 2 + 2, "n": n})).all()
        for image_id, _ in rows:
            await session.execute(text("UPDATE images SET pruned = :f, created_at = :at WHERE id = :id"),
                                  {"f": False, "at": old.replace(tzinfo=None) if not db.is_sqlite
                                   else f"{old:%Y-%m-%d %H:%M:%S.%f}", "id": image_id})
    for _, path in rows:
        target = images_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(PNG)
    return len(rows)


class Subject:
    """One built database (a backend at a size) with the bot's parts on it, and its timed operations."""

    def __init__(self, backend: str, size: int, url: str, images_dir: Path, history: History) -> None:
        self.backend, self.size, self.history, self.images_dir = backend, size, history, images_dir
        self.db = Database.connect(url)
        settings = settings_from_mapping({
            "database": {"url": url}, "storage": {"images_dir": str(images_dir)},
            "generation": {"model": "tiny", "queue_size": 100_000},
            "rate_limits": {"images_per_window": 1_000_000, "window_seconds": 3600,
                            "max_queued_per_user": 1_000_000},
            "content_filter": {"blocked_terms": ["forbidden word"], "regex_rules": []},
        }, environ={})
        worker = HoldingWorker()
        self.journal = JobJournal(self.db, worker, images_dir, "sd15")  # type: ignore[arg-type]
        self.limiter = RateLimiter(self.db, settings.rate_limits)
        self.contests = build_contest_service(self.db, content_filter=None, images_dir=images_dir)
        self.services = Services(settings=settings, db=self.db, model=ModelInfo("sd15"),
                                 worker=worker,  # type: ignore[arg-type]
                                 journal=self.journal, rate_limiter=self.limiter, contests=self.contests,
                                 content_filter=ContentFilter(settings.content_filter.blocked_terms),
                                 images_dir=images_dir)
        self.planted: list[int] = []

    async def close(self) -> None:
        await drop_followers()
        await self.contests.close()
        await self.db.close()

    async def operations(self) -> dict[str, Operation]:
        db, history, journal, limiter = self.db, self.history, self.journal, self.limiter
        guild, member, channel = history.largest_guild, history.busiest_member, history.busiest_channel
        template = await repository.get_job(db, history.unfinished_ids[0])
        assert template is not None
        assert await repository.jobs_for_user(db, guild, member)  # (the accepted jobs add more while timing)
        status = await self.contests.status(guild, channel, member)
        assert status.contest.state == "running" and status.entries == history.entries_per_contest, status
        crashed = history.unfinished_ids[:3]

        async def cancel_job(job_id: int) -> None:
            await drop_followers()
            await repository.mark_cancelled(db, job_id)

        async def gate() -> Accepted:
            outcome = await submit(self.services, Options(prompt="a lighthouse in a storm", count=1),
                                   Origin(user_id=member, channel_id=channel, guild_id=guild))
            assert isinstance(outcome, Accepted), outcome
            return outcome

        async def running_again() -> None:  # the batch that was running when the bot stopped
            for job_id in history.running_ids:
                await repository.mark_running(db, job_id)

        async def recover() -> int:
            recovered = await journal.recover()
            await wait_for_redeliveries()
            return len(recovered)

        async def after_recover(count: int) -> None:
            assert count == history.shape.unfinished, count
            await drop_followers()

        async def check_sweep(report: Any) -> None:
            assert len(report.orphan_files_removed) == 2 * len(crashed), report

        async def plant_old_files() -> None:
            self.planted.append(await _plant_old_files(db, self.images_dir, history))

        async def check_prune(report: Any) -> None:
            # The planted ones, and any image that crossed the age limit since the history was written.
            assert report.files_deleted >= self.planted[-1], (report, self.planted)

        return {
            "rate-limit reserve": Operation(lambda: limiter.reserve(guild, member, 1), after=limiter.release),
            "accept a job (journal)": Operation(
                lambda: journal.accept(request_of(template), guild_id=guild, channel_id=channel, user_id=member,
                                       interaction_id=1, interaction_token="t", application_id=2),
                after=lambda accepted: cancel_job(accepted[0].id)),
            "gate (validate, filter, limit, journal)": Operation(
                gate, after=lambda accepted: cancel_job(accepted.job.id)),
            "/history": Operation(lambda: repository.jobs_for_user(db, guild, member)),
            "/stats (largest server)": Operation(lambda: repository.guild_stats(db, guild)),
            "start-up: recover 100 unfinished jobs": Operation(recover, before=running_again, after=after_recover),
            "start-up: sweep": Operation(
                lambda: sweep_orphans(db, self.images_dir),
                before=lambda: asyncio.to_thread(_plant_crash_leftovers, self.images_dir, crashed),
                after=check_sweep),
            "/contest status": Operation(lambda: self.contests.status(guild, channel, member)),
            "db prune (20+ old files)": Operation(
                lambda: prune(db, self.images_dir, timedelta(days=history.shape.keep_days)),
                before=plant_old_files, after=check_prune),
        }


async def time_interleaved(subjects: list[Subject], runs: int, full_sweep: bool, log: Callable[[str], None]
                           ) -> dict[tuple[str, int], dict[str, float]]:
    """Medians of ``runs`` rounds after a warm-up round; each round times every operation on every database in
    turn, so a busy moment of a shared machine falls on all sizes alike rather than on one."""
    operations = {(s.backend, s.size): await s.operations() for s in subjects}
    names = list(next(iter(operations.values())))
    samples: dict[tuple[str, int], dict[str, list[float]]] = {
        key: {name: [] for name in names} for key in operations}
    for round_number in range(runs + 1):
        for name in names:
            for key, ops in operations.items():
                elapsed = await ops[name].time_ms()
                if round_number:  # the first round warms caches and connection pools
                    samples[key][name].append(elapsed)
        log(f"  round {round_number}/{runs} done")
    results = {key: {name: statistics.median(values) for name, values in by_name.items()}
               for key, by_name in samples.items()}
    if full_sweep:
        for subject in subjects:
            started = time.perf_counter()
            await sweep_everything(subject.db, subject.images_dir)
            results[(subject.backend, subject.size)]["db sweep (every file and row, 1 run)"] = (
                time.perf_counter() - started) * 1000
            log(f"  db sweep on {subject.backend} {subject.size:,}: {time.perf_counter() - started:.0f} s")
    return results


async def measure(built: list[tuple[Built, int, Path, History]], runs: int, full_sweep: bool,
                  log: Callable[[str], None]) -> dict[tuple[str, int], dict[str, float]]:
    subjects = [Subject(item.backend, size, item.url, images, history) for item, size, images, history in built]
    try:
        return await time_interleaved(subjects, runs, full_sweep, log)
    finally:
        for subject in subjects:
            await subject.close()


async def wait_for_redeliveries() -> None:
    """Wait for the re-delivery tasks recover() started (they read the saved files), not for the held jobs."""
    tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("journal-redeliver-")]
    await asyncio.gather(*tasks, return_exceptions=True)


# --- driver ----------------------------------------------------------------------------------------------------


@dataclass
class Built:
    backend: str
    url: str
    size: str = ""
    upgrade_seconds: float = 0.0


def build(backends: list[str], shape: Shape, now: datetime, workdir: Path, images_dir: Path, pg: Any,
          log: Callable[[str], None]) -> tuple[History, list[Built], int]:
    """One pass of the generator writes every database (at revision 0002) and the files; then each upgrades."""
    built: list[Built] = []
    writers: list[Any] = []
    for backend in backends:
        if backend == "sqlite":
            path = workdir / f"history-{shape.jobs}.db"
            path.unlink(missing_ok=True)
            built.append(Built(backend, f"sqlite+aiosqlite:///{path}"))
            run_alembic(built[-1].url, "upgrade", "0002")
            writers.append(SqliteWriter(path))
        else:
            built.append(Built(backend, pg.create_database(f"history_{shape.jobs}")))
            run_alembic(built[-1].url, "upgrade", "0002")
            writers.append(PostgresWriter(built[-1].url.replace("postgresql+asyncpg", "postgresql")))
    files = FileWriter(images_dir)
    started = time.perf_counter()
    history = write_history(shape, now, [*writers, files])
    log(f"{shape.jobs:,} jobs: {sum(history.rows.values()):,} rows and {files.written:,} files written in "
        f"{time.perf_counter() - started:.0f} s")
    for item in built:
        started = time.perf_counter()
        run_alembic(item.url, "upgrade", "head")
        item.upgrade_seconds = time.perf_counter() - started
        if item.backend == "postgresql":
            asyncio.run(_vacuum_analyze(item.url))  # what autovacuum does to a table that was just loaded
            size = asyncio.run(_pg_size(item.url))
        else:
            size = (workdir / f"history-{shape.jobs}.db").stat().st_size
        item.size = f"{size / 2**20:.0f} MiB"
        log(f"  {item.backend}: migrations to head (0006 indexes and aggregates) {item.upgrade_seconds:.0f} s, "
            f"{item.size}")
    return history, built, files.written


async def _vacuum_analyze(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def _pg_size(url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        return int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close()


def table(title: str, sizes: list[int], results: dict[int, dict[str, float]], extra: dict[int, dict[str, str]]
          ) -> str:
    names = list(next(iter(results.values())).keys())
    head = "| " + title + " | " + " | ".join(f"{s:,} jobs" for s in sizes) + " |"
    lines = [head, "| --- |" + " ---: |" * len(sizes)]
    for name in names:
        cells = [f"{results[s][name]:.1f}" if results[s][name] < 100 else f"{results[s][name]:.0f}" for s in sizes]
        lines.append(f"| {name} (ms) | " + " | ".join(cells) + " |")
    for name in next(iter(extra.values())):
        lines.append(f"| {name} | " + " | ".join(extra[s][name] for s in sizes) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0,10000,100000,1000000")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--full-sweep", action="store_true", help="also time one full `db sweep` per size")
    parser.add_argument("--workdir", default=None, help="where the SQLite files and images go (default: temp)")
    parser.add_argument("--output", default=None, help="append the tables to this markdown file")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    backends = args.backends.split(",")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="imagine-bench-history-"))
    workdir.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    pg = _load_pg_server().ThrowawayPostgres().start() if "postgresql" in backends else None
    results: dict[str, dict[int, dict[str, float]]] = {b: {} for b in backends}
    extra: dict[str, dict[int, dict[str, str]]] = {b: {} for b in backends}
    now = datetime.now(UTC)
    try:
        subjects: list[tuple[Built, int, Path, History]] = []
        for size in sizes:  # build everything first, then time all of it in interleaved rounds
            shape = Shape(jobs=size)
            images_dir = workdir / f"images-{size}"
            shutil.rmtree(images_dir, ignore_errors=True)
            history, built, files = build(backends, shape, now, workdir, images_dir, pg, log)
            for item in built:
                # Each database gets its own copy of the files: the timed calls delete and plant some.
                backend_images = workdir / f"images-{size}-{item.backend}"
                shutil.rmtree(backend_images, ignore_errors=True)
                shutil.copytree(images_dir, backend_images)
                subjects.append((item, size, backend_images, history))
                extra[item.backend][size] = {"rows (jobs / images / votes)": (
                    f"{history.rows['jobs']:,} / {history.rows['images']:,} / {history.rows['contest_votes']:,}"),
                    "image files": f"{files:,}", "database size": item.size,
                    "upgrade 0002 -> head (s)": f"{item.upgrade_seconds:.1f}"}
            shutil.rmtree(images_dir, ignore_errors=True)
        log("timing: every operation on every database in turn, round after round")
        for (backend, size), timings in asyncio.run(measure(subjects, args.runs, args.full_sweep, log)).items():
            results[backend][size] = timings
    finally:
        if pg is not None:
            pg.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {platform.processor() or platform.machine()}, " \
            f"{os.cpu_count()} CPUs visible (shared), Python {platform.python_version()}, SQLite " \
            f"{sqlite3.sqlite_version}, PostgreSQL from {pg.bin_dir if pg else '-'}; median of {args.runs} runs"
    out = [f"_{stamp}_", ""]
    for backend in backends:
        out += [table(backend, [s for s in sizes if s in results[backend]], results[backend], extra[backend]), ""]
    report = "\n".join(out)
    print(report)
    if args.output:
        with open(args.output, "a", encoding="utf-8") as handle:
            handle.write("\n" + report + "\n")
    return 0


if __name__ == "__main__":
    # A plain `kill` ends the run through its clean-up too (the PostgreSQL server, the temporary files).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
