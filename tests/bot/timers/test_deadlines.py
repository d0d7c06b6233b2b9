"""The durable deadline timer with a hand-driven clock: no test here ever sleeps for real."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from bot.clock import ManualClock
from bot.timers.deadlines import Deadline, DeadlineScheduler

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Store:
    """Stands in for the contests table: deadlines that stay pending until handled."""

    def __init__(self, pending: dict[str, datetime] | None = None) -> None:
        self.pending = dict(pending or {})
        self.fired: list[tuple[str, datetime]] = []
        self.clock: ManualClock | None = None

    async def next_due(self) -> Deadline[str] | None:
        if not self.pending:
            return None
        key = min(self.pending, key=lambda k: self.pending[k])
        return Deadline(self.pending[key], key)

    async def on_due(self, key: str) -> None:
        assert self.clock is not None
        self.fired.append((key, self.clock.now()))
        del self.pending[key]


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def _make(store: Store, now: datetime) -> tuple[ManualClock, DeadlineScheduler[str]]:
    clock = ManualClock(now)
    store.clock = clock
    scheduler = DeadlineScheduler(clock, store.next_due, store.on_due)
    return clock, scheduler


async def test_deadline_that_passed_while_down_is_processed_at_start() -> None:
    store = Store({"overdue": T0 - timedelta(hours=2), "later": T0 + timedelta(hours=1)})
    clock, scheduler = await _make(store, T0)
    scheduler.start()
    await _settle()
    assert store.fired == [("overdue", T0)]
    assert scheduler.current == Deadline(T0 + timedelta(hours=1), "later")
    await clock.advance(timedelta(minutes=59))
    assert [k for k, _ in store.fired] == ["overdue"]
    await clock.advance(timedelta(minutes=1))
    await _settle()
    assert [k for k, _ in store.fired] == ["overdue", "later"]
    await scheduler.stop()


async def test_rearms_when_a_sooner_deadline_is_added() -> None:
    store = Store({"far": T0 + timedelta(days=1)})
    clock, scheduler = await _make(store, T0)
    scheduler.start()
    await _settle()
    assert scheduler.current is not None and scheduler.current.key == "far"
    store.pending["soon"] = T0 + timedelta(minutes=5)
    scheduler.notify(store.pending["soon"])
    await _settle()
    assert scheduler.current is not None and scheduler.current.key == "soon"
    await clock.advance(timedelta(minutes=5))
    await _settle()
    assert store.fired == [("soon", T0 + timedelta(minutes=5))]
    assert scheduler.current is not None and scheduler.current.key == "far"
    await scheduler.stop()


async def test_idle_timer_wakes_when_the_first_deadline_is_added() -> None:
    store = Store()
    clock, scheduler = await _make(store, T0)
    scheduler.start()
    await _settle()
    assert scheduler.current is None
    store.pending["new"] = T0 + timedelta(minutes=1)
    scheduler.notify(store.pending["new"])
    await _settle()
    await clock.advance(timedelta(minutes=2))
    await _settle()
    assert [k for k, _ in store.fired] == ["new"]
    await scheduler.stop()
    assert not scheduler.running


async def test_a_later_deadline_does_not_disturb_the_current_wait() -> None:
    store = Store({"soon": T0 + timedelta(minutes=5)})
    clock, scheduler = await _make(store, T0)
    scheduler.start()
    await _settle()
    task = scheduler._task
    store.pending["later"] = T0 + timedelta(hours=5)
    scheduler.notify(store.pending["later"])
    assert scheduler._task is task
    await clock.advance(timedelta(hours=6))
    await _settle()
    assert [k for k, _ in store.fired] == ["soon", "later"]
    await scheduler.stop()


async def test_restart_rereads_the_store() -> None:
    """A new scheduler (a restarted bot) finds the deadline the old one was sleeping on."""
    store = Store({"contest": T0 + timedelta(hours=1)})
    clock, first = await _make(store, T0)
    first.start()
    await _settle()
    await first.stop()
    await clock.advance(timedelta(hours=2))  # the bot is down while the deadline passes
    assert store.fired == []
    second = DeadlineScheduler(clock, store.next_due, store.on_due)
    second.start()
    await _settle()
    assert [k for k, _ in store.fired] == ["contest"]
    await second.stop()


async def test_a_deadline_added_while_the_database_is_read_is_not_missed() -> None:
    """The query that was running when the sooner deadline was stored returned stale data: ask again."""
    store = Store({"far": T0 + timedelta(days=1)})
    clock, scheduler = await _make(store, T0)
    gate = asyncio.Event()
    real_next_due = store.next_due
    stale = await real_next_due()

    async def slow_next_due() -> Deadline[str] | None:
        if not gate.is_set():
            gate.set()
            await asyncio.sleep(0)
            store.pending["soon"] = T0 + timedelta(minutes=1)  # stored (and notified) mid-query
            scheduler.notify(store.pending["soon"])
            return stale
        return await real_next_due()

    scheduler._next_due = slow_next_due
    scheduler.start()
    await _settle()
    assert scheduler.current is not None and scheduler.current.key == "soon"
    await clock.advance(timedelta(minutes=1))
    await _settle()
    assert [k for k, _ in store.fired] == ["soon"]
    await scheduler.stop()


async def test_wait_settled_and_stop() -> None:
    store = Store({"a": T0 + timedelta(minutes=1)})
    clock, scheduler = await _make(store, T0)
    assert scheduler.settled  # not running
    scheduler.start()
    await scheduler.wait_settled(limit=2)
    await clock.advance(timedelta(minutes=1))
    await scheduler.wait_settled(limit=2)
    assert scheduler.handled == 1 and scheduler.current is None
    await scheduler.stop()
    assert not scheduler.running
