"""The rate-limit ledger's queries, for the gate's limiter: counts of what a member (or a server) holds, the grants
inside a window, and writing or dropping a grant. The limiter decides; this module only reads and writes rows, so no
ORM object leaves ``bot/storage``.

Every read and the write that follows happen in one :class:`LedgerTransaction`, which first takes the database
locks named by the caller (:meth:`Database.hold_lock`), so a check and its insert are exact across processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.db import Database
from bot.storage.models import GuildSettings, Job, RateLimitEntry
from bot.storage.records import UNFINISHED, GuildSettingsRecord
from bot.storage.repository import guild_record


class LedgerTransaction:
    """One transaction over the ledger; see the module docstring."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def guild_settings(self, guild_id: int | None) -> GuildSettingsRecord | None:
        if guild_id is None:
            return None
        row = await self._session.get(GuildSettings, guild_id)
        return guild_record(row, guild_id) if row is not None else None

    async def held_jobs(self, guild_id: int | None, user_id: int | None, pending_since: datetime) -> int:
        """Jobs queued or running, plus grants not journalled yet (newer than ``pending_since``): for one member,
        or for a whole server when ``user_id`` is None."""
        job_filter = [Job.guild_id == guild_id, Job.status.in_(UNFINISHED)]
        entry_filter = [RateLimitEntry.guild_id == guild_id, RateLimitEntry.job_id.is_(None),
                        RateLimitEntry.at > pending_since]
        if user_id is not None:
            job_filter.append(Job.user_id == user_id)
            entry_filter.append(RateLimitEntry.user_id == user_id)
        jobs = await self._session.scalar(select(func.count(Job.id)).where(*job_filter))
        pending = await self._session.scalar(select(func.count(RateLimitEntry.id)).where(*entry_filter))
        return int(jobs or 0) + int(pending or 0)

    async def grants_since(self, guild_id: int | None, user_id: int, since: datetime) -> list[tuple[datetime, int]]:
        """``(when, images)`` of a member's grants after ``since``, oldest first."""
        rows = await self._session.execute(
            select(RateLimitEntry.at, RateLimitEntry.images)
            .where(RateLimitEntry.guild_id == guild_id, RateLimitEntry.user_id == user_id, RateLimitEntry.at > since)
            .order_by(RateLimitEntry.at, RateLimitEntry.id))
        return [(at, int(images)) for at, images in rows]

    async def drop_unjournalled(self, guild_id: int | None, user_id: int, interaction_id: int) -> int:
        """Delete the member's grants for ``interaction_id`` that no job links (an earlier try of the same command
        died before journalling it); returns how many."""
        result = await self._session.execute(delete(RateLimitEntry).where(
            RateLimitEntry.guild_id == guild_id, RateLimitEntry.user_id == user_id,
            RateLimitEntry.interaction_id == interaction_id, RateLimitEntry.job_id.is_(None)))
        return int(result.rowcount or 0)

    async def grant(self, guild_id: int | None, user_id: int, images: int, at: datetime,
                    interaction_id: int | None = None) -> int:
        """Write a grant (pending until a job links it); returns its id."""
        entry = RateLimitEntry(guild_id=guild_id, user_id=user_id, images=images, at=at, job_id=None,
                               interaction_id=interaction_id)
        self._session.add(entry)
        await self._session.flush()
        return entry.id


@asynccontextmanager
async def ledger_transaction(db: Database, locks: Sequence[tuple[object, ...]] = (), *,
                             write: bool = False) -> AsyncIterator[LedgerTransaction]:
    """A ledger transaction holding ``locks`` (taken in the order given) until it ends."""
    async with db.session(write=write) as session:
        for key in locks:
            await db.hold_lock(session, *key)
        yield LedgerTransaction(session)


async def drop_grant(db: Database, entry_id: int) -> None:
    """Give a grant back (its job was refused after all). Idempotent."""
    async with db.session(write=True) as session:
        await session.execute(delete(RateLimitEntry).where(RateLimitEntry.id == entry_id))
