"""The bot's durable timers over a real SQLite file with a hand-driven clock: no test here sleeps for real."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.clock import ManualClock
from bot.storage import timer_repository
from bot.storage.db import Database
from bot.timers.timers import Timers

T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)


class Calls:
    """Handlers that remember what they were called with, and when; ``fail[name]`` makes that many calls raise."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.seen: list[tuple[str, dict[str, Any], datetime]] = []
        self.fail: dict[str, int] = {}

    def handler(self, event: str):  # noqa: ANN201
        async def handle(payload: Mapping[str, Any]) -> None:
            self.seen.append((event, dict(payload), self.clock.now()))
            name = payload.get("name", "")
            if self.fail.get(name):
                self.fail[name] -= 1
                raise RuntimeError("discord is down")

        return handle

    def names(self) -> list[str]:
        return [payload["name"] for _, payload, _ in self.seen]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'timers.db'}")
    await database.create_all()
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def calls(clock: ManualClock) -> Calls:
    return Calls(clock)


@pytest.fixture
async def timers(db: Database, clock: ManualClock, calls: Calls) -> AsyncIterator[Timers]:
    bot_timers = Timers(db, clock)
    bot_timers.register("ping", calls.handler("ping"))
    bot_timers.register("pong", calls.handler("pong"))
    try:
        yield bot_timers
    finally:
        await bot_timers.stop()


async def test_timers_fire_in_due_order_and_are_deleted(timers: Timers, clock: ManualClock, calls: Calls,
                                                        db: Database) -> None:
    await timers.create("ping", T0 + timedelta(hours=3), {"name": "third"})
    await timers.create("pong", T0 + timedelta(hours=1), {"name": "first"})
    await timers.create("ping", T0 + timedelta(hours=2), {"name": "second, tie stored first"})
    await timers.create("pong", T0 + timedelta(hours=2), {"name": "second, tie stored last"})
    timers.start()
    await timers.wait_settled()
    assert calls.seen == []
    current = timers.current
    assert current is not None and current.payload == {"name": "first"}

    await clock.set(T0 + timedelta(hours=1))
    await timers.wait_settled()
    assert calls.seen == [("pong", {"name": "first"}, T0 + timedelta(hours=1))]

    await clock.set(T0 + timedelta(hours=5))  # the rest came due at once: still run in due order
    await timers.wait_settled()
    assert calls.names() == ["first", "second, tie stored first", "second, tie stored last", "third"]
    assert [event for event, _, _ in calls.seen] == ["pong", "ping", "pong", "ping"]
    assert timers.current is None and await timer_repository.earliest_timer(db) is None


async def test_payload_round_trips_through_the_table(timers: Timers, clock: ManualClock, calls: Calls) -> None:
    payload = {"name": "full", "contest_id": 2**40, "theme": "lighthouses · 灯台 🌊", "ratio": 0.25,
               "flags": [True, False, None], "nested": {"ids": [1, 2, 3], "empty": {}}}
    stored = await timers.create("ping", T0 + timedelta(minutes=1), payload)
    assert stored.payload == payload and stored.event == "ping" and stored.created_at == T0
    assert stored.due_at == T0 + timedelta(minutes=1)
    timers.start()
    await clock.advance(timedelta(minutes=1))
    await timers.wait_settled()
    assert calls.seen == [("ping", payload, T0 + timedelta(minutes=1))]


async def test_a_sooner_timer_rearms_the_sleeping_scheduler(timers: Timers, clock: ManualClock,
                                                            calls: Calls) -> None:
    await timers.create("ping", T0 + timedelta(days=1), {"name": "tomorrow"})
    timers.start()
    await timers.wait_settled()
    current = timers.current
    assert current is not None and current.payload["name"] == "tomorrow"

    await timers.create("pong", T0 + timedelta(minutes=5), {"name": "soon"})
    await timers.wait_settled()
    current = timers.current
    assert current is not None and current.payload["name"] == "soon"
    await clock.advance(timedelta(minutes=5))
    await timers.wait_settled()
    assert calls.seen == [("pong", {"name": "soon"}, T0 + timedelta(minutes=5))]
    current = timers.current
    assert current is not None and current.payload["name"] == "tomorrow"


async def test_an_idle_scheduler_wakes_for_the_first_timer(timers: Timers, clock: ManualClock,
                                                           calls: Calls) -> None:
    timers.start()
    await timers.wait_settled()
    assert timers.current is None
    await timers.create("ping", T0 + timedelta(seconds=30), {"name": "short"})
    await clock.advance(timedelta(seconds=30))
    await timers.wait_settled()
    assert calls.names() == ["short"]


