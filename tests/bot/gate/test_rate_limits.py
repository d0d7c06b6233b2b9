"""The rate limiter on real SQLite files: sliding window, queued jobs, overrides, restarts, concurrency."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.config import LimitOverride, RateLimitSettings
from bot.gate.rate_limits import PENDING_SECONDS, RateLimited, RateLimiter
from bot.storage import repository as repo
from bot.storage.db import Database

G, U = 100, 200


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def limiter(db: Database, clock: Clock, **settings: object) -> RateLimiter:
    base: dict[str, object] = {"images_per_window": 5, "window_seconds": 3600, "max_queued_per_user": 100}
    return RateLimiter(db, RateLimitSettings(**{**base, **settings}), clock=clock)


async def _job(db: Database, user: int = U, guild: int | None = G, ledger: int | None = None) -> int:
    job = await repo.create_job(db, guild_id=guild, channel_id=1, user_id=user, prompt="p", negative_prompt="",
                                seed=1, steps=1, guidance=1.0, width=8, height=8, count=1, scheduler="euler",
                                model="tiny", ledger_entry_id=ledger)
    return job.id


async def test_sliding_window_counts_images_and_says_when(db: Database) -> None:
    clock = Clock()
    rl = limiter(db, clock)
    first = await rl.reserve(G, U, 2)
    clock.advance(60)
    await rl.reserve(G, U, 2)
    clock.advance(60)
    await rl.reserve(G, U, 1)
    with pytest.raises(RateLimited) as info:
        await rl.reserve(G, U, 2)
    assert info.value.kind == "window" and "5" in info.value.reason
    assert info.value.retry_at == first.at + timedelta(hours=1)  # the oldest entry leaving frees enough
    with pytest.raises(RateLimited) as info:
        await rl.reserve(G, U, 4)
    assert info.value.retry_at == first.at + timedelta(hours=1, seconds=60)  # needs the second entry gone too
    clock.now = first.at + timedelta(hours=1, seconds=1)
    await rl.reserve(G, U, 2)
    usage = await rl.usage(G, U)
    assert usage.used == 5 and usage.resets_at == first.at + timedelta(hours=1, seconds=60)


async def test_more_than_the_window_allows_at_all(db: Database) -> None:
    rl = limiter(db, Clock())
    with pytest.raises(RateLimited) as info:
        await rl.reserve(G, U, 6)
    assert info.value.kind == "too_large"
    off = limiter(db, Clock(), images_per_window=0)
    with pytest.raises(RateLimited, match="switched off"):
        await off.reserve(G, U, 1)


async def test_survives_a_restart(db: Database, tmp_path: Path) -> None:
    clock = Clock()
    await limiter(db, clock).reserve(G, U, 5)
    await db.close()
    reopened = Database.connect(db.url)
    try:
        with pytest.raises(RateLimited):
            await limiter(reopened, clock).reserve(G, U, 1)
    finally:
        await reopened.close()


async def test_queued_jobs_limit_pending_attach_release(db: Database) -> None:
    clock = Clock()
    rl = limiter(db, clock, images_per_window=100, max_queued_per_user=2)
    a = await rl.reserve(G, U, 1)
    b = await rl.reserve(G, U, 1)  # a and b are pending (not journalled yet): they count as queued
    with pytest.raises(RateLimited) as info:
        await rl.reserve(G, U, 1)
    assert info.value.kind == "queued" and "finishes" in info.value.reason
    job_a = await _job(db, ledger=a.entry_id)
    await rl.attach(b, await _job(db))
    with pytest.raises(RateLimited):
        await rl.reserve(G, U, 1)  # both jobs queued now
    await repo.mark_done(db, job_a)
    c = await rl.reserve(G, U, 1)
    await rl.release(c)  # refused after all: neither queued nor counted
    await rl.release(c)  # idempotent
    assert (await rl.usage(G, U)).used == 2
    await rl.reserve(G, U, 1)
    # A reservation never journalled (crash between reserve and accept) stops counting as queued after a while.
    rl2 = limiter(db, clock, images_per_window=100, max_queued_per_user=1)
    await rl2.reserve(G, 999, 1)
    with pytest.raises(RateLimited):
        await rl2.reserve(G, 999, 1)
    clock.advance(PENDING_SECONDS + 1)
    await rl2.reserve(G, 999, 1)


async def test_members_and_guilds_are_counted_apart(db: Database) -> None:
    rl = limiter(db, Clock())
    await rl.reserve(G, U, 5)
    await rl.reserve(G, U + 1, 5)
    await rl.reserve(G + 1, U, 5)
    await rl.reserve(None, U, 5)  # direct messages
    with pytest.raises(RateLimited):
        await rl.reserve(None, U, 1)


async def test_overrides_guild_config_db_and_roles(db: Database) -> None:
    clock = Clock()
    rl = limiter(db, clock, guild_overrides={G: LimitOverride(images_per_window=10)},
                 role_overrides={1: LimitOverride(images_per_window=50, max_queued_per_user=7),
                                 2: LimitOverride(images_per_window=30, window_seconds=60, max_queued_per_user=9),
                                 3: LimitOverride(images_per_window=1)})
    assert (await rl.limits_for(G)).images_per_window == 10
    assert (await rl.limits_for(G + 1)).images_per_window == 5
    await repo.update_guild_settings(db, G, images_per_window=12, max_queued_per_user=4)
    limits = await rl.limits_for(G)
    assert (limits.images_per_window, limits.max_queued_per_user) == (12, 4)  # the guild's own setting wins
    # Role 2 (30 per minute) is more generous than role 1 (50 per hour); the most queued jobs among roles.
    limits = await rl.limits_for(G, role_ids=(1, 2, 3, 4))
    assert (limits.images_per_window, limits.window_seconds, limits.max_queued_per_user) == (30, 60, 9)
    assert (await rl.limits_for(G, role_ids=(3,))).images_per_window == 1
    await rl.reserve(G, U, 12)
    with pytest.raises(RateLimited):
        await rl.reserve(G, U, 1)
    with pytest.raises(RateLimited):
        await rl.reserve(G, U, 30, role_ids=(2,))  # the 12 images count in the role's one-minute window too
    clock.advance(61)
    await rl.reserve(G, U, 30, role_ids=(2,))


async def test_exact_under_concurrency(db: Database) -> None:
    rl = limiter(db, Clock(), images_per_window=7)

    async def attempt(user: int) -> bool:
        try:
            await rl.reserve(G, user, 1)
            return True
        except RateLimited:
            return False

    results = await asyncio.gather(*(attempt(U) for _ in range(20)), *(attempt(U + 1) for _ in range(3)))
    assert sum(results[:20]) == 7 and all(results[20:])
    assert (await rl.usage(G, U)).used == 7

    queued = limiter(db, Clock(), images_per_window=100, max_queued_per_user=3)

    async def attempt_queued() -> bool:
        try:
            await queued.reserve(G, 555, 1)
            return True
        except RateLimited:
            return False

    assert sum(await asyncio.gather(*(attempt_queued() for _ in range(20)))) == 3


async def test_exact_across_processes(db: Database) -> None:
    """Two bot processes share the database (two engines, two pools, no shared memory): still exactly 7."""
    other = Database.connect(db.url)
    limiters = [limiter(db, Clock(), images_per_window=7), limiter(other, Clock(), images_per_window=7)]

    async def attempt(rl: RateLimiter) -> bool:
        try:
            await rl.reserve(G, U, 1)
            return True
        except RateLimited:
            return False

    try:
        results = await asyncio.gather(*(attempt(limiters[i % 2]) for i in range(24)))
    finally:
        await other.close()
    assert sum(results) == 7
    assert (await limiters[0].usage(G, U)).used == 7
