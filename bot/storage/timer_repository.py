"""Every query on the ``timers`` table, as async functions returning :class:`TimerRecord` s.

:func:`insert_timer` takes an open session so another repository can store a feature's timers in the same
transaction as the feature's own rows (a contest and its two deadlines are created together or not at all); the
others open their own transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime

from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.db import Database
from bot.storage.timer_models import EVENT_MAX_CHARS, Timer
from bot.storage.timer_records import JSONScalar, NewTimer, TimerRecord


def _record(row: Timer) -> TimerRecord:
    return TimerRecord(id=row.id, event=row.event, due_at=row.due_at, payload=dict(row.payload),
                       created_at=row.created_at)


async def insert_timer(session: AsyncSession, timer: NewTimer, *, created_at: datetime) -> TimerRecord:
    """Store ``timer`` inside the caller's transaction (it exists only if that transaction commits)."""
    if not timer.event or len(timer.event) > EVENT_MAX_CHARS:
        raise ValueError(f"a timer event is 1 to {EVENT_MAX_CHARS} characters (got {timer.event!r})")
    row = Timer(event=timer.event, due_at=timer.due_at, payload=dict(timer.payload), created_at=created_at)
    session.add(row)
    await session.flush()
    return _record(row)


async def add_timer(db: Database, timer: NewTimer, *, created_at: datetime) -> TimerRecord:
    async with db.session(write=True) as session:
        return await insert_timer(session, timer, created_at=created_at)


async def get_timer(db: Database, timer_id: int) -> TimerRecord | None:
    async with db.session() as session:
        row = await session.get(Timer, timer_id)
        return _record(row) if row else None


async def earliest_timer(db: Database) -> TimerRecord | None:
    """The timer due first (ties: the one stored first), or None when nothing is pending."""
    async with db.session() as session:
        row = (await session.scalars(select(Timer).order_by(Timer.due_at, Timer.id).limit(1))).first()
        return _record(row) if row else None


async def delete_timer(db: Database, timer_id: int) -> bool:
    async with db.session(write=True) as session:
        result = await session.execute(delete(Timer).where(Timer.id == timer_id))
        return bool(result.rowcount)  # type: ignore[attr-defined]


async def postpone_timer(db: Database, timer_id: int, due_at: datetime) -> bool:
    """Move a timer to ``due_at`` (a failed handler's retry); False when it was deleted meanwhile."""
    async with db.session(write=True) as session:
        result = await session.execute(update(Timer).where(Timer.id == timer_id).values(due_at=due_at))
        return bool(result.rowcount)  # type: ignore[attr-defined]


def _payload_is(key: str, value: JSONScalar) -> ColumnElement[bool]:
    """``payload[key] == value``, typed so SQLite (json_extract) and PostgreSQL (->>) compare alike."""
    item = Timer.payload[key]
    if isinstance(value, bool):  # before int: bool is an int
        return item.as_boolean() == value
    if isinstance(value, int):
        return item.as_integer() == value
    if isinstance(value, float):
        return item.as_float() == value
    if isinstance(value, str):
        return item.as_string() == value
    raise TypeError(f"timers are matched on str, int, float or bool payload values (got {type(value).__name__})")


async def delete_matching(db: Database, events: Collection[str], match: Mapping[str, JSONScalar]) -> int:
    """Delete the timers of ``events`` whose payload has every ``match`` value; returns how many."""
    if not events:
        return 0
    conditions = [Timer.event.in_(events), *(_payload_is(key, value) for key, value in match.items())]
    async with db.session(write=True) as session:
        result = await session.execute(delete(Timer).where(*conditions),
                                       execution_options={"synchronize_session": False})
        return int(result.rowcount)  # type: ignore[attr-defined]
