"""A durable deadline timer: one task sleeps until the earliest pending deadline stored in the database.

The same shape as RoboDanny's reminder cog: the deadlines live in the database (never only in memory), so a
restart loses nothing. At start the task asks the database for the earliest deadline; one that passed while
the bot was down is due at once. When a deadline sooner than the one being waited for is added, the timer is
re-armed (its sleep is interrupted and the database asked again) so it never oversleeps. After handling a
deadline it simply asks again. Handlers must be idempotent: a crash mid-handler means it runs again at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from bot.clock import Clock, as_utc

log = logging.getLogger(__name__)

K = TypeVar("K")

#: After a handler fails, wait this long before trying the same deadline again (so one bad row cannot spin).
RETRY_SECONDS = 30.0


@dataclass(frozen=True)
class Deadline(Generic[K]):
    when: datetime
    key: K


class DeadlineScheduler(Generic[K]):
    """Calls ``on_due(key)`` for each stored deadline once its time has come, in time order.

    ``next_due()`` reads the earliest pending deadline from the database (None when there is none);
    ``on_due(key)`` must make that deadline no longer pending (or move it later), otherwise it is handed over
    again. Call :meth:`notify` after storing or moving a deadline.
    """

    def __init__(self, clock: Clock, next_due: Callable[[], Awaitable[Deadline[K] | None]],
                 on_due: Callable[[K], Awaitable[None]], *, name: str = "deadlines") -> None:
        self._clock = clock
        self._next_due = next_due
        self._on_due = on_due
        self._name = name
        self._task: asyncio.Task[None] | None = None
        # Set by notify(): "the database changed, ask again". Cleared just before each query, so a change made
        # while a query runs is never lost (the loop sees the flag and queries once more).
        self._changed = asyncio.Event()
        self._current: Deadline[K] | None = None
        self._state = "stopped"
        self.failures = 0
        self.handled = 0

    @property
    def current(self) -> Deadline[K] | None:
        """The deadline being slept on right now (tests and /contest status use it)."""
        return self._current

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def settled(self) -> bool:
        """True when nothing is due: the timer sleeps on a future deadline or waits for one to be added."""
        if not self.running:
            return True
        if self._changed.is_set():
            return False
        if self._state == "waiting":
            return True
        return self._state == "sleeping" and self._current is not None and self._current.when > self._clock.now()

    async def wait_settled(self, limit: float = 10.0) -> None:
        """Wait until every due deadline was handled (tests advance a fake clock, then call this)."""
        async with asyncio.timeout(limit):
            while True:
                await asyncio.sleep(0)
                if self.settled:
                    return
                await asyncio.sleep(0.005)

    def start(self) -> None:
        """Arm the timer from the database; overdue deadlines are processed straight away."""
        if not self.running:
            self._task = asyncio.create_task(self._dispatch(), name=f"scheduler:{self._name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def notify(self, when: datetime | None = None) -> None:
        """A deadline was stored, moved or removed: wake an idle timer, or re-arm one sleeping past ``when``.

        A later deadline than the one being slept on changes nothing: it is read after the current one fires.
        """
        current = self._current
        if self._state == "sleeping" and when is not None and current is not None and as_utc(when) >= current.when:
            return
        self._changed.set()

    async def _sleep_or_rearm(self, when: datetime) -> bool:
        """Sleep until ``when``; False when :meth:`notify` interrupted the sleep (the caller asks again)."""
        sleeper = asyncio.ensure_future(self._clock.sleep_until(when))
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            done, _ = await asyncio.wait({sleeper, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, changed):
                task.cancel()
        return sleeper in done

    async def _dispatch(self) -> None:
        try:
            while True:
                self._state = "querying"
                self._current = None
                self._changed.clear()
                deadline = await self._next_due()
                if self._changed.is_set():
                    continue  # something changed while we read: read again
                if deadline is None:
                    self._state = "waiting"
                    await self._changed.wait()
                    continue
                deadline = Deadline(as_utc(deadline.when), deadline.key)
                self._current = deadline
                self._state = "sleeping"
                if not await self._sleep_or_rearm(deadline.when):
                    continue
                self._current = None
                self._state = "handling"
                try:
                    await self._on_due(deadline.key)
                    self.handled += 1
                except Exception:
                    self.failures += 1
                    log.exception("deadline %r failed; retrying in %.0fs", deadline.key, RETRY_SECONDS)
                    self._state = "backoff"
                    await asyncio.sleep(RETRY_SECONDS)
        finally:
            self._current = None
            self._state = "stopped"
