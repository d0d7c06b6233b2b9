"""Every query on a command's or start-up's path is served by an index, so its cost does not grow with history.

The statements are the ones the project's functions really send (captured from the engine), explained with
the parameters they were sent with: on SQLite ``EXPLAIN QUERY PLAN`` must show no full ``SCAN`` of a table that
grows with the history; on PostgreSQL (``enable_seqscan = off``, so a tiny table still shows whether an index
*can* serve the query) no ``Seq Scan`` of one. /history must also read its 10 rows in index order, not sort.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from bot.clock import utcnow
from bot.config import RateLimitSettings
from bot.gate.rate_limits import RateLimiter
from bot.storage import contest_repository as contests
from bot.storage import repository as repo
from bot.storage.db import Database
from bot.storage.images import sweep_orphans
from tests.helpers import new_job

GROWING_TABLES = ("jobs", "images", "contest_votes", "contest_entries", "contests", "rate_limit_ledger",
                  "moderation_events", "guild_member_counts", "members", "contest_results")
GUILD, USER, CHANNEL = 10, 100, 1


async def _job(db: Database, user: int = USER, *, finish: bool = True) -> int:
    job = await new_job(db, guild_id=GUILD, channel_id=CHANNEL, user_id=user, prompt="p",
                                negative_prompt="", seed=1, steps=1, guidance=1.0, width=8, height=8, count=1,
                                scheduler="euler", model="tiny")
    if finish:
        await repo.add_image(db, job.id, index=0, seed=1, path=f"{job.id}-0.png", sha256="", size_bytes=1,
                             width=8, height=8)
        await repo.mark_done(db, job.id)
    return job.id


@pytest.fixture
async def history(db: Database) -> dict[str, int]:
    """A small history of every kind of row, enough that each query has something to find."""
    for user in (USER, USER + 1, USER + 2):
        for _ in range(3):
            await _job(db, user)
    unfinished = await _job(db, finish=False)
    now = utcnow()
    contest, _ = await contests.create_contest(db, guild_id=GUILD, channel_id=CHANNEL, theme="t", created_by=USER,
                                            starts_at=now - timedelta(hours=1), submit_ends_at=now,
                                            vote_ends_at=now + timedelta(hours=1), max_entries=None)
    entry = await contests.add_entry(db, contest_id=contest.id, member_id=USER, job_id=1, image_index=0, now=now,
                                     validate=lambda *_: None)
    await contests.add_vote(db, entry_id=entry.id, voter_id=USER + 1, now=now, validate=lambda *_: None)
    await repo.record_moderation_event(db, guild_id=GUILD, user_id=USER, prompt="x", category="c", rule="r")
    return {"contest": contest.id, "unfinished": unfinished}


class Captured:
    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []

    def __call__(self, _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any,
                 executemany: bool) -> None:
        if re.match(r"\s*(SELECT|UPDATE|DELETE|WITH)\b", statement, re.IGNORECASE) and not executemany:
            self.statements.append((statement, parameters))


async def _statements_of(db: Database, call: Callable[[], Awaitable[Any]]) -> list[tuple[str, Any]]:
    captured = Captured()
    event.listen(db.engine.sync_engine, "before_cursor_execute", captured)
    try:
        await call()
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", captured)
    assert captured.statements, "the function sent no query"
    return captured.statements


async def _plan(db: Database, statement: str, parameters: Any) -> list[str]:
    async with db.engine.connect() as conn:
        if db.is_sqlite:
            rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            return [str(row[-1]) for row in rows]
        await conn.exec_driver_sql("SET enable_seqscan = off")
        rows = await conn.exec_driver_sql(f"EXPLAIN {statement}", parameters)
        return [str(row[0]) for row in rows]


def _full_scans(plan: list[str], is_sqlite: bool) -> list[str]:
    tables = "|".join(GROWING_TABLES)
    # SQLite: "SCAN jobs" or "SCAN jobs USING [COVERING] INDEX ..." reads the whole table or index.
    pattern = re.compile(rf"^SCAN ({tables})\b") if is_sqlite else re.compile(rf"Seq Scan on ({tables})\b")
    return [line for line in plan if pattern.search(line.strip())]


async def _assert_indexed(db: Database, call: Callable[[], Awaitable[Any]]) -> list[list[str]]:
    plans = []
    for statement, parameters in await _statements_of(db, call):
        plan = await _plan(db, statement, parameters)
        assert not _full_scans(plan, db.is_sqlite), f"full scan in\n{statement}\n" + "\n".join(plan)
        plans.append(plan)
    return plans


def _commands(db: Database, history: dict[str, int], tmp_path: Path) -> dict[str, Callable[[], Awaitable[Any]]]:
    limiter = RateLimiter(db, RateLimitSettings(images_per_window=1000, max_queued_per_user=1000))
    return {
        "rate-limit reserve": lambda: limiter.reserve(GUILD, USER, 1),
        "rate-limit usage": lambda: limiter.usage(GUILD, USER),
        "accept and finish a job": lambda: _job(db),
        "/history": lambda: repo.jobs_for_user(db, GUILD, USER),
        "/stats": lambda: repo.guild_stats(db, GUILD),
        "active jobs": lambda: repo.count_active_jobs(db, GUILD, USER),
        "job of a message": lambda: repo.find_job_by_message(db, 12345),
        "start-up: unfinished jobs": lambda: repo.unfinished_jobs(db),
        "start-up: undelivered jobs": lambda: repo.undelivered_jobs(db, finished_after=utcnow() - timedelta(1)),
        "start-up: sweep": lambda: sweep_orphans(db, tmp_path / "images"),
        "/contest status: counts": lambda: contests.contest_counts(db, history["contest"]),
        "/contest status: tally": lambda: contests.tallies(db, history["contest"]),
        "/contest status: latest": lambda: contests.latest_contest(db, CHANNEL),
        "db prune": lambda: repo.stored_images(db, older_than=utcnow() - timedelta(days=30)),
    }


COMMANDS = ["rate-limit reserve", "rate-limit usage", "accept and finish a job", "/history", "/stats",
            "active jobs", "job of a message", "start-up: unfinished jobs", "start-up: undelivered jobs",
            "start-up: sweep", "/contest status: counts", "/contest status: tally", "/contest status: latest",
            "db prune"]


@pytest.mark.parametrize("command", COMMANDS)
async def test_no_full_scan_of_a_growing_table(db: Database, history: dict[str, int], tmp_path: Path,
                                               command: str) -> None:
    await _assert_indexed(db, _commands(db, history, tmp_path)[command])


async def test_history_reads_the_newest_rows_in_index_order(db: Database, history: dict[str, int]) -> None:
    (plan,) = await _assert_indexed(db, lambda: repo.jobs_for_user(db, GUILD, USER))
    text = "\n".join(plan)
    assert "ix_jobs_guild_user_id" in text
    assert "TEMP B-TREE" not in text and "Sort" not in text  # no sort of all the member's jobs


async def test_undelivered_jobs_use_the_partial_index(db: Database, history: dict[str, int]) -> None:
    plans = await _assert_indexed(db, lambda: repo.undelivered_jobs(db, finished_after=utcnow() - timedelta(1)))
    plan = "\n".join(plans[0])  # a job's images are looked up by job, not by the "pruned" flag (every image)
    assert "job_id" in plan and not re.search(r"pruned=\?|Index Cond: \(pruned", plan), plan
    if db.is_sqlite:  # PostgreSQL picks by its statistics, which a table this small does not make meaningful
        assert "ix_jobs_undelivered" in "\n".join(plans[0])


async def test_prune_uses_the_stored_images_index(db: Database, history: dict[str, int]) -> None:
    plans = await _assert_indexed(db, lambda: repo.stored_images(db, older_than=utcnow() - timedelta(days=30)))
    assert "ix_images_pruned_created_at" in "\n".join(plans[0])
    assert "TEMP B-TREE" not in "\n".join(plans[0])  # read in index order, not sorted afterwards
