"""The bot's durable timers: one ``timers`` table, one task, any feature's deadlines (RoboDanny's timer table).

A feature registers a handler per event name once (``timers.register("contest_results", handler)``), then
creates timers (``await timers.create("contest_results", due_at, {"contest_id": 7})``) or stores them inside its
own transaction (``bot.storage.timer_repository.insert_timer``) and hands the records to :meth:`Timers.stored`.
One :class:`~bot.timers.deadlines.DeadlineScheduler` sleeps until the earliest row; a sooner timer re-arms it,
and timers that came due while the bot was down run as soon as :meth:`Timers.start` is called.

The row is deleted only after its handler returned, so a crash or a failure mid-handler means it runs again:
handlers must be idempotent. A handler that raises is retried ``retry_after`` later (the row is moved, so one
timer that keeps failing never holds up the others); a row whose event has no handler is logged and dropped.

Unlike RoboDanny, timers due within a minute are stored too (no in-memory shortcut): the scheduler re-arms
cheaply, and a short timer then survives a restart like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from bot.clock import Clock, SystemClock
from bot.storage import timer_repository as repo
from bot.storage.db import Database
from bot.storage.timer_records import JSONScalar, NewTimer, TimerRecord
from bot.timers.deadlines import RETRY_SECONDS, Deadline, DeadlineScheduler

log = logging.getLogger(__name__)

TimerHandler = Callable[[Mapping[str, Any]], Awaitable[None]]
"""Called with the timer's payload when it is due; raising means "try again later"."""


class Timers:
    """See the module docstring. Built once by the composition root; the Discord client starts it when ready."""

    def __init__(self, db: Database, clock: Clock | None = None, *,
                 retry_after: timedelta = timedelta(seconds=RETRY_SECONDS)) -> None:
        self.db = db
        self.clock: Clock = clock or SystemClock()
        self.retry_after = retry_after
        self._handlers: dict[str, TimerHandler] = {}
        self._scheduler: DeadlineScheduler[TimerRecord] = DeadlineScheduler(
            self.clock, self._earliest, self._fire, name="timers")

    def register(self, event: str, handler: TimerHandler) -> None:
        """Handle ``event``'s timers with ``handler``; before :meth:`start`, so no due timer finds it missing."""
        if self._scheduler.running:
            raise RuntimeError(f"register the {event!r} timer handler before the timers start")
        if event in self._handlers:
            raise ValueError(f"the {event!r} timer already has a handler")
        self._handlers[event] = handler

    async def create(self, event: str, due_at: datetime, payload: Mapping[str, Any] | None = None) -> TimerRecord:
        """Store a timer (``payload``: a JSON object) and re-arm the scheduler if it is due sooner."""
        timer = await repo.add_timer(self.db, NewTimer(event, due_at, dict(payload or {})),
                                     created_at=self.clock.now())
        self.stored(timer)
        return timer

    def stored(self, *timers: TimerRecord) -> None:
        """Timers a feature stored in its own transaction: re-arm the scheduler if one is due sooner."""
        for timer in timers:
            self._scheduler.notify(timer.due_at)

    async def cancel(self, *events: str, **match: JSONScalar) -> int:
        """Delete the pending timers of ``events`` whose payload has the ``match`` values; returns how many."""
        deleted = await repo.delete_matching(self.db, events, match)
        if deleted:
            self._scheduler.notify()  # it may be sleeping on one of them
        return deleted

    def start(self) -> None:
        """Arm the scheduler from the table; timers already due run at once, in order."""
        self._scheduler.start()

    async def stop(self) -> None:
        """Stop waiting (a handler in progress is cancelled; its row stays and runs at the next start)."""
        await self._scheduler.stop()

    @property
    def running(self) -> bool:
        return self._scheduler.running

    @property
    def current(self) -> TimerRecord | None:
        """The timer being slept on right now (tests and operators look at it)."""
        current = self._scheduler.current
        return current.key if current is not None else None

    async def wait_settled(self, limit: float = 10.0) -> None:
        """Until every due timer was handled (tests move a hand-driven clock, then call this)."""
        await self._scheduler.wait_settled(limit)

    async def _earliest(self) -> Deadline[TimerRecord] | None:
        timer = await repo.earliest_timer(self.db)
        return Deadline(timer.due_at, timer) if timer is not None else None

    async def _fire(self, due: TimerRecord) -> None:
        timer = await repo.get_timer(self.db, due.id)
        if timer is None:
            return  # cancelled while the scheduler woke up
        handler = self._handlers.get(timer.event)
        if handler is None:
            log.error("dropping timer %s: no handler for event %r", timer.id, timer.event,
                      extra={"timer": timer.id, "event": timer.event})
            await repo.delete_timer(self.db, timer.id)
            return
        try:
            await handler(dict(timer.payload))
        except Exception:
            retry_at = self.clock.now() + self.retry_after
            log.exception("timer %s (%s) failed; retrying at %s", timer.id, timer.event, retry_at.isoformat(),
                          extra={"timer": timer.id, "event": timer.event})
            await repo.postpone_timer(self.db, timer.id, retry_at)
            return
        await repo.delete_timer(self.db, timer.id)
