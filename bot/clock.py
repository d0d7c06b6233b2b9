"""The bot's one clock: UTC helpers, and real time in production or a hand-driven clock in tests.

Deadlines are hours or days away, so tests cannot sleep through them; everything that reads the time or waits
for it goes through a :class:`Clock`, and :class:`ManualClock` lets a test jump to a deadline instantly.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

#: asyncio timers drift and some platforms reject very long sleeps, so real waits are taken in chunks.
MAX_SLEEP_SECONDS = 3600.0


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; every stored time is UTC, so naive means UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@runtime_checkable
class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    async def sleep_until(self, when: datetime) -> None:
        """Return once ``now() >= when`` (at once when it already is); cancellable."""
        ...


class SystemClock:
    """Wall-clock time; long waits re-check the clock every hour so a suspended host catches up."""

    def now(self) -> datetime:
        return utcnow()

    async def sleep_until(self, when: datetime) -> None:
        when = as_utc(when)
        while True:
            remaining = (when - self.now()).total_seconds()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, MAX_SLEEP_SECONDS))


class ManualClock:
    """A clock that only moves when told to; sleepers wake as soon as it passes their deadline."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = as_utc(start) if start is not None else utcnow()
        self._changed = asyncio.Condition()

    def now(self) -> datetime:
        return self._now

    async def sleep_until(self, when: datetime) -> None:
        when = as_utc(when)
        async with self._changed:
            await self._changed.wait_for(lambda: self._now >= when)

    async def set(self, when: datetime) -> None:
        """Jump to ``when`` (never backwards) and wake every sleeper whose deadline has come."""
        async with self._changed:
            self._now = max(self._now, as_utc(when))
            self._changed.notify_all()
        # Let woken sleepers run before the caller continues, so "advance then assert" tests are not racy.
        for _ in range(3):
            await asyncio.sleep(0)

    async def advance(self, delta: timedelta) -> None:
        await self.set(self._now + delta)
