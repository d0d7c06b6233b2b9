"""A durable deadline timer: one task sleeps until the earliest pending deadline stored in the database.

The same shape as RoboDanny's reminder cog: the deadlines live in the database (never only in memory), so a
restart loses nothing. At start the task asks the database for the earliest deadline; one that passed while
the bot was down is due at once. When a deadline sooner than the one being waited for is added, the task is
re-armed (cancelled and restarted) so it never oversleeps. After handling a deadline it simply asks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from bot.contests.clock import Clock, as_utc

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
        self._have_data = asyncio.Event()
        self._current: Deadline[K] | None = None
        self._handling = False
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
        if self._state == "waiting":
            return not self._have_data.is_set()
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
            self._have_data.set()
            self._task = asyncio.create_task(self._dispatch(), name=f"scheduler:{self._name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def notify(self, when: datetime | None = None) -> None:
        """A deadline was stored or moved: wake an idle timer, or re-arm one that sleeps past ``when``."""
        self._have_data.set()
        if not self.running or self._handling:
            return  # the dispatcher asks the database again after the current handler anyway
        current = self._current
        if when is None or current is None or as_utc(when) < current.when:
            self._task.cancel()  # type: ignore[union-attr]
            self._task = asyncio.create_task(self._dispatch(), name=f"scheduler:{self._name}")

    async def _dispatch(self) -> None:
        try:
            while True:
                self._state = "querying"
                self._have_data.clear()
                deadline = await self._next_due()
                if deadline is None:
                    self._current = None
                    self._state = "waiting"
                    await self._have_data.wait()
                    continue
                deadline = Deadline(as_utc(deadline.when), deadline.key)
                self._current = deadline
                self._state = "sleeping"
                await self._clock.sleep_until(deadline.when)
                self._current = None
                self._state = "handling"
                self._handling = True
                try:
                    await self._on_due(deadline.key)
                    self.handled += 1
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.failures += 1
                    log.exception("deadline %r failed; retrying in %.0fs", deadline.key, RETRY_SECONDS)
                    self._state = "backoff"
                    await asyncio.sleep(RETRY_SECONDS)
                finally:
                    self._handling = False
        except asyncio.CancelledError:
            self._current = None
            self._state = "stopped"
            raise
