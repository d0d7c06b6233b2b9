"""The timers table's queries on SQLite: matching payload values by type, and storing inside another transaction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.storage import timer_repository as repo
from bot.storage.db import Database
from bot.storage.timer_records import NewTimer

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def _add(db: Database, event: str, minutes: int, **payload: object) -> int:
    return (await repo.add_timer(db, NewTimer(event, T0 + timedelta(minutes=minutes), payload), created_at=T0)).id


async def _left(db: Database, *ids: int) -> list[int]:
    return [i for i in ids if await repo.get_timer(db, i) is not None]


async def test_delete_matching_compares_payload_values_by_type(db: Database) -> None:
    a = await _add(db, "remind", 1, user=7, channel="general", urgent=True)
    b = await _add(db, "remind", 2, user=7, channel="general", urgent=False)
    c = await _add(db, "remind", 3, user=70, channel="general", urgent=True)
    d = await _add(db, "other", 4, user=7, channel="general", urgent=True)
    e = await _add(db, "remind", 5, user="7", ratio=0.5)  # a string "7" is not the number 7
    assert await repo.delete_matching(db, ["remind"], {"user": 7, "urgent": True}) == 1
    assert await _left(db, a, b, c, d, e) == [b, c, d, e]
    assert await repo.delete_matching(db, ["remind"], {"user": "7", "ratio": 0.5}) == 1
    assert await repo.delete_matching(db, ["remind", "other"], {"channel": "general", "user": 7}) == 2
    assert await _left(db, a, b, c, d, e) == [c]
    assert await repo.delete_matching(db, [], {"user": 70}) == 0
    with pytest.raises(TypeError, match="str, int, float or bool"):
        await repo.delete_matching(db, ["remind"], {"user": [70]})  # type: ignore[dict-item]
    assert await _left(db, c) == [c]


async def test_earliest_postpone_and_delete(db: Database) -> None:
    later = await _add(db, "x", 10)
    sooner = await _add(db, "x", 5)
    tie = await _add(db, "x", 5)
    earliest = await repo.earliest_timer(db)
    assert earliest is not None and earliest.id == sooner
    assert await repo.postpone_timer(db, sooner, T0 + timedelta(minutes=20))
    earliest = await repo.earliest_timer(db)
    assert earliest is not None and earliest.id == tie
    assert await repo.delete_timer(db, tie) and not await repo.delete_timer(db, tie)
    assert not await repo.postpone_timer(db, tie, T0)
    earliest = await repo.earliest_timer(db)
    assert earliest is not None and earliest.id == later


async def test_insert_timer_belongs_to_the_callers_transaction(db: Database) -> None:
    with pytest.raises(RuntimeError, match="the feature's own write failed"):
        async with db.session(write=True) as session:
            stored = await repo.insert_timer(session, NewTimer("x", T0, {"k": 1}), created_at=T0)
            raise RuntimeError("the feature's own write failed")
    assert await repo.get_timer(db, stored.id) is None and await repo.earliest_timer(db) is None
