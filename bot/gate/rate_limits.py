"""Per-member limits: images per sliding window and jobs waiting at once, counted in the database.

Counting ledger rows (not memory) means a restart does not hand everyone a fresh allowance. Exactness under
concurrency, across processes too: for one member, check and insert happen in one write transaction that holds
a database lock for that member (:meth:`Database.hold_lock`: an advisory lock on PostgreSQL, the write lock on
SQLite), so 20 simultaneous requests from any number of bot processes accept exactly what the limits allow.
A granted reservation is pending until :meth:`RateLimiter.attach` links it to its journalled job; while
pending (for at most ``PENDING_SECONDS``) it also counts as a queued job, so concurrent requests see it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, func, select, update

from bot.config import RateLimitSettings
from bot.storage.db import Database
from bot.storage.models import GuildSettings, Job, RateLimitEntry
from bot.storage.records import UNFINISHED
from bot.timers.clock import utcnow

PENDING_SECONDS = 120


@dataclass(frozen=True)
class Limits:
    """The limits that apply to one member right now."""

    images_per_window: int
    window_seconds: int
    max_queued_per_user: int

    @property
    def window(self) -> timedelta:
        return timedelta(seconds=self.window_seconds)


@dataclass(frozen=True)
class Reservation:
    """Images granted to a member; pass it to :meth:`RateLimiter.release` if the job is refused later."""

    entry_id: int
    guild_id: int | None
    user_id: int
    images: int
    at: datetime
    limits: Limits


@dataclass(frozen=True)
class Usage:
    used: int
    limits: Limits
    queued: int
    resets_at: datetime | None  # when the oldest counted entry leaves the window


class RateLimited(Exception):
    """A refusal a member can read: ``reason`` says why, ``retry_at`` when to try again.

    ``kind`` is ``window`` (too many images lately), ``queued`` (too many jobs waiting; retry when one
    finishes, ``retry_at`` is then only a hint) or ``too_large`` (more images than the window allows at all).
    """

    def __init__(self, retry_at: datetime, reason: str, kind: Literal["window", "queued", "too_large"] = "window"):
        super().__init__(reason)
        self.retry_at = retry_at
        self.reason = reason
        self.kind = kind


def _describe_window(seconds: int) -> str:
    if seconds % 86400 == 0:
        n, unit = seconds // 86400, "day"
    elif seconds % 3600 == 0:
        n, unit = seconds // 3600, "hour"
    elif seconds % 60 == 0:
        n, unit = seconds // 60, "minute"
    else:
        n, unit = seconds, "second"
    return f"{unit}" if n == 1 else f"{n} {unit}s"


def _apply(limits: Limits, override: Any) -> Limits:
    """Fields the override sets (not None) replace those of ``limits``."""
    if override is None:
        return limits
    values = {name: getattr(override, name) for name in ("images_per_window", "window_seconds", "max_queued_per_user")}
    return Limits(**{name: getattr(limits, name) if value is None else value for name, value in values.items()})


class RateLimiter:
    """``reserve`` before journalling a job; ``attach`` once it is journalled; ``release`` if it is refused."""

    def __init__(self, db: Database, settings: RateLimitSettings, *,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock

    def _resolve(self, guild_row: GuildSettings | None, guild_id: int | None, role_ids: Iterable[int]) -> Limits:
        s = self.settings
        limits = Limits(s.images_per_window, s.window_seconds, s.max_queued_per_user)
        if guild_id is not None:
            limits = _apply(limits, s.guild_overrides.get(guild_id))
            limits = _apply(limits, guild_row)  # set by the guild's admins at run time: wins over config
        roles: list[Limits] = [_apply(limits, s.role_overrides[r]) for r in role_ids if r in s.role_overrides]
        if not roles:
            return limits
        # The most generous applicable role wins: the highest rate for the window, the most queued jobs.
        best = max(roles, key=lambda lim: (lim.images_per_window / lim.window_seconds, lim.images_per_window))
        return Limits(best.images_per_window, best.window_seconds, max(r.max_queued_per_user for r in roles))

    async def limits_for(self, guild_id: int | None, role_ids: Iterable[int] = ()) -> Limits:
        async with self.db.session() as session:
            row = await session.get(GuildSettings, guild_id) if guild_id is not None else None
            return self._resolve(row, guild_id, role_ids)

    @staticmethod
    def _member(model: Any, guild_id: int | None, user_id: int) -> list[Any]:
        return [model.guild_id == guild_id, model.user_id == user_id]

    async def _queued(self, session: Any, guild_id: int | None, user_id: int, now: datetime) -> int:
        jobs = await session.scalar(select(func.count(Job.id)).where(
            *self._member(Job, guild_id, user_id), Job.status.in_(UNFINISHED)))
        pending = await session.scalar(select(func.count(RateLimitEntry.id)).where(
            *self._member(RateLimitEntry, guild_id, user_id), RateLimitEntry.job_id.is_(None),
            RateLimitEntry.at > now - timedelta(seconds=PENDING_SECONDS)))
        return int(jobs or 0) + int(pending or 0)

    async def _window(self, session: Any, guild_id: int | None, user_id: int, now: datetime,
                      limits: Limits) -> list[tuple[datetime, int]]:
        rows = await session.execute(
            select(RateLimitEntry.at, RateLimitEntry.images)
            .where(*self._member(RateLimitEntry, guild_id, user_id), RateLimitEntry.at > now - limits.window)
            .order_by(RateLimitEntry.at, RateLimitEntry.id))
        return [(at, int(images)) for at, images in rows]

    async def reserve(self, guild_id: int | None, user_id: int, images: int,
                      role_ids: Iterable[int] = ()) -> Reservation:
        """Grant ``images`` to a member or raise :class:`RateLimited`; the grant is written to the ledger."""
        if images < 1:
            raise ValueError("images must be at least 1")
        role_ids = tuple(role_ids)
        async with self.db.session(write=True) as session:
            await self.db.hold_lock(session, "rate-limit", guild_id, user_id)
            now = self.clock()
            row = await session.get(GuildSettings, guild_id) if guild_id is not None else None
            limits = self._resolve(row, guild_id, role_ids)
            window_text = _describe_window(limits.window_seconds)
            if images > limits.images_per_window:
                raise RateLimited(now + limits.window, (
                    f"you can ask for at most {limits.images_per_window} image(s) per {window_text}"
                    if limits.images_per_window else "image generation is switched off for you here"), "too_large")
            queued = await self._queued(session, guild_id, user_id, now)
            if queued >= limits.max_queued_per_user:
                raise RateLimited(now, (
                    f"you already have {queued} job(s) waiting or running (at most "
                    f"{limits.max_queued_per_user}); try again when one of your jobs finishes"), "queued")
            entries = await self._window(session, guild_id, user_id, now, limits)
            used = sum(n for _, n in entries)
            if used + images > limits.images_per_window:
                retry_at = now + limits.window
                freed = 0
                for at, n in entries:
                    freed += n
                    if used - freed + images <= limits.images_per_window:
                        retry_at = at + limits.window
                        break
                raise RateLimited(retry_at, (
                    f"you have used {used} of your {limits.images_per_window} image(s) per {window_text}"),
                    "window")
            entry = RateLimitEntry(guild_id=guild_id, user_id=user_id, images=images, at=now, job_id=None)
            session.add(entry)
            await session.flush()
            return Reservation(entry.id, guild_id, user_id, images, now, limits)

    async def attach(self, reservation: Reservation, job_id: int) -> None:
        """Link the reservation to its journalled job (it then counts as queued through the job's status)."""
        async with self.db.session(write=True) as session:
            await session.execute(update(RateLimitEntry).where(RateLimitEntry.id == reservation.entry_id)
                                  .values(job_id=job_id))

    async def release(self, reservation: Reservation) -> None:
        """Give the images back (the job was refused after all, e.g. the queue was full). Idempotent."""
        async with self.db.session(write=True) as session:
            await session.execute(delete(RateLimitEntry).where(RateLimitEntry.id == reservation.entry_id))

    async def usage(self, guild_id: int | None, user_id: int, role_ids: Iterable[int] = ()) -> Usage:
        """What a member has used, for a /limits or /stats reply."""
        async with self.db.session() as session:
            now = self.clock()
            row = await session.get(GuildSettings, guild_id) if guild_id is not None else None
            limits = self._resolve(row, guild_id, tuple(role_ids))
            entries = await self._window(session, guild_id, user_id, now, limits)
            queued = await self._queued(session, guild_id, user_id, now)
            resets = entries[0][0] + limits.window if entries else None
            return Usage(sum(n for _, n in entries), limits, queued, resets)


__all__ = ["Limits", "RateLimited", "RateLimiter", "Reservation", "Usage", "PENDING_SECONDS"]
