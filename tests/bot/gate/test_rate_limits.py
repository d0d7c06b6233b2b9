"""The rate limiter on real SQLite files: sliding window, queued jobs, overrides, restarts, concurrency."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.config import LimitOverride, RateLimitSettings
from bot.gate.rate_limits import PENDING_SECONDS, Limits, RateLimited, RateLimiter, loosening
from bot.storage import repository as repo
from bot.storage.db import Database
from tests.helpers import new_job

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
    job = await new_job(db, guild_id=guild, channel_id=1, user_id=user, prompt="p", negative_prompt="",
                                seed=1, steps=1, guidance=1.0, width=8, height=8, count=1, scheduler="euler",
                                model="tiny", ledger_entry_id=ledger)
    return job.id



async def limits_of(rl: RateLimiter, guild_id: int, role_ids: tuple[int, ...] = ()) -> Limits:
    """The limits a member of ``guild_id`` with ``role_ids`` gets (as /history shows them)."""
    return (await rl.usage(guild_id, 0, role_ids=role_ids)).limits


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


async def test_queued_jobs_limit_pending_journalled_release(db: Database) -> None:
    clock = Clock()
    rl = limiter(db, clock, images_per_window=100, max_queued_per_user=2)
    a = await rl.reserve(G, U, 1)
    b = await rl.reserve(G, U, 1)  # a and b are pending (not journalled yet): they count as queued
    with pytest.raises(RateLimited) as info:
        await rl.reserve(G, U, 1)
    assert info.value.kind == "queued" and "finishes" in info.value.reason
    job_a = await _job(db, ledger=a.entry_id)
    await _job(db, ledger=b.entry_id)  # journalling a job links its grant to it
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
    assert (await limits_of(rl, G)).images_per_window == 10
    assert (await limits_of(rl, G + 1)).images_per_window == 5
    # Role 2 (30 per minute) is more generous than role 1 (50 per hour); the most queued jobs among roles.
    limits = await limits_of(rl, G, role_ids=(1, 2, 4))
    assert (limits.images_per_window, limits.window_seconds, limits.max_queued_per_user) == (30, 60, 9)
    limits = await limits_of(rl, G, role_ids=(1, 3))  # role 3 sets no queue limit: it keeps the base's 100
    assert (limits.images_per_window, limits.max_queued_per_user) == (50, 100)
    assert (await limits_of(rl, G, role_ids=(3,))).images_per_window == 1
    await rl.reserve(G, U, 10)
    with pytest.raises(RateLimited):
        await rl.reserve(G, U, 1)
    with pytest.raises(RateLimited):
        await rl.reserve(G, U, 30, role_ids=(2,))  # the 10 images count in the role's one-minute window too
    clock.advance(61)
    await rl.reserve(G, U, 30, role_ids=(2,))


async def test_a_servers_own_settings_only_tighten_the_hosts(db: Database) -> None:
    rl = limiter(db, Clock(), images_per_window=20, window_seconds=3600, max_queued_per_user=3,
                 role_overrides={1: LimitOverride(images_per_window=30, window_seconds=60, max_queued_per_user=9)})
    # A row written before the rule (or by hand): far looser than the host's config. It loosens nothing.
    await repo.update_guild_settings(db, G, images_per_window=10_000, window_seconds=1, max_queued_per_user=100)
    limits = await limits_of(rl, G)
    assert (limits.images_per_window, limits.window_seconds, limits.max_queued_per_user) == (20, 3600, 3)
    await rl.reserve(G, U, 20)
    with pytest.raises(RateLimited) as info:
        await rl.reserve(G, U, 1)
    assert info.value.kind == "window"
    # Stricter values apply, to every member of the server, role holders included.
    await repo.update_guild_settings(db, G, images_per_window=4, window_seconds=7200, max_queued_per_user=1)
    limits = await limits_of(rl, G)
    assert (limits.images_per_window, limits.window_seconds, limits.max_queued_per_user) == (4, 7200, 1)
    role = await limits_of(rl, G, role_ids=(1,))
    assert (role.images_per_window, role.window_seconds, role.max_queued_per_user) == (4, 7200, 1)
    # Other servers keep the host's limits.
    other = await limits_of(rl, G + 1)
    assert (other.images_per_window, other.window_seconds, other.max_queued_per_user) == (20, 3600, 3)


def test_loosening_names_each_limit_a_setting_would_exceed() -> None:
    host = Limits(images_per_window=20, window_seconds=3600, max_queued_per_user=3)
    assert loosening(host, images_per_window=20, window_seconds=3600, max_queued_per_user=3) == []
    assert loosening(host, images_per_window=0, window_seconds=86400, max_queued_per_user=0) == []
    assert loosening(host, images_per_window=10_000, window_seconds=1, max_queued_per_user=100) == [
        "at most 20 image(s) per window", "a window of at least 3600 seconds", "at most 3 job(s) waiting per member"]


async def test_one_server_holds_at_most_its_share_of_the_queue_exactly(db: Database) -> None:
    clock = Clock()
    settings = RateLimitSettings(images_per_window=100, max_queued_per_user=10, max_queue_share_per_guild=0.5)
    rl = RateLimiter(db, settings, queue_size=8, clock=clock)
    assert rl.server_cap == 4

    async def attempt(guild: int, user: int) -> RateLimited | None:
        try:
            await rl.reserve(guild, user, 1)
            return None
        except RateLimited as exc:
            return exc

    # 20 members of one server at once, and 2 members of another: the first server gets exactly 4 slots.
    results = await asyncio.gather(*(attempt(G, U + i) for i in range(20)), attempt(G + 1, U), attempt(G + 1, U + 1))
    refusals = [r for r in results[:20] if r is not None]
    assert len(refusals) == 16 and results[20] is None and results[21] is None
    assert {r.kind for r in refusals} == {"server_share"}
    assert "this server already has 4 job(s)" in refusals[0].reason and "try again" in refusals[0].reason
    # Journalled jobs count while queued or running; a finished one frees a slot.
    ids = [await _job(db, user=U + 100 + i) for i in range(2)]
    clock.advance(PENDING_SECONDS + 1)  # the 4 reservations above were never journalled: they lapse
    for i in range(2):
        await rl.reserve(G, U + 200 + i, 1)
    assert await attempt(G, U + 300) is not None  # 2 jobs + 2 pending reservations
    await repo.mark_done(db, ids[0])
    assert await attempt(G, U + 300) is None
    # Direct messages have no server, and no share to count against.
    assert rl.server_cap == 4 and await attempt(None, U) is None


def test_no_share_limit_unless_configured_below_one(db: Database) -> None:
    assert RateLimiter(db, RateLimitSettings(), queue_size=64).server_cap is None
    assert RateLimiter(db, RateLimitSettings(max_queue_share_per_guild=0.5)).server_cap is None
    assert RateLimiter(db, RateLimitSettings(max_queue_share_per_guild=0.01), queue_size=10).server_cap == 1


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


async def test_the_replay_of_a_command_that_died_before_its_journal_replaces_its_own_grant(db: Database) -> None:
    """A process killed between reserve and journal leaves an unlinked grant; the inbox replays the command with
    the same interaction id: it is charged once and not refused as "already waiting" by its own ghost."""
    rl = limiter(db, Clock(), images_per_window=3, max_queued_per_user=1)
    await rl.reserve(G, U, 2, interaction_id=501)  # ...and the process died here
    replayed = await rl.reserve(G, U, 2, interaction_id=501)
    usage = await rl.usage(G, U)
    assert (usage.used, usage.queued) == (2, 1)
    await _job(db, ledger=replayed.entry_id)  # journalled: the grant is the job's now
    with pytest.raises(RateLimited) as info:  # a different command is still limited as before
        await rl.reserve(G, U, 1, interaction_id=502)
    assert info.value.kind == "queued"
    with pytest.raises(RateLimited):  # and a journalled grant is never dropped, even for the same interaction
        await rl.reserve(G, U, 2, interaction_id=501)
    assert (await rl.usage(G, U)).used == 2