async def test_restart_runs_the_timers_that_came_due_while_down(db: Database, clock: ManualClock,
                                                                calls: Calls) -> None:
    first = Timers(db, clock)
    first.register("ping", calls.handler("ping"))
    first.start()
    await first.create("ping", T0 + timedelta(hours=1), {"name": "overdue"})
    await first.create("ping", T0 + timedelta(hours=5), {"name": "later"})
    await first.wait_settled()
    await first.stop()  # the bot goes down; nothing is kept in memory
    await clock.set(T0 + timedelta(hours=2))
    assert calls.seen == []

    second = Timers(db, clock)
    second.register("ping", calls.handler("ping"))
    second.start()
    try:
        await second.wait_settled()
        assert calls.seen == [("ping", {"name": "overdue"}, T0 + timedelta(hours=2))]
        current = second.current
        assert current is not None and current.payload["name"] == "later"
    finally:
        await second.stop()


async def test_a_failing_handler_is_retried_without_holding_up_the_others(
        timers: Timers, clock: ManualClock, calls: Calls, db: Database) -> None:
    flaky = await timers.create("ping", T0 + timedelta(minutes=1), {"name": "flaky"})
    await timers.create("pong", T0 + timedelta(minutes=1, seconds=10), {"name": "next"})
    calls.fail["flaky"] = 2
    timers.start()
    await clock.set(T0 + timedelta(minutes=1))
    await timers.wait_settled()
    assert calls.names() == ["flaky"]
    retry = await timer_repository.get_timer(db, flaky.id)
    assert retry is not None and retry.payload == {"name": "flaky"}  # kept, and moved by the backoff
    assert retry.due_at == T0 + timedelta(minutes=1) + timers.retry_after
    assert timers.retry_after > timedelta(seconds=10)

    await clock.set(T0 + timedelta(minutes=1, seconds=10))  # the next timer is not blocked by the flaky one
    await timers.wait_settled()
    assert calls.names() == ["flaky", "next"]

    await clock.set(retry.due_at)  # fails again: moved again
    await timers.wait_settled()
    assert calls.names() == ["flaky", "next", "flaky"]
    again = timers.current
    assert again is not None and again.id == retry.id and again.due_at == retry.due_at + timers.retry_after

    await clock.set(again.due_at)  # succeeds: deleted
    await timers.wait_settled()
    assert calls.names() == ["flaky", "next", "flaky", "flaky"]
    assert timers.current is None and await timer_repository.earliest_timer(db) is None


async def test_a_timer_with_no_handler_is_logged_and_dropped(timers: Timers, clock: ManualClock, calls: Calls,
                                                             db: Database, caplog: pytest.LogCaptureFixture) -> None:
    await timers.create("renamed_feature", T0, {"name": "orphan"})
    await timers.create("ping", T0 + timedelta(seconds=1), {"name": "known"})
    with caplog.at_level(logging.ERROR, logger="bot.timers.timers"):
        timers.start()
        await clock.advance(timedelta(seconds=1))
        await timers.wait_settled()
    assert calls.names() == ["known"]
    assert any("renamed_feature" in record.getMessage() for record in caplog.records)
    assert await timer_repository.earliest_timer(db) is None


async def test_cancel_deletes_matching_timers_and_rearms(timers: Timers, clock: ManualClock, calls: Calls) -> None:
    await timers.create("ping", T0 + timedelta(minutes=1), {"name": "a", "contest_id": 1})
    await timers.create("pong", T0 + timedelta(minutes=2), {"name": "b", "contest_id": 1})
    await timers.create("ping", T0 + timedelta(minutes=3), {"name": "c", "contest_id": 2})
    await timers.create("pong", T0 + timedelta(minutes=4), {"name": "d", "contest_id": 1})
    timers.start()
    await timers.wait_settled()
    current = timers.current
    assert current is not None and current.payload["name"] == "a"

    assert await timers.cancel("ping", contest_id=1) == 1  # the one being slept on
    await timers.wait_settled()
    current = timers.current
    assert current is not None and current.payload["name"] == "b"
    assert await timers.cancel("ping", contest_id=3) == 0
    assert await timers.cancel("ping", "pong", contest_id=1) == 2
    await clock.advance(timedelta(hours=1))
    await timers.wait_settled()
    assert calls.names() == ["c"]


async def test_a_timer_deleted_behind_the_schedulers_back_is_not_run(timers: Timers, clock: ManualClock,
                                                                     calls: Calls) -> None:
    gone = await timers.create("ping", T0 + timedelta(minutes=1), {"name": "gone"})
    timers.start()
    await timers.wait_settled()
    assert await timer_repository.delete_timer(timers.db, gone.id)  # no cancel(), so no re-arm
    await clock.advance(timedelta(minutes=1))
    await timers.wait_settled()
    assert calls.seen == [] and timers.current is None


async def test_handlers_are_registered_once_and_before_start(timers: Timers, calls: Calls) -> None:
    with pytest.raises(ValueError, match="already has a handler"):
        timers.register("ping", calls.handler("ping"))
    timers.start()
    with pytest.raises(RuntimeError, match="before the timers start"):
        timers.register("late", calls.handler("late"))
    with pytest.raises(ValueError, match="1 to 64 characters"):
        await timers.create("", T0)
