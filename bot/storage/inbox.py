"""The inbox: acknowledged commands that are not jobs yet, so a crash after "thinking…" loses nothing.

An entry is written with one INSERT before the interaction is deferred, and deleted by
:func:`bot.storage.repository.create_job` in the transaction that journals its job (so an entry and its job
never both exist after a commit), or by :func:`forget` once a refusal was answered. Whatever is left at the
next start was acknowledged but never journalled, and is replayed through the gate.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import delete, select

from bot.clock import utcnow
from bot.storage.db import Database
from bot.storage.models import InboxEntry
from bot.storage.records import InboxRecord


def _record(row: InboxEntry) -> InboxRecord:
    return InboxRecord(
        id=row.id, interaction_id=row.interaction_id, application_id=row.application_id, token=row.token,
        guild_id=row.guild_id, channel_id=row.channel_id, user_id=row.user_id,
        role_ids=tuple(int(r) for r in row.role_ids or ()), options=dict(row.options or {}), source=row.source,
        parent_job_id=row.parent_job_id, received_at=row.received_at,
    )


async def record(db: Database, *, interaction_id: int, application_id: int, token: str, guild_id: int | None,
                 channel_id: int, user_id: int, role_ids: tuple[int, ...] = (), options: Mapping[str, object],
                 source: str = "imagine", parent_job_id: int | None = None,
                 received_at: datetime | None = None) -> None:
    """One INSERT in its own short transaction, queued with this process's other writers (no busy polling)."""
    async with db.session(write=True) as session:
        session.add(InboxEntry(
            interaction_id=interaction_id, application_id=application_id, token=token, guild_id=guild_id,
            channel_id=channel_id, user_id=user_id, role_ids=list(role_ids), options=dict(options),
            source=source, parent_job_id=parent_job_id, received_at=received_at or utcnow(),
        ))


async def pending(db: Database) -> list[InboxRecord]:
    """Every entry left, oldest first (the order the commands were received)."""
    async with db.session() as session:
        rows = await session.scalars(select(InboxEntry).order_by(InboxEntry.received_at, InboxEntry.id))
        return [_record(row) for row in rows]


async def forget(db: Database, interaction_id: int) -> bool:
    """Delete the entry of an interaction that was answered without a job; True when there was one."""
    async with db.session() as session:
        result = await session.execute(delete(InboxEntry).where(InboxEntry.interaction_id == interaction_id))
        return bool(result.rowcount)
